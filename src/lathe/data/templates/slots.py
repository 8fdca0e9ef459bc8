"""Registered templates: a conversation rendered from a few text slots kept as data.

Each entry of `templates.yaml` fills the fields of `Slots`. Rendering a training conversation:

    prefix
    system          (the system prompt, when the template has a system slot)
    user            (first prompt turn; the system prompt goes in here through `system_in_user`
                     when the template has no system slot; ends with the assistant header)
    assistant       (LEARNED: the answer and the token that ends the turn)
    assistant_suffix  (after every answer but the last; not learned)
    user / observation, assistant / function, ...

Placeholders `{content}`, `{system}`, `{tools}`, `{bos_token}`, `{eos_token}` are filled in one
pass, so braces inside a message are never taken for placeholders. The text after the last
answer (its `assistant_suffix`) is not rendered for training: nothing after the final
end-of-turn token is learned or influences what is (attention is causal).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

from lathe.data.schema import FUNCTION, OBSERVATION
from lathe.errors import LatheError

from .base import Rendering, Template

PLACEHOLDER = re.compile(r"\{(content|system|tools|bos_token|eos_token)\}")

DEFAULT_TOOLS = (
    "# Tools\n\nYou may call one or more of the following functions. Their JSON schemas:\n{tools}\n\n"
    'To call a function, answer with a JSON object: {"name": <function name>, "arguments": <arguments object>}.'
)


@dataclass(frozen=True)
class Slots:
    """The text of one registered template (one entry of templates.yaml)."""

    name: str
    description: str = ""
    prefix: str = ""  # start of the text, e.g. "{bos_token}"
    system: str | None = None  # None: the system prompt is merged into the first prompt turn
    system_in_user: str = "{system}\n\n{content}"  # how it is merged, when `system` is None
    user: str = "{content}"  # a user turn, ending with the assistant header (the generation prompt)
    assistant: str = "{content}{eos_token}"  # learned: the answer and its end-of-turn token(s)
    assistant_suffix: str = ""  # after each answer but the last, not learned
    function: str | None = None  # a tool call; None: same as `assistant`
    observation: str | None = None  # a tool result; None: same as `user`
    default_system: str = ""  # used when a sample has no system prompt
    tools: str = DEFAULT_TOOLS  # appended to the system prompt when a sample has tools
    stop_words: tuple[str, ...] = ()  # generation stops at these (and at eos)
    special_tokens: tuple[str, ...] = field(default=())  # tokens the text needs as single special tokens

    # Which placeholders each slot may use; anything else in braces is literal text.
    ALLOWED = {
        "prefix": {"bos_token", "eos_token"},
        "system_in_user": {"system", "content", "bos_token", "eos_token"},
        "tools": {"tools"},
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("name", "description") or not isinstance(value, str):
                continue
            allowed = self.ALLOWED.get(f.name, {"content", "bos_token", "eos_token"})
            for used in PLACEHOLDER.findall(value):
                if used not in allowed:
                    raise LatheError(
                        f"Template `{self.name}`: slot `{f.name}` uses `{{{used}}}`, which it cannot fill "
                        f"(allowed there: {', '.join(sorted(allowed))})."
                    )


def fill(slot: str, **values: str) -> str:
    """Replace the placeholders of `slot` in one pass (values are never scanned for placeholders)."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), slot)


def parse_tools(tools: str) -> list[Any]:
    """The tool schemas of a sample (JSON text of a list, or of one schema) as a list."""
    try:
        parsed = json.loads(tools)
    except json.JSONDecodeError as err:
        raise LatheError(f"`tools` is not valid JSON ({err}); expected a JSON list of tool schemas: {tools[:200]!r}")
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        raise LatheError(f"`tools` must be a JSON list of tool schemas, got {type(parsed).__name__}: {tools[:200]!r}")
    return parsed


def format_tools(tools: str) -> str:
    """The JSON text of a sample's tool schemas, one compact JSON object per line."""
    return "\n".join(json.dumps(tool, ensure_ascii=False) for tool in parse_tools(tools))


class SlotTemplate(Template):
    """A template rendered from `Slots`; see the module docstring for the layout."""

    def __init__(self, slots: Slots):
        self.slots = slots
        self.name = slots.name

    @property
    def stop_words(self) -> list[str]:
        return list(self.slots.stop_words)

    def _special_tokens(self) -> list[str]:
        return list(self.slots.special_tokens)

    def system_text(self, system: str, tools: str) -> str:
        """The system prompt as rendered: the sample's (or the default) plus the tool descriptions."""
        text = system or self.slots.default_system
        if tools:
            tool_text = fill(self.slots.tools, tools=format_tools(tools))
            text = f"{text}\n\n{tool_text}" if text else tool_text
        return text

    def _render_prompt(self, tokenizer: Any, messages: Sequence[dict], system: str, tools: str) -> str:
        return self._render(tokenizer, messages, system, tools).text  # the last user slot ends with the header

    def _render(self, tokenizer: Any, messages: Sequence[dict], system: str, tools: str) -> Rendering:
        s = self.slots
        specials = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}
        system_text = self.system_text(system, tools)
        parts = [fill(s.prefix, **specials)]
        if system_text and s.system is not None:
            parts.append(fill(s.system, content=system_text, **specials))
        length = sum(map(len, parts))
        spans: list[tuple[int, int]] = []
        for i, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if i % 2 == 0:  # prompt turn
                if i == 0 and system_text and s.system is None:
                    content = fill(s.system_in_user, system=system_text, content=content, **specials)
                slot = s.observation if role == OBSERVATION and s.observation is not None else s.user
                piece = fill(slot, content=content, **specials)
            else:  # answer turn: learned
                slot = s.function if role == FUNCTION and s.function is not None else s.assistant
                piece = fill(slot, content=content, **specials)
                spans.append((length, length + len(piece)))
                if i < len(messages) - 1:
                    piece += fill(s.assistant_suffix, **specials)
            parts.append(piece)
            length += len(piece)
        return Rendering("".join(parts), spans)
