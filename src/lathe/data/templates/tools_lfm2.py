"""Liquid LFM2's tool spelling: a JSON tool list in the system prompt, Pythonic calls, wrapped results.

LFM2 reads its tools as `List of tools: <|tool_list_start|>[...]<|tool_list_end|>` after the
system text and writes calls as a Python list of calls with keyword arguments,
`<|tool_call_start|>[get_weather(city="Paris"), now()]<|tool_call_end|>` (the model card's
spelling). Its chat template writes an assistant message's content as it is, so the call text is
the format's, not the template's; the tool list and the `<|tool_response_start|>` results are the
template's (`shared/tokenizers/lfm2-8b-a1b-TEMPLATE-ONLY`).

Reading calls back never evaluates code: the text is scanned for `name(key=value, ...)` and each
value is read with `ast.literal_eval`, accepting JSON's `true`/`false`/`null` as well as Python's.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from typing import Any

from lathe.errors import LatheError

from .tool_calls import ToolCall, function_of, load_tools, split_results
from .tool_format import JINJA_TOOL_VARS, ToolFormat, jinja_str
from .tools_xml import arguments_of

JSON_NAMES = {"true": True, "false": False, "null": None}


def py_value(value: Any) -> str:
    """A JSON value as a Python literal: JSON text, with `True`/`False`/`None` for JSON's names.

    A JSON string's text is a Python string literal of the same value (JSON's escapes are a subset
    of Python's), and JSON numbers are Python numbers, so only the three names differ.
    """
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "None"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {py_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(py_value, value)) + "]"
    return json.dumps(value, ensure_ascii=False)


class _JsonNames(ast.NodeTransformer):
    """Turns the names `true`, `false` and `null` into constants, so `literal_eval` reads JSON-style values."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in JSON_NAMES:
            return ast.copy_location(ast.Constant(JSON_NAMES[node.id]), node)
        return node


def read_literal(text: str) -> Any:
    """A Python (or JSON-named) literal; ValueError when `text` is anything else (never evaluated)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(str(err)) from err
    return ast.literal_eval(_JsonNames().visit(tree))


def literal_end(text: str, pos: int) -> int:
    """Where the literal starting at `pos` ends: the first `,` or closing bracket outside strings and brackets."""
    depth, i = 0, pos
    while i < len(text):
        c = text[i]
        if c in "\"'":
            quote = text[i:i + 3] if text[i:i + 3] in ('"""', "'''") else c
            i += len(quote)
            while i < len(text) and not text.startswith(quote, i):
                i += 2 if text[i] == "\\" else 1
            if i >= len(text):
                raise ValueError("unterminated string")
            i += len(quote)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                return i
            depth -= 1
        elif c == "," and depth == 0:
            return i
        i += 1
    raise ValueError("unterminated call")


class Lfm2Tools(ToolFormat):
    """LFM2: the tool schemas as one JSON list after the system text (a newline between), Pythonic calls,
    each result in `<|tool_response_start|>...<|tool_response_end|>` in its own `tool` turn.

    The tool list holds the bare function schemas, as LFM2's model card shows them (the template
    writes whatever a caller passes; OpenAI-style callers pass `{"type": "function", ...}` wrappers).
    Every JSON value round-trips: strings are written as JSON string literals (valid Python),
    booleans and null as `True`/`False`/`None`. A tool or argument name must be a run of characters
    other than spaces and `()[],=` (else lathe refuses to write it); Python identifiers are what the
    model has seen.
    """

    name = "lfm2"
    HEADER = "List of tools: <|tool_list_start|>["
    FOOTER = "]<|tool_list_end|>"
    CALLS_OPEN = "<|tool_call_start|>"
    CALLS_CLOSE = "<|tool_call_end|>"
    RESULT = "<|tool_response_start|>{}<|tool_response_end|>"
    RESULT_JOIN = "<|im_end|>\n<|im_start|>tool\n"  # one tool turn per result, as the template writes them
    NAME = re.compile(r"[^\s()\[\],=]+")

    def render_tools(self, tools_json: str) -> str:
        body = ", ".join(json.dumps(function_of(t), ensure_ascii=False) for t in load_tools(tools_json))
        return self.HEADER + body + self.FOOTER

    def system_with_tools(self, system: str, tools_text: str) -> str:
        return f"{system}\n{tools_text}" if system else tools_text

    def jinja_system_with_tools(self) -> str:
        return "{%- set system = (system ~ '\\n' ~ tools_text) if system else tools_text %}\n"

    def _call(self, call: ToolCall) -> str:
        args = arguments_of(call)
        for name in (call.name, *args):
            if not self.NAME.fullmatch(name):
                raise LatheError(
                    f"The call of `{call.name}` names {name!r}; LFM2 writes calls as Python `name(key=value)`, so a "
                    "tool or argument name must be non-empty without spaces or any of ()[],=. Rename it in the row."
                )
        return f"{call.name}(" + ", ".join(f"{k}={py_value(v)}" for k, v in args.items()) + ")"

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        return self.CALLS_OPEN + "[" + ", ".join(map(self._call, calls)) + "]" + self.CALLS_CLOSE

    def render_results(self, results: str, calls_json: str = "") -> str:
        return self.RESULT_JOIN.join(self.RESULT.format(r) for r in split_results(results))

    def _read_calls(self, body: str) -> list[ToolCall]:
        """The calls of one block (`[f(a=1), g()]` or a bare `f(a=1)`); ValueError on anything else."""
        text = body.strip()
        listed = text.startswith("[")
        if listed:
            if not text.endswith("]"):
                raise ValueError("unclosed list")
            text = text[1:-1]
        calls, pos = [], 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos == len(text) and listed and not calls:
                raise ValueError("no calls")
            name = self.NAME.match(text, pos)
            if not name or not text.startswith("(", name.end()):
                raise ValueError(f"no call at {pos}")
            pos, args = name.end() + 1, {}
            while True:
                while pos < len(text) and text[pos].isspace():
                    pos += 1
                if text.startswith(")", pos):
                    pos += 1
                    break
                key = self.NAME.match(text, pos)
                if not key or not text.startswith("=", key.end()):
                    raise ValueError(f"no keyword argument at {pos}")
                end = literal_end(text, key.end() + 1)
                args[key.group()] = read_literal(text[key.end() + 1:end])
                pos = end + 1 if text.startswith(",", end) else end
            calls.append(ToolCall(name.group(), json.dumps(args, ensure_ascii=False)))
            rest = text[pos:].lstrip()
            if not rest:
                return calls
            if not (listed and rest.startswith(",")):
                raise ValueError(f"unexpected text after a call: {rest[:40]!r}")
            pos = len(text) - len(rest) + 1

    def parse_data(self, text: str) -> list[ToolCall] | None:
        start = text.find(self.CALLS_OPEN)
        end = text.find(self.CALLS_CLOSE, start + 1)
        if start < 0 or end < 0:
            return None
        try:
            return self._read_calls(text[start + len(self.CALLS_OPEN):end]) or None
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None

    # --- jinja: the same text --------------------------------------------------------------------------

    def jinja_tools(self) -> str:
        return (
            "{{- " + jinja_str(self.HEADER) + " }}\n"
            "{%- for tool in tools %}\n" + JINJA_TOOL_VARS +
            "{%- if not loop.first %}{{- ', ' }}{%- endif %}{{- fn | tojson }}\n"
            "{%- endfor %}\n"
            "{{- " + jinja_str(self.FOOTER) + " }}\n"
        )

    def jinja_calls(self) -> str:
        return (
            "{%- macro py_value(value) %}"
            "{%- if value is boolean %}{{- 'True' if value else 'False' }}"
            "{%- elif value is none %}{{- 'None' }}"
            "{%- elif value is mapping %}{{- '{' }}{%- for k, v in value.items() %}"
            "{%- if not loop.first %}{{- ', ' }}{%- endif %}{{- (k | string | tojson) ~ ': ' ~ py_value(v) }}"
            "{%- endfor %}{{- '}' }}"
            "{%- elif value is string %}{{- value | tojson }}"
            "{%- elif value is sequence %}{{- '[' }}{%- for v in value %}{%- if not loop.first %}{{- ', ' }}"
            "{%- endif %}{{- py_value(v) }}{%- endfor %}{{- ']' }}"
            "{%- else %}{{- value | tojson }}{%- endif %}"
            "{%- endmacro %}\n"
            "{{- " + jinja_str(self.CALLS_OPEN + "[") + " }}\n"
            "{%- for call in message.tool_calls %}\n"
            "{%- set fn = call.function if call.function is defined else call %}\n"
            "{%- set args = fn.arguments if fn.arguments is defined else {} %}\n"
            "{%- if args is string %}{{- raise_exception('Tool-call arguments must be a mapping for this tool format.') }}"
            "{%- endif %}\n"
            "{%- if not loop.first %}{{- ', ' }}{%- endif %}\n"
            "{{- fn.name ~ '(' }}{%- for key, value in args.items() %}{%- if not loop.first %}{{- ', ' }}{%- endif %}"
            "{{- key ~ '=' ~ py_value(value) }}{%- endfor %}{{- ')' }}\n"
            "{%- endfor %}\n"
            "{{- " + jinja_str("]" + self.CALLS_CLOSE) + " }}\n"
        )

    def jinja_results(self) -> str:
        return (
            "{%- for result in results %}{%- if not loop.first %}{{- " + jinja_str(self.RESULT_JOIN) + " }}"
            "{%- endif %}{{- " + jinja_str(self.RESULT.split("{}")[0]) + " ~ result ~ "
            + jinja_str(self.RESULT.split("{}")[1]) + " }}{%- endfor %}\n"
        )
