"""Registered templates: a conversation rendered from a few text slots kept as data.

Each entry of `templates.yaml` fills the fields of `Slots`. Rendering a training conversation:

    prefix
    system          (the system prompt, when the template has a system slot)
    user            (first prompt turn; the system prompt goes in here through `system_in_user`
                     when the template has no system slot; ends with the assistant header)
    assistant       (LEARNED: the answer and the token that ends the turn)
    assistant_suffix  (after every answer but the last; not learned)
    user / observation, assistant / function, ...

Placeholders `{content}`, `{system}`, `{bos_token}`, `{eos_token}` are filled in one pass, so
braces inside a message are never taken for placeholders. The text after the last answer (its
`assistant_suffix`) is not rendered for training: nothing after the final end-of-turn token is
learned or influences what is (attention is causal).

Tools, tool calls and tool results are spelled by the template's tool format (`tools.py`); the
slots only wrap them into turns. These behaviours are per template:

- **efficient_eos**: answers end with no end-of-turn token; the next turn's role token (a stop
  word such as `<|user|>`) says the answer is over. That role token is learned as the end of the
  answer before it, and eos is written and learned after the final answer, so the model learns
  to stop (LLaMA-Factory instead labels the role-token position with eos, which a
  (prompt, answer) id split cannot express; learning the stop word itself keeps ids == labels).
- **thinking**: `thoughts_in_history` says what becomes of the `<think>...</think>` part of the
  answers before the last. `drop` removes it everywhere (as DeepSeek-R1's template does); `context`
  (Qwen3) trains it as written where those answers are learned, and removes it where they are only
  context: the prompt for generation (as Qwen3's own template does), `mask_history`, preference
  data (LLaMA-Factory's reasoning templates do the same, except under mask_history, where they
  keep it; lathe shows the unlearned history as the model sees it when served); `keep` never
  removes it. A run's
  `preserve_thinking` keeps it everywhere. With `enable_thinking=False`, templates that have an
  `empty_thought` write it (unlearned) before every answer that has no thoughts and at the end
  of the generation prompt, as Qwen3's template does with enable_thinking=False.
- **bare answers**: some models (GLM-4.5/4.6/4.7, Ling) open every answer that has no thoughts
  with an empty think block they generate themselves (`<think></think>`). `bare_answer_prefix`
  is that block: written and learned in front of each answer (or tool call) that has no
  `<think>`/`</think>` (its thoughts dropped included), so the model learns to write it. With
  `enable_thinking=False` the template's `empty_thought` takes its place, unlearned, as above:
  the block is then part of the prompt, not of the answer.

A few fields serve formats whose turns are not one block of text each (OpenAI's harmony format,
template `gpt_oss`); each is off at its default:

- **thought**: how the template writes the `<think>...</think>` part of an answer, in front of the
  answer's slot, `{content}` being the thought (newlines around it stripped, as are those before
  the answer). Harmony writes it as a message of its own on the `analysis` channel. None keeps
  the think block inside the answer as written. Dropped thoughts (`thoughts_in_history`) lose
  the whole block.
- **last_answer_end**: learned after the last answer when it is an assistant turn (not a tool
  call), and never written after the others: harmony ends the final answer with `<|return|>`,
  which the conversation replaces with `<|end|>` (`assistant_suffix`, not learned) when it goes
  on, so the model learns to stop only where it did stop.
- **function_suffix**: what follows a tool-call turn that is not the last, in place of
  `assistant_suffix` (harmony's `<|call|>` needs no `<|end|>` after it).
- **system_prompt**: the sample's (or the default) system prompt as written inside the system
  turn, before the tool format joins its tools (harmony's developer message: `# Instructions`).
- **prefix_with_tools**: the prefix of a sample that has tools (harmony's system message then
  says which channel tool calls go to).
- **reasoning_effort**: the default of the `{reasoning_effort}` placeholder the prefix (or the
  system slots) may use (harmony's `Reasoning: medium`); a run picks another with
  `with_options(reasoning_effort=...)`. "" for templates without one. **reasoning_efforts** lists
  the values the template's model knows (OpenAI's low/medium/high; Hy3's no_think/low/high).

Two fields write the system turn when the sample has no system prompt:

- **system_always**: the `system` slot is written even then (Hy3 always follows the system text,
  empty or not, with its reasoning-mode tag `<｜reasoning_mode:opensource｜>reasoning_effort:...`).
- **thinking_system**: the system slot used instead of `system` while thinking is on
  (`enable_thinking`, the default), written even then: Gemma 4's thinking mode opens a system turn
  with `<|think|>`. With `enable_thinking=False` the template falls back to `system`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Sequence

from lathe.data.sample import FUNCTION, OBSERVATION
from lathe.errors import LatheError

from .base import THINK_CLOSE, THINK_OPEN, Rendering, Template
from .tools import BEFORE_FIRST_USER, IN_FIRST_USER, ToolFormat, get_tool_format

PLACEHOLDER = re.compile(r"\{(content|system|bos_token|eos_token|reasoning_effort)\}")
HISTORY_THOUGHTS = ("keep", "context", "drop")
REASONING_EFFORTS = ("low", "medium", "high")  # OpenAI's scale: what `reasoning_effort` may be unless a template says


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
    tool_format: str = "default"  # how tools, calls and results are written (tools.py)
    stop_words: tuple[str, ...] = ()  # generation stops at these (and at eos)
    special_tokens: tuple[str, ...] = field(default=())  # tokens the text needs as single special tokens
    efficient_eos: bool = False  # answers have no end token: learn the next role token, eos after the last
    empty_thought: str = ""  # the empty think block written when enable_thinking is False
    bare_answer_prefix: str = ""  # learned before an answer without thoughts (the model's empty think block)
    thoughts_in_history: str = "keep"  # keep | context | drop: the <think> part of answers before the last
    thought: str | None = None  # how the <think> part of an answer is written before its slot; None: kept as is
    last_answer_end: str = ""  # learned after the last answer only (when it is an assistant turn)
    function_suffix: str | None = None  # after each tool-call turn but the last, not learned; None: assistant_suffix
    system_prompt: str = "{content}"  # the system prompt inside the system turn, before the tools join it
    prefix_with_tools: str | None = None  # the prefix of a sample with tools; None: same as `prefix`
    reasoning_effort: str = ""  # default of the prefix's {reasoning_effort}; "" when the template has none
    reasoning_efforts: tuple[str, ...] = REASONING_EFFORTS  # the values `reasoning_effort` may take
    system_always: bool = False  # write the `system` slot even when there is no system prompt
    thinking_system: str | None = None  # the system slot while thinking is on, always written; None: `system`
    media: str = ""  # the media plugin (data/media/plugins.py) of a multimodal family; "" for text models

    # Which placeholders each slot may use; anything else in braces is literal text.
    ALLOWED = {
        "prefix": {"bos_token", "eos_token", "reasoning_effort"},
        "prefix_with_tools": {"bos_token", "eos_token", "reasoning_effort"},
        "system": {"content", "bos_token", "eos_token", "reasoning_effort"},
        "thinking_system": {"content", "bos_token", "eos_token", "reasoning_effort"},
        "system_in_user": {"system", "content", "bos_token", "eos_token"},
        "bare_answer_prefix": set(),  # written as is
        "empty_thought": set(),
    }
    NOT_TEXT = ("name", "description", "tool_format", "thoughts_in_history", "reasoning_effort", "media")

    def __post_init__(self) -> None:
        object.__setattr__(self, "reasoning_efforts", tuple(self.reasoning_efforts))  # YAML gives a list
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.NOT_TEXT or not isinstance(value, str):
                continue
            allowed = self.ALLOWED.get(f.name, {"content", "bos_token", "eos_token"})
            for used in PLACEHOLDER.findall(value):
                if used not in allowed:
                    raise LatheError(
                        f"Template `{self.name}`: slot `{f.name}` uses `{{{used}}}`, which it cannot fill "
                        f"(allowed there: {', '.join(sorted(allowed))})."
                    )
        if self.thoughts_in_history not in HISTORY_THOUGHTS:
            raise LatheError(
                f"Template `{self.name}`: thoughts_in_history is {self.thoughts_in_history!r}; "
                f"use one of {', '.join(HISTORY_THOUGHTS)}."
            )
        if self.efficient_eos:
            self._check_efficient_eos()
        if self.system_always and self.system is None:
            raise LatheError(f"Template `{self.name}`: system_always writes the `system` slot, which it does not have "
                             "(give `system`, or drop system_always).")
        self._check_reasoning_effort()

    def _check_reasoning_effort(self) -> None:
        slots = (self.prefix, self.prefix_with_tools, self.system, self.thinking_system)
        uses = any("{reasoning_effort}" in (slot or "") for slot in slots)
        efforts = ", ".join(self.reasoning_efforts)
        if uses and not self.reasoning_effort:
            raise LatheError(f"Template `{self.name}`: its prefix or system slot uses `{{reasoning_effort}}`, so "
                             f"`reasoning_effort` must give the default (one of {efforts}).")
        if self.reasoning_effort and self.reasoning_effort not in self.reasoning_efforts:
            raise LatheError(f"Template `{self.name}`: reasoning_effort is {self.reasoning_effort!r}; "
                             f"use one of {efforts}.")

    def _check_efficient_eos(self) -> None:
        """An efficient_eos answer ends at the stop word opening the next turn, so that must follow it directly."""
        if self.assistant_suffix:
            raise LatheError(
                f"Template `{self.name}`: efficient_eos learns the role token that follows an answer, so "
                "assistant_suffix must be empty (put that text at the start of the user/observation slots)."
            )
        if not self.stop_words:
            return  # e.g. fewshot: answers are separated by text the answer slot itself ends with
        for slot_name in ("user", "observation"):
            slot = getattr(self, slot_name) or self.user
            if not any(slot.startswith(word) for word in self.stop_words):
                raise LatheError(
                    f"Template `{self.name}`: efficient_eos needs the `{slot_name}` slot to start with one of its "
                    f"stop words {list(self.stop_words)} (that token ends the answer before it); it starts {slot[:20]!r}."
                )


def fill(slot: str, **values: str) -> str:
    """Replace the placeholders of `slot` in one pass (values are never scanned for placeholders)."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), slot)


def has_thought(content: str) -> bool:
    return THINK_OPEN in content or THINK_CLOSE in content


def split_thought(content: str) -> tuple[str, str]:
    """`(thought, answer)` of an answer with a think block, the newlines around each stripped
    (as a template that writes thoughts apart from the answer needs them)."""
    head, _, answer = content.partition(THINK_CLOSE)
    return head.split(THINK_OPEN)[-1].strip("\n"), answer.split(THINK_CLOSE)[-1].lstrip("\n")


def without_thought(content: str, mode: str) -> str:
    """An earlier answer with its thoughts dropped, written as the model's own template writes it:
    the text after `</think>`, its leading newlines stripped for Qwen3 (`context`), as is for R1."""
    content = content.split(THINK_CLOSE)[-1]
    return content.lstrip("\n") if mode == "context" else content


class SlotTemplate(Template):
    """A template rendered from `Slots`; see the module docstring for the layout.

    `tool_format` (a registered name) overrides the entry's; `enable_thinking=False` writes the
    template's empty think block and uses `system` in place of its `thinking_system`;
    `preserve_thinking=True` keeps the thoughts of earlier answers (see the module docstring);
    `reasoning_effort` fills the `{reasoning_effort}` of the prefix and system slots (None: the
    template's default). Use `with_options` for a variant.
    """

    def __init__(self, slots: Slots, *, tool_format: str | None = None, enable_thinking: bool = True,
                 preserve_thinking: bool = False, reasoning_effort: str | None = None):
        self.slots = slots
        self.name = slots.name
        self.media = slots.media
        self.tool_format: ToolFormat = get_tool_format(tool_format or slots.tool_format)
        self.enable_thinking = enable_thinking
        self.preserve_thinking = preserve_thinking and slots.thoughts_in_history != "keep"
        self.reasoning_effort = slots.reasoning_effort
        if reasoning_effort is not None:
            self.reasoning_effort = self._checked_effort(reasoning_effort)

    def _checked_effort(self, effort: str) -> str:
        if not self.slots.reasoning_effort:
            raise LatheError(
                f"reasoning_effort is {effort!r}, but template `{self.name}` has no reasoning-effort setting "
                "(only templates whose system text names one, such as gpt_oss and hy3, have). "
                "Remove `reasoning_effort`."
            )
        if effort not in self.slots.reasoning_efforts:
            raise LatheError(f"reasoning_effort is {effort!r}; use one of {', '.join(self.slots.reasoning_efforts)} "
                             f"(template `{self.name}` defaults to {self.slots.reasoning_effort}).")
        return effort

    def with_options(
        self,
        *,
        default_system: str | None = None,
        enable_thinking: bool | None = None,
        tool_format: str | None = None,
        preserve_thinking: bool | None = None,
        reasoning_effort: str | None = None,
    ) -> SlotTemplate:
        """This template with another default system prompt, thinking mode, tool format or reasoning effort
        (self if unchanged). A reasoning effort on a template without one raises LatheError."""
        fmt = get_tool_format(tool_format).name if tool_format else self.tool_format.name
        thinking = self.enable_thinking if enable_thinking is None else bool(enable_thinking)
        if not self.has_thinking_mode:
            thinking = self.enable_thinking  # no thinking mode: the option changes nothing
        preserve = self.preserve_thinking if preserve_thinking is None else bool(preserve_thinking)
        preserve = preserve and self.slots.thoughts_in_history != "keep"  # nothing dropped: nothing to keep
        effort = self.reasoning_effort if reasoning_effort is None else self._checked_effort(reasoning_effort)
        if (default_system is None or default_system == self.slots.default_system) and (
            fmt == self.tool_format.name and thinking == self.enable_thinking and preserve == self.preserve_thinking
            and effort == self.reasoning_effort
        ):
            return self
        slots = self.slots if default_system is None else replace(self.slots, default_system=default_system)
        return SlotTemplate(slots, tool_format=fmt, enable_thinking=thinking, preserve_thinking=preserve,
                            reasoning_effort=effort or None)

    @property
    def stop_words(self) -> list[str]:
        return list(self.slots.stop_words)

    @property
    def efficient_eos(self) -> bool:
        return self.slots.efficient_eos

    @property
    def reasoning(self) -> bool:
        """True for a template that drops the thoughts of earlier answers somewhere (see the module docstring)."""
        return self.slots.thoughts_in_history != "keep"

    def drops_history_thoughts(self, learn_history: bool) -> bool:
        """Whether the answers before the last lose their thoughts, when they are learned or only context."""
        mode = self.slots.thoughts_in_history
        if self.preserve_thinking or mode == "keep":
            return False
        return mode == "drop" or not learn_history

    @property
    def has_thinking_mode(self) -> bool:
        """True when `enable_thinking` changes the text (an empty think block, or a system slot of its own)."""
        return bool(self.slots.empty_thought) or self.slots.thinking_system is not None

    def system_slot(self) -> tuple[str | None, bool]:
        """The system slot in use (None: the system prompt joins the first user turn), and whether it is
        written when there is no system prompt (see the module docstring)."""
        if self.slots.thinking_system is not None and self.enable_thinking:
            return self.slots.thinking_system, True
        return self.slots.system, self.slots.system_always

    @property
    def thinking_off(self) -> bool:
        """True when the empty think block is written (a thinking template with enable_thinking=False)."""
        return bool(self.slots.empty_thought) and not self.enable_thinking

    def _special_tokens(self) -> list[str]:
        return list(self.slots.special_tokens)

    def system_text(self, system: str, tools: str) -> str:
        """The system prompt as rendered: the sample's (or the default), plus the tools when they go there."""
        return self._system_text(system, self.tool_format.render_tools(tools) if tools else "")

    def _system_text(self, system: str, tools_text: str) -> str:
        text = system or self.slots.default_system
        if text:
            text = fill(self.slots.system_prompt, content=text)
        if tools_text:  # the format says where its tools go (after, before or beside the system text)
            text = self.tool_format.system_note + self.tool_format.system_with_tools(text, tools_text)
        return text

    def to_jinja(self) -> str:
        from .jinja import slot_template_to_jinja

        return slot_template_to_jinja(self)

    def _render_prompt(self, tokenizer: Any, messages: Sequence[dict], system: str, tools: str) -> str:
        # Every answer of a prompt is context; the last user slot ends with the assistant header.
        text = self._render(tokenizer, messages, system, tools, learn_history=False).text
        return text + self.slots.empty_thought if self.thinking_off else text

    def _render(self, tokenizer: Any, messages: Sequence[dict], system: str, tools: str,
                learn_history: bool = True) -> Rendering:
        s, fmt = self.slots, self.tool_format
        drop_thoughts = self.drops_history_thoughts(learn_history)
        specials = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}
        tools_text = fmt.render_tools(tools) if tools else ""
        system_text = self._system_text(system, tools_text)
        prefix = s.prefix_with_tools if tools_text and s.prefix_with_tools is not None else s.prefix
        parts = [fill(prefix, reasoning_effort=self.reasoning_effort, **specials)]
        system_slot, system_always = self.system_slot()
        if system_slot is not None and (system_text or system_always):
            parts.append(fill(system_slot, content=system_text, reasoning_effort=self.reasoning_effort, **specials))
        length = sum(map(len, parts))
        spans: list[tuple[int, int]] = []
        last = len(messages) - 1
        calls_json = ""  # the latest tool-call turn, which an observation answers
        for i, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if i % 2 == 0:  # prompt turn
                if role == OBSERVATION:
                    content = fmt.render_results(content, calls_json)
                if i == 0 and tools_text and fmt.placement == IN_FIRST_USER:
                    content = tools_text + content
                if i == 0 and system_text and system_slot is None:
                    content = fill(s.system_in_user, system=system_text, content=content, **specials)
                slot = s.observation if role == OBSERVATION and s.observation is not None else s.user
                piece = fill(slot, content=content, **specials)
                if i == 0 and tools_text and fmt.placement == BEFORE_FIRST_USER:
                    piece = tools_text + piece
            else:  # answer turn: learned
                thought = ""  # the answer's thoughts, when the template writes them apart (`thought`)
                if role == FUNCTION:
                    calls_json = content
                    content = fmt.render_calls(content)
                    slot = s.function if s.function is not None else s.assistant
                else:
                    dropped = drop_thoughts and i < last and THINK_CLOSE in content
                    if s.thought is not None and THINK_CLOSE in content:
                        thought_text, content = split_thought(content)
                        thought = "" if dropped else fill(s.thought, content=thought_text, **specials)
                    elif dropped:
                        content = without_thought(content, s.thoughts_in_history)
                    slot = s.assistant
                piece = thought + fill(slot, content=content, **specials)
                if not (thought or has_thought(content)):
                    if self.thinking_off:
                        parts.append(s.empty_thought)  # part of the prompt, as at inference
                        length += len(s.empty_thought)
                    else:
                        piece = s.bare_answer_prefix + piece  # learned: the model writes it
                if i == last and role != FUNCTION:
                    piece += fill(s.last_answer_end, **specials)
                if s.efficient_eos and i == last:
                    piece += specials["eos_token"]
                spans.append((length, length + len(piece)))
                if i < last:
                    suffix = s.function_suffix if role == FUNCTION and s.function_suffix is not None else None
                    piece += fill(s.assistant_suffix if suffix is None else suffix, **specials)
            parts.append(piece)
            length += len(piece)
        text = "".join(parts)
        if s.efficient_eos:
            spans = [self._extend_to_stop_word(text, span) for span in spans]
        return Rendering(text, spans)

    def _extend_to_stop_word(self, text: str, span: tuple[int, int]) -> tuple[int, int]:
        """The span plus the stop word (the next turn's role token) that directly follows it, if any."""
        start, end = span
        for word in sorted(self.slots.stop_words, key=len, reverse=True):
            if text.startswith(word, end):
                return start, end + len(word)
        return span
