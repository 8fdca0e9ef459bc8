"""What every chat template does, whatever defines its text.

A template turns a conversation into token ids and says which of them are learned. Two kinds
exist: `SlotTemplate` (lathe's registered templates, text kept as data in `templates.yaml`) and
`TokenizerTemplate` (the tokenizer's own jinja `chat_template`). Both only have to *render*: produce
one string plus the character spans that are learned. Turning that into ids is shared and done here,
once, the same way for both (see `tokenize.py` for why it is one tokenizer call).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

from lathe.data.sample import ANSWER_ROLES, PROMPT_ROLES
from lathe.errors import LatheError

from .tokenize import SpanTokens, add_missing_special_tokens, ensure_eos_and_pad, tokenize_spans
from .tools import ToolCall, ToolFormat

Pairs = list[tuple[list[int], list[int]]]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Rendering:
    """A rendered conversation: the text, and the `[start, end)` character span learned in each answer turn."""

    text: str
    answer_spans: list[tuple[int, int]]


def check_messages(messages: Sequence[dict[str, Any]], *, for_prompt: bool) -> None:
    """Raise LatheError unless `messages` alternate prompt/answer turns as the schema says.

    Training (`for_prompt=False`) needs the conversation to end with an answer turn; inference
    (`for_prompt=True`) needs it to end with a prompt turn, whose answer the model will write.
    """
    if not messages:
        raise LatheError("The conversation has no messages; a sample needs at least one user turn.")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        expected = PROMPT_ROLES if i % 2 == 0 else ANSWER_ROLES
        if role not in PROMPT_ROLES + ANSWER_ROLES:
            raise LatheError(
                f"Message {i} has role {role!r}; lathe's schema knows only "
                f"{', '.join(PROMPT_ROLES + ANSWER_ROLES)} (the system prompt is passed separately as `system`)."
            )
        if role not in expected:
            side = "prompt" if i % 2 == 0 else "answer"
            raise LatheError(
                f"Message {i} has role {role!r} but a {side} turn ({' or '.join(expected)}) was expected: "
                "conversations start with a prompt turn and alternate prompt/answer "
                f"(roles seen: {[m.get('role') for m in messages]})."
            )
        if not isinstance(content, str):
            raise LatheError(f"Message {i} ({role}) has content of type {type(content).__name__}; expected text.")
    ends_with_prompt = len(messages) % 2 == 1
    if for_prompt and not ends_with_prompt:
        raise LatheError(
            "A prompt for generation must end with a user or observation turn; "
            f"this one ends with {messages[-1]['role']!r}."
        )
    if not for_prompt and ends_with_prompt:
        raise LatheError(
            f"A training conversation must end with an answer turn (assistant or function); this one ends with "
            f"{messages[-1]['role']!r}, which would leave nothing to learn. "
            "Drop the trailing turn, or use encode_prompt for inference."
        )


class Template(ABC):
    """A chat template: render a conversation, encode it into learned/unlearned ids, fix a tokenizer.

    Subclasses implement `_render` and `_render_prompt` (messages already validated); everything
    that touches token ids is shared.
    """

    name: str = ""
    tool_format: ToolFormat  # how tools, tool calls and results are written and parsed
    preserve_thinking: bool = False  # reasoning templates: keep the thoughts of earlier answers wherever they are dropped
    media: str = ""  # the media plugin of a multimodal family (data/media/plugins.py); "" for text models

    @property
    @abstractmethod
    def stop_words(self) -> list[str]:
        """Token strings generation stops at, besides the tokenizer's eos token."""

    @property
    def efficient_eos(self) -> bool:
        """True when answers carry no end-of-turn token of their own (the next role token ends them).

        Such a template learns that role token as the end of each answer, and eos after the
        last; `train_on_prompt` must be refused for it (the caller raises), since learning the
        prompt would teach the role tokens as ordinary text.
        """
        return False

    def parse_tool_calls(self, text: str) -> list[ToolCall] | None:
        """The tool calls in a generated answer, in this template's tool format; None for a plain answer."""
        return self.tool_format.parse(text)

    @abstractmethod
    def to_jinja(self) -> str:
        """A Hugging Face jinja chat template that renders conversations as this template does."""

    @abstractmethod
    def _render(self, tokenizer: Any, messages: Sequence[dict], system: str, tools: str,
                learn_history: bool = True) -> Rendering:
        """Render a validated training conversation to text plus its learned spans (see `render`)."""

    @abstractmethod
    def _render_prompt(self, tokenizer: Any, messages: Sequence[dict], system: str, tools: str) -> str:
        """Render a validated conversation ending with a prompt turn, with the generation prompt."""

    def render(self, tokenizer: Any, messages: Sequence[dict], system: str = "", tools: str = "",
               *, learn_history: bool = True) -> Rendering:
        """The training text of a conversation (ending with an answer) and the learned character spans.

        `learn_history=False` says the answers before the last are context, not trained (`mask_history`,
        preference data): a reasoning template then writes them as the model sees them when it answers,
        its thoughts dropped unless `preserve_thinking` (as a prompt for generation does).

        Only `tokenizer.bos_token` / `eos_token` are read by registered templates, so any object with
        those attributes will do for checking text; `TokenizerTemplate` needs the real tokenizer.
        """
        check_messages(messages, for_prompt=False)
        return self._render(tokenizer, messages, system or "", tools or "", learn_history)

    def render_prompt(self, tokenizer: Any, messages: Sequence[dict], system: str = "", tools: str = "") -> str:
        """The text of a prompt for generation: the conversation, then the assistant header."""
        check_messages(messages, for_prompt=True)
        return self._render_prompt(tokenizer, messages, system or "", tools or "")

    def encode(self, tokenizer: Any, messages: Sequence[dict], system: str = "", tools: str = "",
               *, learn_history: bool = True) -> Pairs:
        """Return one `(prompt_ids, answer_ids)` per prompt/answer pair; answer ids are the learned ones.

        Concatenated, the ids are exactly `tokenizer(rendering.text, add_special_tokens=False).input_ids`.
        `learn_history` as in `render`.
        """
        return self.encode_many(tokenizer, [(messages, system, tools)], learn_history=learn_history)[0].pairs()

    def encode_many(self, tokenizer: Any, conversations: Sequence[tuple[Sequence[dict], str, str]],
                    *, learn_history: bool = True) -> list[SpanTokens]:
        """`encode` for a batch of `(messages, system, tools)`, with one tokenizer call for all of them."""
        renderings = [self.render(tokenizer, messages, system, tools, learn_history=learn_history)
                      for messages, system, tools in conversations]
        return tokenize_spans(tokenizer, [r.text for r in renderings], [r.answer_spans for r in renderings])

    def encode_prompt(self, tokenizer: Any, messages: Sequence[dict], system: str = "", tools: str = "") -> list[int]:
        """Return the ids of the prompt for generation (ends with the assistant header)."""
        text = self.render_prompt(tokenizer, messages, system, tools)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def fix_tokenizer(self, tokenizer: Any) -> list[str]:
        """Make `tokenizer` usable with this template; return the token strings added to its vocabulary.

        Sets eos (from the first stop word when missing) and pad (falls back to eos), adds the
        template's special tokens and stop words the tokenizer lacks, and sets the tokenizer's
        chat template to this one (`apply_to_tokenizer`). The caller resizes the model's
        embeddings when the returned list is non-empty. Calling it twice adds nothing.
        """
        added = ensure_eos_and_pad(tokenizer, self.stop_words, template_name=self.name)
        added += add_missing_special_tokens(tokenizer, self._special_tokens() + self.stop_words)
        self.apply_to_tokenizer(tokenizer)
        return added

    def apply_to_tokenizer(self, tokenizer: Any) -> None:
        """Set `tokenizer.chat_template` to this template, so a saved tokenizer carries what was trained.

        Then serving the model with its own chat template (vLLM, TGI, `transformers`, or lathe with
        `template` omitted) renders prompts exactly as training did.
        """
        tokenizer.chat_template = self.to_jinja()

    def _special_tokens(self) -> list[str]:
        """Tokens the template's text needs as single special tokens (besides stop words)."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
