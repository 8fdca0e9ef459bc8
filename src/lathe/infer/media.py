"""Images, video and audio in a chat: placeholders placed and expanded, the media tensors made for `generate`.

Inference takes the same path as training (data/media): the messages carry `<image>` / `<video>` / `<audio>`
placeholders, each replaced by the text the family's processor makes of its item, the prompt is encoded by the
training template in one call, and the tensors (pixel values, grids, audio features) come from the processor as the
collator makes them. What differs from training:

- sources are whatever a caller holds (paths, data: URLs, bytes, PIL images), not dataset paths, so each item is
  loaded once per request and its expansion computed from the loaded item, without `MediaContext.expansion`'s
  cache (keyed by path: a data: URL or bytes would pin megabytes in it, and a file served twice may have changed);
- a conversation with media and no placeholder of their kind gets them at the start of its first user turn, as
  the dataset converter does (`data/formats.py`), so `chat(messages, images=[...])` needs no `<image>` written.

What does not differ: with `use_audio_in_video`, a video and the audio after it pair by training's rule
(`data/media/encode.pair_sounds`): `chat(videos=[v], audios=[a])` (`lathe chat --video v --audio a`, the API's
`video_url` part followed by an `input_audio` part) hears `a` as `v`'s sound, not as a clip of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.media.encode import PLACEHOLDER_RE, MediaContext, pair_sounds, substitute
from ..data.media.placement import Misplaced, answer_holding
from ..data.media.placement import place as place_media
from ..data.media.plugins import KINDS, PLACEHOLDERS
from ..errors import LatheError

# The keyword of each kind in `chat(...)` / `stream_chat(...)`, in the order the converter places them.
MEDIA_ARGS = {"image": "images", "video": "videos", "audio": "audios"}


def gather(images: Sequence[Any] | None = None, videos: Sequence[Any] | None = None,
           audios: Sequence[Any] | None = None) -> dict[str, list[Any]]:
    """kind -> its sources, every kind present (empty when not given)."""
    given = {"image": images, "video": videos, "audio": audios}
    out: dict[str, list[Any]] = {}
    for kind in KINDS:
        value = given[kind]
        if value is None:
            out[kind] = []
        elif isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise LatheError(f"`{MEDIA_ARGS[kind]}=` takes a list of {kind}s (paths, data: URLs, bytes or images), "
                             f"got one {type(value).__name__}: wrap it in a list.")
        else:
            out[kind] = list(value)
    return out


def has_media(media: Mapping[str, Sequence[Any]]) -> bool:
    return any(media.get(kind) for kind in KINDS)


def has_placeholders(messages: Sequence[dict]) -> bool:
    return any(PLACEHOLDER_RE.search(str(m.get("content") or "")) for m in messages)


def place(messages: Sequence[dict], media: Mapping[str, Sequence[Any]]) -> list[dict]:
    """The messages with a placeholder for every item, by the dataset converter's rules (data/media/placement.py),
    refused in a request's words."""
    role = answer_holding(messages, PLACEHOLDERS.values())
    if role is not None:
        raise LatheError(f"A {role} turn holds a media placeholder ({', '.join(PLACEHOLDERS.values())}): images, "
                         "video and audio belong to user turns.")
    kind_of = {placeholder: kind for kind, placeholder in PLACEHOLDERS.items()}
    try:
        return place_media(messages, {PLACEHOLDERS[kind]: len(media.get(kind) or []) for kind in KINDS})
    except Misplaced as e:
        kind = kind_of[e.placeholder]
        if e.reason == "no_user_turn":
            raise LatheError(f"{e.items} {kind}(s) given, but the conversation has no user turn to put them in."
                             ) from None
        raise LatheError(f"The messages hold {e.found} {e.placeholder} placeholder(s) for {e.items} {kind}(s): "
                         f"give one {kind} per {e.placeholder} (`{MEDIA_ARGS[kind]}=`), or none and they go at the "
                         "start of the first user turn.") from None


@dataclass
class Expanded:
    """A conversation ready to encode: placeholders replaced by their expansions, and the loaded items in order."""

    messages: list[dict]
    items: dict[str, list[Any]] = field(default_factory=dict)


def expand(context: MediaContext, messages: Sequence[dict], media: Mapping[str, Sequence[Any]]) -> Expanded:
    """Place and load the media, and replace the k-th placeholder of each kind by the k-th item's expansion
    (the family's prompt text around the processor's replacement, as `MediaContext.expansion` makes it).

    With `use_audio_in_video`, videos and audio pair as in training (`pair_sounds`, `MediaContext.load_row`): the
    audio after a video in the same turn is its sound, heard inside the video's expansion, and no clip of its
    own; a video given with no audio is heard with its own track."""
    messages = place(messages, media)
    for kind in KINDS:
        if media.get(kind) and kind not in context.plugin.kinds:
            raise LatheError(f"This model does not take {kind}s: its media plugin `{context.plugin.name}` takes "
                             f"{', '.join(context.plugin.kinds)}.")
    pair_sounds(messages, media, context)  # a request whose videos and audio do not pair fails before decoding
    items = context.load_row(media)  # as the collator loads a training row: a heard video carries its sound
    if not has_media(items):
        return Expanded(messages, items)
    replacements = context.plugin.replacements(context.processor, items, context.kwargs)
    texts = {kind: iter([context.plugin.prompt[kind].format(token=r) for r in replacements.get(kind, [])])
             for kind in KINDS}
    expanded = substitute(messages, media, context, lambda kind, item, sound: next(texts[kind]))
    return Expanded(expanded, items)


def arrange_prompt(context: MediaContext, ids: list[int]) -> list[int]:
    """The prompt ids in the family's order (`MediaPlugin.arrange`, as training's encode.py reorders a sample:
    PaliGemma's images before `<bos>`); unchanged for the others. The list is reordered in place and returned."""
    if context.plugin.arrange is not None:
        ids[:] = [ids[i] for i in context.plugin.arrange(context.processor, ids).tolist()]
    return ids


def generate_inputs(context: MediaContext, items: Mapping[str, Sequence[Any]], ids: list[int]) -> dict[str, Any]:
    """The media keyword arguments of `model.generate` for one prompt: the processor's tensors, and the per-token
    inputs where the family takes them (modality ids, mllama's cross-attention mask), made as data/media/collate.py
    makes a training batch's (a batch of one row, no labels).

    `ids` (the encoded prompt) is first put in the family's order, in place (`arrange_prompt`), so the caller
    generates from the ids training saw; its length does not change."""
    arrange_prompt(context, ids)
    return context.plugin.batch_inputs(context.processor, [items], [list(ids)], context.kwargs)
