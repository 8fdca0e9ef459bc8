"""The shape of a tool format: what every family's spelling of tools, calls and results provides.

`tools.py` (JSON-bodied formats and the registry) and `tools_xml.py` (XML-tagged formats) both
build on `ToolFormat`; it lives here so each can import it without importing the other.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Sequence

from lathe.data.formats import TOOL_RESPONSE_JOIN

from .tool_calls import ToolCall, load_calls, load_tools, wrap_function


def jinja_str(text: str) -> str:
    """A jinja string literal (json's escapes are ones jinja's lexer decodes)."""
    return json.dumps(text, ensure_ascii=False)


# Where the text of `render_tools` goes.
IN_SYSTEM = "system"  # after the system prompt, separated by a blank line
BEFORE_SYSTEM = "before_system"  # before the system prompt, joined by the format's `system_join`
IN_FIRST_USER = "user"  # at the start of the first user message (Llama 3.1 "custom tools")
BEFORE_FIRST_USER = "before_user"  # in front of the first user turn's markup (Mistral's [AVAILABLE_TOOLS])


# Jinja that sets `fn` (the function of `call`) and `args` (its arguments as JSON text) in a call loop.
JINJA_CALL_VARS = (
    "{%- set fn = call.function if call.function is defined else call %}\n"
    "{%- set args = fn.arguments if fn.arguments is defined else fn.parameters %}\n"
    "{%- if args is not string %}{%- set args = args | tojson %}{%- endif %}\n"
)
# Jinja that sets `fn` to the function schema of `tool`, and `wrapped` to its OpenAI form.
JINJA_TOOL_VARS = (
    "{%- set fn = tool.function if tool.function is defined else tool %}\n"
    "{%- set wrapped = tool if tool.type is defined and tool.type == 'function' "
    "else {'type': 'function', 'function': tool} %}\n"
)


class ToolFormat(ABC):
    """How one model family writes tools, calls and results; see the docstring of `tools.py`."""

    name: str = ""
    placement: str = IN_SYSTEM  # where render_tools' text goes
    system_join: str = ""  # BEFORE_SYSTEM: the text between the tools and a (non-empty) system prompt
    system_note: str = ""  # put at the start of the system prompt when a sample has tools

    @abstractmethod
    def render_tools(self, tools_json: str) -> str:
        """The text describing the tools (placed per `placement`)."""

    @abstractmethod
    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        """The text of an assistant turn making `calls`."""

    @abstractmethod
    def parse_data(self, text: str) -> list[ToolCall] | None:
        """The calls in generated text, or None when it holds none."""

    def render_calls(self, calls_json: str) -> str:
        """The text of a function turn whose content is `calls_json`."""
        return self.format_calls(load_calls(calls_json))

    def render_results(self, results: str, calls_json: str = "") -> str:
        """The text of an observation turn; `calls_json` is the function turn it answers ("" if none)."""
        return results

    def parse(self, text: str) -> list[ToolCall] | None:
        """Structured calls from generated text; None when it is a plain answer."""
        return self.parse_data(text.strip())

    def system_with_tools(self, system: str, tools_text: str) -> str:
        """The system prompt of a sample with tools (`system` may be ""), per `placement`.

        Formats whose tools go elsewhere (the first user turn) leave the system prompt alone.
        """
        if self.placement == IN_SYSTEM:
            return f"{system}\n\n{tools_text}" if system else tools_text
        if self.placement == BEFORE_SYSTEM:
            return f"{tools_text}{self.system_join}{system}" if system else tools_text
        return system

    # Jinja: the same text from `tools`, `message.tool_calls` and the collected results.
    @abstractmethod
    def jinja_tools(self) -> str:
        """Jinja writing the tools text from `tools`."""

    @abstractmethod
    def jinja_calls(self) -> str:
        """Jinja writing the calls of `message.tool_calls`."""

    def jinja_results(self) -> str:
        """Jinja writing an observation from `results` (a list of strings) and `result_ids`."""
        return "{{- results | join(" + jinja_str(TOOL_RESPONSE_JOIN) + ") }}\n"

    def jinja_system_with_tools(self) -> str:
        """Jinja setting `system` from `system` and `tools_text` as `system_with_tools` does ("" when it keeps it)."""
        if self.placement == IN_SYSTEM:
            return "{%- set system = (system ~ '\\n\\n' ~ tools_text) if system else tools_text %}\n"
        if self.placement == BEFORE_SYSTEM:
            return (
                "{%- set system = (tools_text ~ " + jinja_str(self.system_join) + " ~ system) "
                "if system else tools_text %}\n"
            )
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ToolResponseResults:
    """Mix into a ToolFormat: results in `<tool_response>` pairs, Qwen's spelling (Qwen2/3 Hermes calls,
    Qwen3.5 and GLM-4.5's XML calls). Joined results become "...</tool_response>\\n<tool_response>...":
    one pair per result."""

    def render_results(self, results: str, calls_json: str = "") -> str:
        return f"<tool_response>\n{results}\n</tool_response>"

    def jinja_results(self) -> str:
        return (
            "{{- '<tool_response>\\n' ~ (results | join(" + jinja_str(TOOL_RESPONSE_JOIN) + ")) "
            "~ '\\n</tool_response>' }}\n"
        )


class JsonToolList:
    """Mix into a ToolFormat: the tools as one JSON object per line between `HEADER` and `FOOTER`
    (Qwen's `<tools>` block, kept by Qwen3.5)."""

    HEADER: str
    FOOTER: str

    def render_tools(self, tools_json: str) -> str:
        body = "".join("\n" + json.dumps(wrap_function(t), ensure_ascii=False) for t in load_tools(tools_json))
        return self.HEADER + body + self.FOOTER

    def jinja_tools(self) -> str:
        return (
            "{{- " + jinja_str(self.HEADER) + " }}\n"
            "{%- for tool in tools %}\n" + JINJA_TOOL_VARS + "{{- '\\n' ~ (wrapped | tojson) }}\n{%- endfor %}\n"
            "{{- " + jinja_str(self.FOOTER) + " }}\n"
        )
