"""Tokenizing samples with media: placeholders expanded to the processor's own tokens, then the stage's processor.

The stage's tokenization (data/processors) is unchanged: before it runs, each `<image>` / `<video>` / `<audio>`
of a sample's prompt turns is replaced by the text its family's processor makes of that item (see plugins.py),
so the one-call tokenization of the whole conversation gives the processor's ids. After it, every token of an
expansion is unlearned, whatever `train_on_prompt` says, and the sample keeps its media paths for the collator.

A row whose media cannot be read, or whose placeholders and media do not match, is dropped with the reason and
the file (the report counts it); the others train.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from ..sample import IGNORE_INDEX
from .load import MediaError, MediaOptions, load_audio, load_image, load_video
from .plugins import COLUMNS, KINDS, PLACEHOLDERS, MediaPlugin

if TYPE_CHECKING:
    from ...config import RunConfig

LOADERS: dict[str, Callable[[Any, MediaOptions], Any]] = {"image": load_image, "video": load_video, "audio": load_audio}
PLACEHOLDER_RE = re.compile("|".join(map(re.escape, PLACEHOLDERS.values())))
KIND_OF = {text: kind for kind, text in PLACEHOLDERS.items()}


@dataclass
class MediaContext:
    """What the tokenization and the collator of a multimodal run share: the family's plugin and processor,
    the media options, and the expansions already computed (an item's expansion depends only on the file and
    the options, and data sets reuse their images: LLaMA-Factory's demo sets repeat four files)."""

    plugin: MediaPlugin
    processor: Any
    opts: MediaOptions
    kwargs: dict[str, Any] = field(default_factory=dict)  # of every processor call (plugins.call_kwargs)
    _expansions: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    _media_ids: set[int] = field(default_factory=set, repr=False)
    _placeholders: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)  # the model's tokens per item

    def load(self, kind: str, path: str) -> Any:
        item = LOADERS[kind](path, self.opts)
        if kind == "image" and self.plugin.adjust_image is not None:  # e.g. Qwen-VL's 28-pixel minimum side
            item = self.plugin.adjust_image(item)
        return item

    def expansion(self, kind: str, path: str) -> str:
        """The text one item becomes in a prompt: the family's prompt text around the processor's replacement."""
        key = (kind, path)
        if key not in self._expansions:
            item = self.load(kind, path)
            replacement = self.plugin.replacements(self.processor, {kind: [item]}, self.kwargs)[kind][0]
            text = self.plugin.prompt[kind].format(token=replacement)
            self._expansions[key] = text
            self._note_media_tokens(text)
            self._placeholders[key] = replacement.count(self.plugin.token(self.processor, kind))
        return self._expansions[key]

    def placeholder_count(self, kind: str, path: str) -> int:
        """How many of the processor's own `kind` tokens an item expanded to (what the model matches its features
        against; `expansion` first)."""
        return self._placeholders[(kind, path)]

    def _note_media_tokens(self, text: str) -> None:
        """Remember the special tokens of an expansion: they are never learned."""
        tokenizer = self.processor.tokenizer
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        self._media_ids.update(i for i in set(ids) if i in special)

    @property
    def media_token_ids(self) -> np.ndarray:
        return np.fromiter(sorted(self._media_ids), dtype=np.int64)


def media_context(cfg: "RunConfig", processor: Any, template: Any, model_type: str) -> MediaContext:
    """The run's media context: the plugin its template names (or its model type's), checked against the config."""
    from ...errors import LatheError
    from .plugins import MEDIA_PLUGINS, call_kwargs, check_media_run, plugin_for

    plugin = plugin_for(template, model_type)
    if plugin is None:
        raise LatheError(f"The model is a multimodal `{model_type}` one and neither it nor template "
                         f"`{getattr(template, 'name', '')}` has a media plugin in lathe; set `template` to the "
                         f"family's (media plugins: {', '.join(MEDIA_PLUGINS)}; docs/multimodal.md).")
    check_media_run(cfg, plugin)
    from dataclasses import replace

    from ...hub import offline_requested

    opts = replace(MediaOptions.from_args(cfg.data), allow_remote=not offline_requested())  # URLs only online
    return MediaContext(plugin, processor, opts, call_kwargs(cfg, plugin, processor, opts))


def media_for_run(cfg: "RunConfig", tokenizer: Any, template: Any) -> MediaContext | None:
    """The media context of a run (training, evaluation, preview) whose model takes images, video or audio;
    None for a text model. The processor shares the run's tokenizer, as the template fixed it."""
    from ...model.load import load_model_config
    from ...model.multimodal import is_multimodal, load_processor

    config = load_model_config(cfg.model)
    if not is_multimodal(config):
        return None
    return media_context(cfg, load_processor(cfg.model, tokenizer), template, config.model_type)


def media_of(batch: Mapping[str, list], i: int) -> dict[str, list[str]]:
    """kind -> the media paths of sample `i` of a batch of columns (empty where the batch has no such column)."""
    return {kind: list((batch.get(COLUMNS[kind]) or [None] * (i + 1))[i] or []) for kind in KINDS}


def expand_messages(messages: Sequence[dict], media: Mapping[str, list[str]], context: MediaContext) -> list[dict]:
    """The messages with the k-th placeholder of each kind replaced by the k-th item's expansion.

    Raises MediaError when the placeholders and the media do not match, when a kind is one the family does not
    take, or when an item cannot be read.
    """
    counts = {kind: 0 for kind in KINDS}
    for message in messages:
        for found in PLACEHOLDER_RE.findall(message["content"]):
            counts[KIND_OF[found]] += 1
    for kind in KINDS:
        if counts[kind] != len(media[kind]):
            raise MediaError("placeholders and media differ",
                             f"{counts[kind]} {PLACEHOLDERS[kind]} placeholder(s) for {len(media[kind])} {kind}(s)")
        if media[kind] and kind not in context.plugin.kinds:
            raise MediaError(f"{kind} not taken by this model",
                             f"media plugin `{context.plugin.name}` takes {', '.join(context.plugin.kinds)}")
    taken = {kind: iter(media[kind]) for kind in KINDS}

    def replace(match: re.Match) -> str:
        kind = KIND_OF[match.group(0)]
        return context.expansion(kind, next(taken[kind]))

    return [{**message, "content": PLACEHOLDER_RE.sub(replace, message["content"])} for message in messages]


def encode_with_media(batch: dict[str, list], *, inner: Callable[..., dict[str, list]], inner_kwargs: dict[str, Any],
                      media: MediaContext, refuse: str | None = None) -> dict[str, list]:
    """The stage's processor `inner` over `batch`, with each sample's media expanded first (see the module).

    `refuse`: the stage cannot train on media; a sample that has some stops the run with this message."""
    n = len(batch["messages"])
    messages, drops = list(batch["messages"]), [""] * n
    rows = [media_of(batch, i) for i in range(n)]  # each sample's media paths, read once
    for i, items in enumerate(rows):
        has_placeholder = any(PLACEHOLDER_RE.search(m["content"]) for m in messages[i])
        if not any(items.values()) and not has_placeholder:
            continue
        if refuse and any(items.values()):
            from ...errors import LatheError

            raise LatheError(refuse)
        try:
            messages[i] = expand_messages(messages[i], items, media)
        except MediaError as error:
            drops[i] = f"{error.reason} ({error.detail})" if error.detail else error.reason
            messages[i] = [{**m, "content": PLACEHOLDER_RE.sub("", m["content"])} for m in messages[i]]
    out = inner({**batch, "messages": messages}, **inner_kwargs)
    out["_drop"] = [own or theirs for own, theirs in zip(drops, out["_drop"])]
    _drop_cut_media(out, rows, media)
    if media.plugin.arrange is not None:
        _arrange(out, media, has_media=[any(items.values()) for items in rows])
    masked = media.media_token_ids
    if len(masked):
        for key in [k for k in out if k == "labels" or k.endswith("_labels")]:
            out[key] = [_unlearn(ids, labels, masked) for ids, labels in zip(out[_ids_key(key)], out[key])]
    for kind in KINDS:
        out[COLUMNS[kind]] = [items[kind] for items in rows]
    return out


def _drop_cut_media(out: dict[str, list], rows: list[dict[str, list[str]]], media: MediaContext) -> None:
    """Drop the samples whose media tokens truncation to `cutoff_len` cut: the model needs all of an item's
    tokens or none of its features, and a mismatch would stop training mid-epoch."""
    token_ids = {kind: media.processor.tokenizer.convert_tokens_to_ids(media.plugin.token(media.processor, kind))
                 for kind in media.plugin.kinds}
    for i, items in enumerate(rows):
        if out["_drop"][i] or not any(items.values()):
            continue
        for ids_key in [k for k in out if k.endswith("input_ids")]:
            ids = np.asarray(out[ids_key][i])
            for kind, paths in items.items():
                wanted = sum(media.placeholder_count(kind, p) for p in paths)
                if paths and int((ids == token_ids[kind]).sum()) != wanted:
                    out["_drop"][i] = (f"media cut by cutoff_len (its {kind}s take {wanted} tokens; raise cutoff_len "
                                       f"or lower {kind}_max_pixels)" if kind != "audio" else
                                       f"media cut by cutoff_len (its audio takes {wanted} tokens; raise cutoff_len)")
                    break
            if out["_drop"][i]:
                break


def _arrange(out: dict[str, list], media: MediaContext, has_media: list[bool]) -> None:
    """The plugin's reordering of each sample with media (`MediaPlugin.arrange`), applied alike to its ids and to
    every per-token column beside them (`labels`, `attention_mask`; `chosen_*` / `rejected_*` of pairs)."""
    for ids_key in [k for k in out if k.endswith("input_ids")]:
        prefix = ids_key[: -len("input_ids")]
        keys = [prefix + name for name in ("input_ids", "labels", "attention_mask") if prefix + name in out]
        for i, ids in enumerate(out[ids_key]):
            if not has_media[i] or not len(ids):
                continue
            order = media.plugin.arrange(media.processor, ids)
            for key in keys:
                out[key][i] = np.asarray(out[key][i])[order]


def _ids_key(labels_key: str) -> str:
    return labels_key[: -len("labels")] + "input_ids"


def _unlearn(ids, labels, masked: np.ndarray):
    labels = np.asarray(labels)
    if not len(labels):
        return labels
    return np.where(np.isin(np.asarray(ids), masked), IGNORE_INDEX, labels)
