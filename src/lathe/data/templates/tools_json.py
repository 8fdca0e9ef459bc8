"""Tool formats of MiniMax-M1 (`minimax1`) and Ling / Bailing (`ling`): JSON tool lists in the system prompt.

Both families describe the tools as JSON lines inside `<tools>` in the system turn and add a
family-specific rule for where that block sits relative to the system text, which is why each
overrides `system_with_tools`. Their calls differ: MiniMax-M1 writes one JSON object per call
inside a `<tool_calls>` block; Ling 3.0 writes GLM-4.5's `<arg_key>`/`<arg_value>` pairs (its
parser is GLM's, `tools_xml.Glm4MoeTools`), with its own newlines.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from .tool_calls import ToolCall, calls_from_data, function_of, load_calls, load_tools, split_results
from .tool_format import IN_SYSTEM, JINJA_CALL_VARS, JINJA_TOOL_VARS, JsonToolList, ToolFormat, jinja_str
from .tools_xml import JINJA_CALL_LOOP, JINJA_VALUE, Glm4MoeTools, xml_calls

# --- MiniMax-Text-01 / MiniMax-M1 -------------------------------------------------------------------


class MiniMax1Tools(ToolFormat):
    """MiniMax-Text-01 / MiniMax-M1: tools in their own `system tool_setting=tools` block, JSON calls in `<tool_calls>`.

    Unverified against a vendor jinja file (none is at hand). The layout is the model's internal
    format shown in MiniMax's function-call guide for M1: after the `system ai_setting=...` turn a
    second system turn `<beginning_of_sentence>system tool_setting=tools\\n...<end_of_sentence>`
    lists each function schema (unwrapped) as one JSON line; a call turn is `<tool_calls>` with one
    `{"name": ..., "arguments": {...}}` per line; results are written `tool name: NAME\\ntool
    result: TEXT`, one after another. LLaMA-Factory's MiniMaxM1ToolUtils writes the same tools and
    calls but glues the tools text onto the system text in the same turn, writes `<tool-name-1>` in
    the example call, and leaves results bare; lathe follows the vendor's guide. The format writes
    the second system turn itself, closing the first with the `minimax1` template's markup, so it
    fits that template only; with no system text the tools fill the one system turn.

    The parser reads every `<tool_calls>` block, each holding JSON call objects separated by
    whitespace (one per line as written; a pretty-printed object also reads); anything else in a
    block, or a block left open, makes the text a plain answer.
    """

    name = "minimax1"
    TOOL_TURN = "<end_of_sentence>\n<beginning_of_sentence>system tool_setting=tools\n"
    HEADER = "You are provided with these tools:\n<tools>\n"
    FOOTER = (
        "</tools>\n\nIf you need to call tools, please respond with <tool_calls></tool_calls> XML tags, and provide "
        "tool-name and json-object of arguments, following the format below:\n<tool_calls>\n"
        '{"name": <tool-name>, "arguments": <args-json-object>}\n...\n</tool_calls>'
    )
    OPEN, CLOSE = "<tool_calls>", "</tool_calls>"

    def render_tools(self, tools_json: str) -> str:
        body = "".join(json.dumps(function_of(t), ensure_ascii=False) + "\n" for t in load_tools(tools_json))
        return self.HEADER + body + self.FOOTER

    def system_with_tools(self, system: str, tools_text: str) -> str:
        return f"{system}{self.TOOL_TURN}{tools_text}" if system else tools_text

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        lines = "".join(
            f'{{"name": {json.dumps(c.name, ensure_ascii=False)}, "arguments": {c.arguments}}}\n' for c in calls
        )
        return f"{self.OPEN}\n{lines}{self.CLOSE}"

    def render_results(self, results: str, calls_json: str = "") -> str:
        calls = load_calls(calls_json) if calls_json else []
        return "\n".join(
            (f"tool name: {calls[k].name}\n" if k < len(calls) else "") + f"tool result: {result}"
            for k, result in enumerate(split_results(results))
        )

    def parse_data(self, text: str) -> list[ToolCall] | None:
        calls: list[ToolCall] = []
        decoder = json.JSONDecoder()
        pos = text.find(self.OPEN)
        if pos < 0:
            return None
        while pos >= 0:
            end = text.find(self.CLOSE, pos)
            if end < 0:
                return None  # cut off inside a block
            block, at = text[pos + len(self.OPEN):end], 0
            while block[at:].strip():
                at += len(block[at:]) - len(block[at:].lstrip())
                try:
                    data, at = decoder.raw_decode(block, at)
                except json.JSONDecodeError:
                    return None
                call = calls_from_data(data) if isinstance(data, dict) else None
                if call is None:
                    return None
                calls += call
            pos = text.find(self.OPEN, end)
        return calls or None

    def jinja_tools(self) -> str:
        return (
            "{{- " + jinja_str(self.HEADER) + " }}\n"
            "{%- for tool in tools %}\n" + JINJA_TOOL_VARS + "{{- (fn | tojson) ~ '\\n' }}\n{%- endfor %}\n"
            "{{- " + jinja_str(self.FOOTER) + " }}\n"
        )

    def jinja_system_with_tools(self) -> str:
        turn = jinja_str(self.TOOL_TURN)
        return "{%- set system = (system ~ " + turn + " ~ tools_text) if system else tools_text %}\n"

    def jinja_calls(self) -> str:
        return (
            "{{- " + jinja_str(self.OPEN + "\n") + " }}\n"
            "{%- for call in message.tool_calls %}\n" + JINJA_CALL_VARS +
            "{{- '{\"name\": ' ~ (fn.name | tojson) ~ ', \"arguments\": ' ~ args ~ '}\\n' }}\n"
            "{%- endfor %}\n"
            "{{- " + jinja_str(self.CLOSE) + " }}\n"
        )

    def jinja_results(self) -> str:
        # The names of the calls the results answer, by position: those of the latest assistant turn
        # with calls before this observation (as `render_results` gets the latest function turn).
        return (
            "{%- set minimax_calls = namespace(names=[]) %}\n"
            "{%- for earlier in loop_messages[:loop.index0] %}\n"
            "{%- if earlier.role == 'assistant' and earlier.tool_calls is defined and earlier.tool_calls %}\n"
            "{%- set minimax_calls.names = [] %}\n"
            "{%- for call in earlier.tool_calls %}\n"
            "{%- set fn = call.function if call.function is defined else call %}\n"
            "{%- set minimax_calls.names = minimax_calls.names + [fn.name] %}\n"
            "{%- endfor %}\n"
            "{%- endif %}\n"
            "{%- endfor %}\n"
            "{%- for result in results %}\n"
            "{%- if not loop.first %}{{- '\\n' }}{%- endif %}\n"
            "{%- if loop.index0 < minimax_calls.names | length %}"
            "{{- 'tool name: ' ~ minimax_calls.names[loop.index0] ~ '\\n' }}{%- endif %}\n"
            "{{- 'tool result: ' ~ result }}\n"
            "{%- endfor %}\n"
        )


# --- Ling / Bailing ---------------------------------------------------------------------------------


class LingTools(JsonToolList, Glm4MoeTools):
    """Ling 3.0 (Bailing V3): Qwen's `<tools>` list, GLM-4.5's `<arg_key>`/`<arg_value>` calls, Qwen's results.

    As the vendor's template writes it (tests/data/test_tools_json.py renders it): the tools block
    follows the system text on the next line and ends with a newline, before Ling's thinking
    switch (`detailed thinking on|off`) when the system text ends with that line, so the switch
    stays the system turn's last line; a call is `<tool_call>NAME\\n`, then `<arg_key>K</arg_key>
    \\n<arg_value>V</arg_value>` per argument with no newline between pairs, then `\\n</tool_call>`
    (a call without arguments is `<tool_call>NAME\\n\\n</tool_call>`), calls joined by newlines;
    each result is `\\n<tool_response>\\nTEXT\\n</tool_response>` (GLM and Qwen's pair with a
    newline before it). Calls are read back with GLM-4.5's parser.

    LLaMA-Factory's `ling` tool format is Ling 2.0's, whose template wrote Qwen's JSON calls
    (`<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`); Ling 3.0 changed the calls.
    """

    name = "ling"
    placement = IN_SYSTEM  # after the system text, by `system_with_tools` (not GLM's block before it)
    system_join = ""
    HEADER = (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    )
    FOOTER = (
        "\n</tools>\n\nIf none of the functions can be used, point it out. If the given question lacks the "
        "parameters required by the function, also point it out.\nIf you need to use a function, for each function "
        "call, output the function name and arguments within the following XML format:\n<tool_call>{function-name}\n"
        "<arg_key>{arg-key-1}</arg_key>\n<arg_value>{arg-value-1}</arg_value>\n<arg_key>{arg-key-2}</arg_key>\n"
        "<arg_value>{arg-value-2}</arg_value>\n...\n</tool_call>\n"
    )
    SWITCHES = ("detailed thinking on", "detailed thinking off")  # Ling's thinking switch, a line of the system text

    def system_with_tools(self, system: str, tools_text: str) -> str:
        head, _, last = system.rpartition("\n")
        if last in self.SWITCHES:
            return (f"{head}\n" if head else "") + tools_text + last
        return f"{system}\n{tools_text}" if system else tools_text

    def jinja_system_with_tools(self) -> str:
        return (
            "{%- set lines = system.split('\\n') %}\n"
            "{%- if lines[-1] in " + json.dumps(list(self.SWITCHES)) + " %}\n"
            "{%- set head = lines[:-1] | join('\\n') %}\n"
            "{%- set system = ((head ~ '\\n') if head else '') ~ tools_text ~ lines[-1] %}\n"
            "{%- else %}\n"
            "{%- set system = (system ~ '\\n' ~ tools_text) if system else tools_text %}\n"
            "{%- endif %}\n"
        )

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        return xml_calls(calls, "<tool_call>{name}\n", "<arg_key>{key}</arg_key>\n<arg_value>{value}</arg_value>",
                         "\n</tool_call>", "\n")

    def render_results(self, results: str, calls_json: str = "") -> str:
        return "\n" + super().render_results(results, calls_json)

    def jinja_calls(self) -> str:
        return (
            JINJA_CALL_LOOP +
            "{%- if not loop.first %}{{- '\\n' }}{%- endif %}\n"
            "{{- '<tool_call>' ~ fn.name ~ '\\n' }}\n"
            "{%- for key, value in args.items() %}"
            "{{- '<arg_key>' ~ key ~ '</arg_key>\\n<arg_value>' ~ " + JINJA_VALUE + " ~ '</arg_value>' }}"
            "{%- endfor %}\n"
            "{{- '\\n</tool_call>' }}\n"
            "{%- endfor %}\n"
        )

    def jinja_results(self) -> str:
        return "{{- '\\n' }}\n" + super().jinja_results()


JSON_TOOL_FORMATS: tuple[ToolFormat, ...] = (MiniMax1Tools(), LingTools())
