"""Where a conversation's images, video and audio go: LLaMA-Factory's placeholder rules, written once.

A kind with items and no placeholder gets them at the start of the first user turn; otherwise there must be one
placeholder per item; placeholders belong to prompt turns (user, tool result), never to answers. The dataset
converter (data/formats.py: a row is skipped with its reason) and the chat engines (infer/media.py: a request is
refused) both place media here, and each words the refusal for its own reader from `Misplaced`'s fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..sample import PROMPT_ROLES, USER


@dataclass
class Misplaced(Exception):
    """Why media cannot be placed: `counts` (placeholders and items differ) or `no_user_turn`."""

    reason: str
    placeholder: str
    found: int  # placeholders of that kind in the messages
    items: int


def place(messages: Sequence[Mapping], items: Mapping[str, int]) -> list[dict]:
    """Copies of `messages` with one placeholder per item; `items`: placeholder -> how many items of its kind.

    A placeholder not in `items` is left alone: a data set entry without a media column of that kind has
    none, so its `<image>` is plain text. The placeholders added go in the order of `items` (`<image>`,
    `<video>`, `<audio>`): a row with a video and its sound and no placeholder reads `<video><audio>`, the
    order `use_audio_in_video` pairs them in."""
    out = [dict(m) for m in messages]
    added: list[tuple[str, int]] = []
    for placeholder, n in items.items():
        found = sum(str(m.get("content") or "").count(placeholder) for m in out)
        if n and not found:
            added.append((placeholder, n))
        elif found != n:
            raise Misplaced("counts", placeholder, found, n)
    if added:
        first = next((m for m in out if m["role"] == USER), None)
        if first is None:
            raise Misplaced("no_user_turn", added[0][0], 0, added[0][1])
        first["content"] = "".join(p * n for p, n in added) + str(first.get("content") or "")
    return out


def answer_holding(messages: Iterable[Mapping], placeholders: Iterable[str]) -> str | None:
    """The role of the first turn that is no prompt yet holds a placeholder (where media may not go), or None."""
    wanted = tuple(placeholders)
    for message in messages:
        content = str(message.get("content") or "")
        if message["role"] not in PROMPT_ROLES and any(p in content for p in wanted):
            return str(message["role"])
    return None
