"""Tokenizing samples with media: placeholders expanded to the processor's own tokens, then the stage's processor.

The stage's tokenization (data/processors) is unchanged: before it runs, each `<image>` / `<video>` / `<audio>`
of a sample's prompt turns is replaced by the text its family's processor makes of that item (see plugins.py),
so the one-call tokenization of the whole conversation gives the processor's ids. After it, every token of an
expansion is unlearned, whatever `train_on_prompt` says, and the sample keeps its media paths for the collator.

A row whose media cannot be read, or whose placeholders and media do not match, is dropped with the reason and
the file (the report counts it); the others train.

`use_audio_in_video` (the omni families, `MediaPlugin.audio_in_video`): each video is heard as well as seen. Its
sound is, as LLaMA-Factory pairs them, the row's audio item whose `<audio>` follows the video's `<video>` in the
same turn (`<video><audio>`, LLaMA-Factory's mllm_video_audio_demo; the `<audio>` becomes nothing, the video's
expansion holds its sound), else the video file's own first audio track. A row whose videos and audio items do
not pair is dropped ("video and audio not paired"), and so is a video with no sound to hear ("video without
sound"): the model numbers a heard video's positions from its sound, so it cannot train as a silent one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from ..sample import IGNORE_INDEX
from .load import MediaError, MediaOptions, load_audio, load_image, load_video, load_video_sound
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
    _expansions: dict[tuple[str, str, Any], str] = field(default_factory=dict, repr=False)
    _media_ids: set[int] = field(default_factory=set, repr=False)
    # per item, kind -> how many of the processor's own tokens of that kind its expansion holds
    _placeholders: dict[tuple[str, str, Any], dict[str, int]] = field(default_factory=dict, repr=False)

    @property
    def hears_video(self) -> bool:
        """`use_audio_in_video` is on and the family hears video (the option is refused for the others)."""
        return self.plugin.audio_in_video and self.opts.use_audio_in_video

    def load(self, kind: str, path: Any, sound: Any = None) -> Any:
        """One item, decoded. A video of a run that hears video carries its sound: `sound` (the row's audio item
        paired with it) or, when None, the video's own track (see the module)."""
        heard = None
        if kind == "video" and self.hears_video:  # first: a silent video fails before its frames are decoded
            heard = load_audio(sound, self.opts) if sound is not None else load_video_sound(path, self.opts)
        item = LOADERS[kind](path, self.opts)
        if kind == "image" and self.plugin.adjust_image is not None:  # e.g. Qwen-VL's 28-pixel minimum side
            item = self.plugin.adjust_image(item)
        if heard is not None:
            item.sound = heard
        return item

    def video_sounds(self, media: Mapping[str, Sequence[Any]]) -> list[Any] | None:
        """Where each video's sound comes from when the run hears video: the row's k-th audio item for its k-th
        video when the row has audio items (LLaMA-Factory's pairing), else None (the video's own track). None
        when nothing is heard. Raises MediaError when the row's videos and audio items differ in number."""
        videos, audios = list(media.get("video") or ()), list(media.get("audio") or ())
        if not self.hears_video or not videos:
            return None
        if audios and len(audios) != len(videos):
            raise MediaError("video and audio not paired",
                             f"use_audio_in_video pairs each video with the audio after it: {len(videos)} video(s), "
                             f"{len(audios)} audio(s)")
        return audios or [None] * len(videos)

    def load_row(self, paths: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        """kind -> the decoded items of one sample, as the model meets them: with its videos heard, each video
        carries its sound and the audio items paired with them are no clips of their own."""
        sounds = self.video_sounds(paths)
        row = {kind: [self.load(kind, path) for path in paths.get(kind) or ()] for kind in KINDS
               if sounds is None or kind == "image"}
        if sounds is not None:
            row["video"] = [self.load("video", path, sound) for path, sound in zip(paths["video"], sounds)]
            row["audio"] = []
        return row

    def item_keys(self, media: Mapping[str, Sequence[Any]]) -> list[tuple[str, str, Any]]:
        """The expansions a sample's media make, as `expansion` keys them: (kind, path, the video's sound)."""
        sounds = self.video_sounds(media)
        videos = list(media.get("video") or ())
        keys = [("image", path, None) for path in media.get("image") or ()]
        keys += [("video", path, sound) for path, sound in zip(videos, sounds or [None] * len(videos))]
        if sounds is None:
            keys += [("audio", path, None) for path in media.get("audio") or ()]
        return keys

    def expansion(self, kind: str, path: str, sound: Any = None) -> str:
        """The text one item becomes in a prompt: the family's prompt text around the processor's replacement.
        A heard video (`sound`, as `load` takes it) expands to its frames and its sound, interleaved."""
        key = (kind, path, sound)
        if key not in self._expansions:
            item = self.load(kind, path, sound)
            replacement = self.plugin.replacements(self.processor, {kind: [item]}, self.kwargs)[kind][0]
            text = self.plugin.prompt[kind].format(token=replacement)
            self._expansions[key] = text
            self._note_media_tokens(text)
            self._placeholders[key] = {k: replacement.count(self.plugin.token(self.processor, k))
                                       for k in self.plugin.kinds}
        return self._expansions[key]

    def token_counts(self, key: tuple[str, str, Any]) -> dict[str, int]:
        """kind -> the processor's own tokens of that kind in an item's expansion (`expansion` first; what the
        model matches its features against: a heard video holds both its video and its audio tokens)."""
        return self._placeholders[key]

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
    return substitute(messages, media, context, context.expansion)


def pair_sounds(messages: Sequence[Mapping], media: Mapping[str, Sequence[Any]], context: MediaContext
                ) -> list[Any] | None:
    """Where each video's sound comes from when the run hears video (`MediaContext.video_sounds`: the row's k-th
    audio item, or None for the video's own track), the turns checked for LLaMA-Factory's pairing first when the
    audio items are the videos' sounds; None when nothing is heard. Training and inference (`lathe chat`, the
    API) pair a conversation's videos and audio by this one rule. Raises MediaError ("video and audio not
    paired")."""
    sounds = context.video_sounds(media)
    if sounds is not None and media.get("audio"):
        for message in messages:
            _check_pairs(str(message.get("content") or ""))
    return sounds


def substitute(messages: Sequence[dict], media: Mapping[str, Sequence[Any]], context: MediaContext,
               expand: Callable[[str, Any, Any], str]) -> list[dict]:
    """The messages with the k-th placeholder of each kind replaced by `expand(kind, item, sound)` of the k-th item
    (`sound`: the video's, as `pair_sounds` pairs them, else None). An `<audio>` that is a video's sound becomes
    nothing: the video's expansion holds it. The placeholders must match `media` in number."""
    sounds = pair_sounds(messages, media, context)
    paired = sounds is not None and bool(media.get("audio"))
    taken = {kind: iter(media.get(kind) or ()) for kind in KINDS}
    heard = iter(sounds or ())

    def replace(match: re.Match) -> str:
        kind = KIND_OF[match.group(0)]
        item = next(taken[kind])
        if kind == "audio" and paired:  # the sound of the video before it, which its expansion already holds
            return ""
        return expand(kind, item, next(heard) if kind == "video" and sounds is not None else None)

    return [{**message, "content": PLACEHOLDER_RE.sub(replace, str(message.get("content") or ""))}
            for message in messages]


def _check_pairs(content: str) -> None:
    """LLaMA-Factory's rule for a row with videos and audio under `use_audio_in_video`: in each turn, the k-th
    `<audio>` follows the k-th `<video>` (its sound), and a turn has as many of each."""
    videos = [m.start() for m in re.finditer(re.escape(PLACEHOLDERS["video"]), content)]
    audios = [m.start() for m in re.finditer(re.escape(PLACEHOLDERS["audio"]), content)]
    video, audio = PLACEHOLDERS["video"], PLACEHOLDERS["audio"]
    if len(videos) != len(audios):
        found = f"a turn holds {len(videos)} {video} and {len(audios)} {audio}"
    elif any(a < v for v, a in zip(videos, audios)):
        found = f"an {audio} comes before its {video}"
    else:
        return
    raise MediaError("video and audio not paired",
                     f"use_audio_in_video hears each {video} with the {audio} after it in the same turn; {found}")


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
        keys = media.item_keys(items)
        for ids_key in [k for k in out if k.endswith("input_ids")]:
            ids = np.asarray(out[ids_key][i])
            for kind in media.plugin.kinds:
                wanted = sum(media.token_counts(key).get(kind, 0) for key in keys)
                if wanted and int((ids == token_ids[kind]).sum()) != wanted:
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
