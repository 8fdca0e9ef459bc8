"""Tencent Hy3's tool format (`hy3`): Qwen's `<tools>` list, GLM-style key/value calls in `:opensource` tokens.

As Hy3's template writes it (tests/data/test_templates_hy3.py renders the vendor's jinja file):
the tools follow the system text after a blank line, one OpenAI-form schema per line inside
`<tools>`, then an example call; a tool-call turn is one block

    <tool_calls:opensource>
    <tool_call:opensource>NAME<tool_sep:opensource>
    <arg_key:opensource>KEY</arg_key:opensource>
    <arg_value:opensource>VALUE</arg_value:opensource>
    </tool_call:opensource>
    </tool_calls:opensource>

(one `<tool_call:opensource>` per call, each line ending with a newline), a string value written
bare and any other value as JSON, as GLM-4.5 writes them (`tools_xml.py`: reading a value back
takes JSON where the text is JSON, so a string that looks like JSON comes back as data). Each
result is `<tool_response:opensource>\\nTEXT\\n</tool_response:opensource>\\n`; the template's
observation slot puts the `<tool_responses:opensource>` block around them, as its role markup.

The template writes the reasoning-mode tag after the tools' last line (`... you should print
</tool_calls:opensource>`), where it would follow the system text without tools; that tag is the
template's (its `system` slot), not the format's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .tool_calls import ToolCall, split_results
from .tool_format import IN_SYSTEM, JsonToolList, ToolFormat, jinja_str
from .tools_xml import (
    JINJA_CALL_LOOP,
    JINJA_VALUE,
    make_call,
    parsed_calls,
    read_value,
    xml_calls,
)

OPEN, CLOSE = "<tool_calls:opensource>", "</tool_calls:opensource>"
CALL_OPEN, CALL_CLOSE, SEP = "<tool_call:opensource>", "</tool_call:opensource>", "<tool_sep:opensource>"
KEY = "<arg_key:opensource>{key}</arg_key:opensource>\n"
VALUE = "<arg_value:opensource>{value}</arg_value:opensource>\n"
RESULT_OPEN, RESULT_CLOSE = "<tool_response:opensource>\n", "\n</tool_response:opensource>\n"


class Hy3Tools(JsonToolList, ToolFormat):
    """Hy3: tools after the system text, `<tool_calls:opensource>` blocks of key/value calls (module docstring)."""

    name = "hy3"
    placement = IN_SYSTEM
    HEADER = (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    )
    FOOTER = (
        f"\n</tools>\n\nFor function call returns, you should first print {OPEN}\n"
        f"For each function call, you should return object like:\n{CALL_OPEN}{{function-name}}{SEP}\n"
        + KEY.format(key="{arg-key-1}") + VALUE.format(value="{arg-value-1}")
        + KEY.format(key="{arg-key-2}") + VALUE.format(value="{arg-value-2}")
        + f"...\n{CALL_CLOSE}\nAt the end of function call returns, you should print {CLOSE}"
    )
    CALL = re.compile(re.escape(CALL_OPEN) + r"([^<>]*?)" + re.escape(SEP) + r"(.*?)" + re.escape(CALL_CLOSE),
                      re.DOTALL)
    PAIR = re.compile(r"<arg_key:opensource>(.*?)</arg_key:opensource>\s*<arg_value:opensource>(.*?)"
                      r"</arg_value:opensource>", re.DOTALL)

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        body = xml_calls(calls, CALL_OPEN + "{name}" + SEP + "\n", KEY + VALUE,
                         CALL_CLOSE + "\n", "")
        return f"{OPEN}\n{body}{CLOSE}"

    def render_results(self, results: str, calls_json: str = "") -> str:
        return "".join(RESULT_OPEN + result + RESULT_CLOSE for result in split_results(results))

    def parse_data(self, text: str) -> list[ToolCall] | None:
        if OPEN not in text:
            return None
        blocks = []
        for name, body in self.CALL.findall(text):
            # Everything in a call must be key/value pairs: other text means it is not this format's call.
            ok = name.strip() != "" and self.PAIR.sub("", body).strip() == ""
            blocks.append(make_call(name.strip(), ((k.strip(), read_value(v)) for k, v in self.PAIR.findall(body)))
                          if ok else None)
        return parsed_calls(blocks, text.count(CALL_OPEN))

    def jinja_calls(self) -> str:
        return (
            "{{- " + jinja_str(OPEN + "\n") + " }}\n" + JINJA_CALL_LOOP +
            "{{- " + jinja_str(CALL_OPEN) + " ~ fn.name ~ " + jinja_str(SEP + "\n") + " }}\n"
            "{%- for key, value in args.items() %}"
            "{{- '<arg_key:opensource>' ~ key ~ '</arg_key:opensource>\\n<arg_value:opensource>' ~ " + JINJA_VALUE
            + " ~ '</arg_value:opensource>\\n' }}{%- endfor %}\n"
            "{{- " + jinja_str(CALL_CLOSE + "\n") + " }}\n"
            "{%- endfor %}\n"
            "{{- " + jinja_str(CLOSE) + " }}\n"
        )

    def jinja_results(self) -> str:
        return ("{%- for result in results %}{{- " + jinja_str(RESULT_OPEN) + " ~ result ~ " + jinja_str(RESULT_CLOSE)
                + " }}{%- endfor %}\n")
