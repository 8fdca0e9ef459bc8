"""The tokenizer's own jinja chat template, used when a run names no template.

The conversation is rendered by `tokenizer.apply_chat_template`, so the text is exactly what the
model's publisher intended. A jinja template says nothing about which characters are the
answer, so the answers are *found* in the rendered text: each assistant content is searched
forward from the end of the previous turn, and what is learned is that content plus the special
token that ends the turn right after it (`<|im_end|>`, `<|eot_id|>`, `</s>`, `<end_of_turn>`...).

Why search instead of rendering growing prefixes: some templates are not prefix-stable (Qwen3
thinking models drop the reasoning of earlier turns and add a `<think>` block to the last one),
so the prefix renderings would not line up with the full one.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import jinja2

from lathe.data.sample import ASSISTANT, FUNCTION, OBSERVATION, USER
from lathe.errors import LatheError

from .base import THINK_CLOSE, THINK_OPEN, Rendering, Template
from .tokenize import special_token_strings
from .tools import get_tool_format, load_tools

logger = logging.getLogger(__name__)

# lathe role -> the role jinja chat templates expect.
HF_ROLES = {USER: "user", ASSISTANT: "assistant", FUNCTION: "assistant", OBSERVATION: "tool"}
# How a jinja template writes tool calls, recognised by a marker in its source (first match wins).
TOOL_FORMAT_MARKERS = (("<tool_call>", "qwen"), ("[TOOL_CALLS]", "mistral"), ("<|python_tag|>", "llama3"))
_PROBE = [{"role": "user", "content": "lathe probe question"}, {"role": "assistant", "content": "lathe probe answer"}]
# How chat templates name their switch for keeping the thoughts of earlier answers, and its value then.
THINKING_SWITCHES = (("preserve_thinking", True), ("clear_thinking", False))


class TokenizerTemplate(Template):
    """A template backed by `tokenizer.chat_template`.

    `chat_template_kwargs` go to every `apply_chat_template` call (e.g. `{"date_string": "26 Jul 2024"}`
    for Llama 3, `{"enable_thinking": False}` for Qwen3). `default_system` is used for samples
    without a system prompt. `tool_format` names the format generated tool calls are parsed
    with; by default it is recognised from the template's source (`default` when unknown).
    `preserve_thinking=True` turns on the template's own switch for keeping the thoughts of
    earlier answers (`preserve_thinking`, or GLM's `clear_thinking: false`); a template that drops
    them with no such switch is refused (`keep_history_thoughts`).
    """

    def __init__(
        self,
        tokenizer: Any,
        chat_template_kwargs: dict[str, Any] | None = None,
        *,
        default_system: str = "",
        tool_format: str | None = None,
        preserve_thinking: bool = False,
    ):
        if not getattr(tokenizer, "chat_template", None):
            raise LatheError(
                f"Tokenizer `{_name(tokenizer)}` has no chat_template; name a registered template with `template`."
            )
        self.name = "tokenizer"
        self.tokenizer_name = _name(tokenizer)
        self.chat_template = tokenizer.chat_template
        self.default_system = default_system
        guessed = next((fmt for marker, fmt in TOOL_FORMAT_MARKERS if marker in str(self.chat_template)), "default")
        self.tool_format = get_tool_format(tool_format or guessed)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.preserve_thinking = preserve_thinking
        if preserve_thinking:
            self.chat_template_kwargs.update(self.keep_history_thoughts(tokenizer))
        self._stop_words = self._probe_stop_words(tokenizer)
        self._warned_no_end_token = False
        self._renders_tools: bool | None = None

    @property
    def stop_words(self) -> list[str]:
        return list(self._stop_words)

    def to_jinja(self) -> str:
        return self.chat_template

    def apply_to_tokenizer(self, tokenizer: Any) -> None:
        """Nothing to do: the tokenizer already carries the template this one renders with."""

    def keep_history_thoughts(self, tokenizer: Any) -> dict[str, Any]:
        """The `apply_chat_template` arguments that keep the thoughts of earlier answers.

        Templates spell the switch their own way; one that drops those thoughts (Qwen3's, R1's) with
        no switch cannot do what `preserve_thinking` asks, so it is refused rather than ignored.
        """
        source = str(self.chat_template)
        for switch, value in THINKING_SWITCHES:
            if switch in source:
                return {switch: value}
        thought = "lathe probe thought"
        probe = [_PROBE[0], {"role": "assistant", "content": f"<think>\n{thought}\n</think>\n\n{_PROBE[1]['content']}"},
                 {"role": "user", "content": "lathe probe follow-up"}]
        try:
            kept = thought in tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True,
                                                             **self.chat_template_kwargs)
        except jinja2.TemplateError:
            kept = False
        if not kept:
            raise LatheError(
                f"`preserve_thinking: true`: the chat template of tokenizer `{_name(tokenizer)}` drops the thoughts "
                "of earlier answers and has no switch to keep them. Set `template` to a registered reasoning "
                "template (e.g. `qwen3`, `deepseekr1`), which keeps them with preserve_thinking, or drop "
                "`preserve_thinking`."
            )
        return {}  # the template keeps them already

    def _render(self, tokenizer: Any, messages: Sequence[dict], system: str, tools: str,
                learn_history: bool = True) -> Rendering:
        # The publisher's template decides how earlier answers look; learn_history changes nothing here.
        text = self._apply(tokenizer, messages, system, tools, add_generation_prompt=False)
        spans = self._find_answers(tokenizer, text, messages)
        # Nothing after the last answer's end-of-turn token is learned; cut it (see SlotTemplate).
        return Rendering(text[: spans[-1][1]], spans)

    def _render_prompt(self, tokenizer: Any, messages: Sequence[dict], system: str, tools: str) -> str:
        return self._apply(tokenizer, messages, system, tools, add_generation_prompt=True)

    def _apply(
        self, tokenizer: Any, messages: Sequence[dict], system: str, tools: str, add_generation_prompt: bool
    ) -> str:
        system = system or self.default_system
        conversation = [{"role": "system", "content": system}] if system else []
        conversation += [{"role": HF_ROLES[m["role"]], "content": m["content"]} for m in messages]
        text = self._call_template(tokenizer, conversation, tools, add_generation_prompt)
        if tools and self._renders_tools is None:  # checked once: many templates silently ignore `tools`
            self._renders_tools = text != self._call_template(tokenizer, conversation, "", add_generation_prompt)
        if tools and not self._renders_tools:
            raise LatheError(
                f"The chat template of tokenizer `{_name(tokenizer)}` ignores `tools`, so the tool schemas of this "
                "sample would be silently dropped. Set `template` to a registered template that renders tools "
                "(e.g. `qwen`), or remove the tools column."
            )
        return text

    def _call_template(self, tokenizer: Any, conversation: list[dict], tools: str, add_generation_prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(
                conversation,
                tools=load_tools(tools) if tools else None,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                **self.chat_template_kwargs,
            )
        except jinja2.TemplateError as err:
            raise LatheError(
                f"The chat template of tokenizer `{_name(tokenizer)}` rejected this conversation: {err}. "
                f"(roles: {[m['role'] for m in conversation]}). Set `template` to a registered template "
                "to render it lathe's way (see docs/templates.md)."
            ) from err

    def _find_answers(self, tokenizer: Any, text: str, messages: Sequence[dict]) -> list[tuple[int, int]]:
        """The learned `[start, end)` span of each answer turn in `text`, found in order."""
        specials = special_token_strings(tokenizer)
        end_tokens = set(self._stop_words) | ({tokenizer.eos_token} if tokenizer.eos_token else set())
        cursor, spans = 0, []
        for i, message in enumerate(messages):
            content = message["content"]
            if i % 2 == 0:  # prompt turn: step over it when it appears verbatim, so answers are not found inside it
                needle = content.strip()
                pos = text.find(needle, cursor) if needle else -1
                if pos >= 0:
                    cursor = pos + len(needle)
                continue
            start, end = _find_answer(text, content, cursor, specials, end_tokens)
            if start < 0:
                raise LatheError(
                    f"Answer turn {i} ({message['role']}) could not be found in the text rendered by the chat template "
                    f"of tokenizer `{_name(tokenizer)}`: the template changes it (content starts {content[:80]!r}). "
                    "Set `template` to a registered template to train this data (see docs/templates.md)."
                )
            new_end = _after_end_token(text, end, specials)
            if new_end == end and not self._warned_no_end_token:
                self._warned_no_end_token = True
                logger.warning(
                    "The chat template of tokenizer `%s` puts no special token right after an answer; "
                    "the model will not learn where its turn ends.", _name(tokenizer)
                )
            spans.append((start, new_end))
            cursor = new_end
        return spans

    def _probe_stop_words(self, tokenizer: Any) -> list[str]:
        """The end-of-turn token the template writes after an answer, plus eos."""
        words = []
        try:
            text = tokenizer.apply_chat_template(_PROBE, tokenize=False, **self.chat_template_kwargs)
            end = text.find(_PROBE[1]["content"])
            if end >= 0:
                end += len(_PROBE[1]["content"])
                after = _after_end_token(text, end, special_token_strings(tokenizer))
                if after > end:
                    words.append(text[end:after].strip())
        except jinja2.TemplateError:
            pass
        if tokenizer.eos_token:
            words.append(tokenizer.eos_token)
        return list(dict.fromkeys(words))


def _name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _find_answer(text: str, content: str, cursor: int, specials: set[str], end_tokens: set[str]) -> tuple[int, int]:
    """Where `content` was rendered at or after `cursor`: `(start, end)`, or `(-1, -1)`.

    Tries the content as is, then stripped (templates often trim), then, for a reasoning answer,
    the part after `</think>` (templates may drop or reformat the thoughts; when they re-render
    them, the learned span starts at the `<think>` they wrote).
    """
    if not content.strip():  # an empty answer: learn the end-of-turn token that follows
        found = [p for p in (text.find(t, cursor) for t in end_tokens) if p >= 0]
        return (min(found), min(found)) if found else (-1, -1)
    for needle in dict.fromkeys((content, content.strip())):
        start = _best_occurrence(text, needle, cursor, specials, end_tokens)
        if start >= 0:
            return start, start + len(needle)
    final = content.split(THINK_CLOSE)[-1].strip() if THINK_CLOSE in content else ""
    start = _best_occurrence(text, final, cursor, specials, end_tokens) if final else -1
    if start >= 0:
        think = text.rfind(THINK_OPEN, cursor, start)
        return (think if think >= 0 else start), start + len(final)
    return -1, -1


def _best_occurrence(text: str, needle: str, cursor: int, specials: set[str], end_tokens: set[str]) -> int:
    """The first occurrence followed by an end-of-turn token; else by any special token; else the first.

    The preference keeps a short answer (say "user") from being matched inside a role header.
    """
    best, best_rank = -1, 3
    pos = text.find(needle, cursor)
    while pos >= 0:
        follower = _special_at(text, _skip_space(text, pos + len(needle)), specials)
        rank = 0 if follower in end_tokens else 1 if follower else 2
        if rank < best_rank:
            best, best_rank = pos, rank
            if rank == 0:
                break
        pos = text.find(needle, pos + 1)
    return best


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _special_at(text: str, pos: int, specials: set[str]) -> str:
    """The longest special token starting at `pos`, or ''."""
    matches = [s for s in specials if text.startswith(s, pos)]
    return max(matches, key=len) if matches else ""


def _after_end_token(text: str, end: int, specials: set[str]) -> int:
    """`end` moved past optional whitespace and the special token that ends the turn, if one follows."""
    pos = _skip_space(text, end)
    special = _special_at(text, pos, specials)
    return pos + len(special) if special else end
