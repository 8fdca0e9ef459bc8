"""Gemma 4's tool spelling: `<|tool>declaration:...<tool|>` schemas and `<|tool_call>call:NAME{...}<tool_call|>` calls.

Gemma 4 writes neither schemas nor arguments as JSON but in its own object syntax: keys bare,
strings between `<|"|>` delimiters (nothing escaped inside), booleans `true`/`false`, numbers as
they are, lists `[a,b]`, objects `{k:v}` with keys in jinja's `dictsort` order (case-insensitive).
Everything here is written as the vendor's chat template writes it (the revision in
`shared/tokenizers/gemma-4-31b-it-TEMPLATE-ONLY`), quirks included, because the model learned that
text: a null value is written `None` (jinja's text for Python's None), and a nested OBJECT schema
without a description gets `{,properties:...}`. The parser reads `None` and `null` alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from lathe.errors import LatheError

from .tool_calls import ToolCall, function_of, load_tools, split_results
from .tool_format import ToolFormat
from .tools_xml import arguments_of, parsed_calls

QUOTE = '<|"|>'
STANDARD_KEYS = ("description", "type", "properties", "required", "nullable")  # not written as parameters
BARE_KEY_STOP = ":,{}[]"  # characters a bare key cannot hold: the parser would end the key there


def _get(mapping: Any, key: str) -> Any:
    """`mapping[key]` as jinja reads it: None where jinja would give an undefined value."""
    return mapping.get(key) if isinstance(mapping, dict) else None


def _upper(value: Any) -> str:
    """jinja's `value | upper` (an undefined value gives "")."""
    return "" if value is None else str(value).upper()


def _dictsort(mapping: dict) -> list[tuple[Any, Any]]:
    """jinja's `dictsort`: items by key, case-insensitive, ties in insertion order."""
    return sorted(mapping.items(), key=lambda kv: kv[0].lower() if isinstance(kv[0], str) else kv[0])


def _quoted_list(items: Any) -> str:
    return "[" + ",".join(f"{QUOTE}{item}{QUOTE}" for item in items or []) + "]"


def gemma_value(value: Any, quote_keys: bool = True) -> str:
    """A value in Gemma 4's syntax (the vendor's `format_argument`); `quote_keys` puts object keys in `<|"|>`."""
    if isinstance(value, str):
        return QUOTE + value + QUOTE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        items = ((f"{QUOTE}{k}{QUOTE}" if quote_keys else str(k)) + ":" + gemma_value(v, quote_keys)
                 for k, v in _dictsort(value))
        return "{" + ",".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(gemma_value(v, quote_keys) for v in value) + "]"
    return str(value)  # numbers; None as "None", as jinja writes it


# --- tool declarations ------------------------------------------------------------------------------


def _property(key: str, spec: Any) -> str:
    """One parameter's schema (the vendor's `format_parameters` body)."""
    text, comma = f"{key}:{{", False

    def sep() -> str:
        nonlocal comma
        was, comma = comma, True
        return "," if was else ""

    if _get(spec, "description"):
        text += f"description:{QUOTE}{spec['description']}{QUOTE}"
        comma = True
    if _get(spec, "nullable"):
        text += sep() + "nullable:true"
    kind = _upper(_get(spec, "type"))
    if kind == "STRING":
        if _get(spec, "enum"):
            text += sep() + "enum:" + gemma_value(spec["enum"])
    elif kind == "OBJECT":
        props = _get(spec, "properties")
        # The vendor writes the comma unconditionally here and does not count it for the `type` below.
        text += ",properties:{" + _properties(props if isinstance(props, dict) else spec) + "}"
        if _get(spec, "required"):
            text += ",required:" + _quoted_list(spec["required"])
    elif kind == "ARRAY":
        items = _get(spec, "items")
        if isinstance(items, dict) and items:
            parts = []
            for item_key, item_value in _dictsort(items):
                if item_value is None:
                    continue
                if item_key == "properties":
                    parts.append("properties:{" + (_properties(item_value) if isinstance(item_value, dict) else "") + "}")
                elif item_key == "required":
                    parts.append("required:" + _quoted_list(item_value))
                elif item_key == "type":
                    upper = item_value.upper() if isinstance(item_value, str) else [_upper(t) for t in item_value]
                    parts.append("type:" + gemma_value(upper))
                else:
                    parts.append(f"{item_key}:" + gemma_value(item_value))
            text += ",items:{" + ",".join(parts) + "}"
    return text + sep() + f"type:{QUOTE}{kind}{QUOTE}}}"


def _properties(properties: dict) -> str:
    return ",".join(_property(k, v) for k, v in _dictsort(properties) if k not in STANDARD_KEYS)


def declaration(tool: Any) -> str:
    """One tool as the vendor's `format_function_declaration` writes it."""
    fn = function_of(tool)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise LatheError(f"A Gemma 4 tool schema must be a JSON object with a `name`, got {str(fn)[:200]!r}.")
    text = f"declaration:{fn['name']}{{description:{QUOTE}{fn.get('description') or ''}{QUOTE}"
    params = fn.get("parameters")
    if params:
        text += ",parameters:{"
        if _get(params, "properties"):
            text += "properties:{" + _properties(params["properties"]) + "},"
        if _get(params, "required"):
            text += "required:" + _quoted_list(params["required"]) + ","
        if _get(params, "type"):
            text += f"type:{QUOTE}{_upper(params['type'])}{QUOTE}}}"
    if "response" in fn:
        response = fn["response"]
        text += ",response:{"
        if _get(response, "description"):
            text += f"description:{QUOTE}{response['description']}{QUOTE},"
        if _upper(_get(response, "type")) == "OBJECT":
            text += f"type:{QUOTE}OBJECT{QUOTE}}}"
    return (text + "}").strip()


def _check_writable(name: str, value: Any) -> None:
    """Refuse what Gemma 4's spelling cannot carry: a string holding its delimiter, a name holding its syntax."""
    if isinstance(value, str) and QUOTE in value:
        raise LatheError(
            f"The call of `{name}` has a value holding {QUOTE}, Gemma 4's string delimiter, which its spelling "
            "cannot escape. Fix the row's function turn."
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if any(c in key for c in BARE_KEY_STOP) or QUOTE in key:
                raise LatheError(
                    f"The call of `{name}` has an argument named {key!r}; Gemma 4 writes argument names bare, so "
                    f"a name cannot hold {QUOTE} or any of {BARE_KEY_STOP!r}. Rename the argument in the row."
                )
            _check_writable(name, item)
    if isinstance(value, list):
        for item in value:
            _check_writable(name, item)


# --- reading calls back -----------------------------------------------------------------------------


class _Reader:
    """A recursive-descent reader of Gemma 4 values; ValueError on anything else."""

    NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
    WORDS: ClassVar[dict[str, Any]] = {"true": True, "false": False, "null": None, "None": None}
    WORD = re.compile(r"true|false|null|None")

    def __init__(self, text: str, pos: int):
        self.text, self.pos = text, pos

    def expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise ValueError(f"expected {token!r} at {self.pos}")
        self.pos += len(token)

    def value(self) -> Any:
        text, pos = self.text, self.pos
        if text.startswith(QUOTE, pos):
            end = text.find(QUOTE, pos + len(QUOTE))
            if end < 0:
                raise ValueError("unterminated string")
            self.pos = end + len(QUOTE)
            return text[pos + len(QUOTE):end]
        if text.startswith("{", pos):
            return self.mapping()
        if text.startswith("[", pos):
            self.pos += 1
            items: list[Any] = []
            while not text.startswith("]", self.pos):
                if items:
                    self.expect(",")
                items.append(self.value())
            self.pos += 1
            return items
        for pattern, convert in ((self.NUMBER, json.loads), (self.WORD, self.WORDS.__getitem__)):
            match = pattern.match(text, pos)
            if match:
                self.pos = match.end()
                return convert(match.group())
        raise ValueError(f"no value at {pos}")

    def key(self) -> str:
        if self.text.startswith(QUOTE, self.pos):
            return self.value()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in BARE_KEY_STOP:
            self.pos += 1
        return self.text[start:self.pos]

    def mapping(self) -> dict:
        self.expect("{")
        out: dict = {}
        while not self.text.startswith("}", self.pos):
            if out:
                self.expect(",")
            key = self.key()
            self.expect(":")
            out[key] = self.value()
        self.pos += 1
        return out


class Gemma4Tools(ToolFormat):
    """Gemma 4: declarations right after the system text in the system turn, calls back to back in a model
    turn, one `tool` turn per result.

    What the spelling cannot carry: a string holding `<|"|>` (strings are not escaped) and an
    argument name holding one of `:,{}[]` (names are bare); lathe refuses both when writing.
    Arguments come back with their keys in `dictsort` order, as they were written, so a parsed
    call equals the call written when its keys were in that order and holds the same data always.
    Results: the vendor writes each OpenAI `tool` message as its own `<|turn>tool` turn (trimmed);
    so does lathe (its `<|tool_response>` spelling is only for a non-OpenAI `tool_responses` field).
    """

    name = "gemma4"
    CALL_OPEN = "<|tool_call>call:"
    CALL_CLOSE = "}<tool_call|>"
    RESULT_JOIN = "<turn|>\n<|turn>tool\n"  # the observation slot writes the first turn's markup around them
    NAME = re.compile(r"[^\s{}<>]+")

    def render_tools(self, tools_json: str) -> str:
        return "".join(f"<|tool>{declaration(t)}<tool|>" for t in load_tools(tools_json))

    def system_with_tools(self, system: str, tools_text: str) -> str:
        return system + tools_text  # the vendor writes the declarations straight after the system text

    def jinja_system_with_tools(self) -> str:
        return "{%- set system = system ~ tools_text %}\n"

    @staticmethod
    def _call(call: ToolCall) -> str:
        args = arguments_of(call)
        _check_writable(call.name, args)
        body = ",".join(f"{k}:{gemma_value(v, quote_keys=False)}" for k, v in _dictsort(args))
        return f"<|tool_call>call:{call.name}{{{body}}}<tool_call|>"

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        return "".join(map(self._call, calls))

    def render_results(self, results: str, calls_json: str = "") -> str:
        return self.RESULT_JOIN.join(r.strip() for r in split_results(results))

    def _read_call(self, text: str, start: int) -> ToolCall | None:
        brace = text.find("{", start)
        name = text[start:brace] if brace >= 0 else ""
        if not self.NAME.fullmatch(name):
            return None
        reader = _Reader(text, brace)
        try:
            arguments = reader.mapping()
        except (ValueError, RecursionError):
            return None
        if not text.startswith("<tool_call|>", reader.pos):
            return None
        return ToolCall(name, json.dumps(arguments, ensure_ascii=False))

    def parse_data(self, text: str) -> list[ToolCall] | None:
        starts = [m.end() for m in re.finditer(re.escape(self.CALL_OPEN), text)]
        blocks = [self._read_call(text, start) for start in starts]
        return parsed_calls(blocks, text.count("<|tool_call>"))

    # --- jinja: the same text --------------------------------------------------------------------------

    JINJA_MACROS = (
        "{%- macro gemma_value(value, quote_keys) %}"
        "{%- if value is string %}{{- '<|\"|>' ~ value ~ '<|\"|>' }}"
        "{%- elif value is boolean %}{{- 'true' if value else 'false' }}"
        "{%- elif value is mapping %}{{- '{' }}{%- for k, v in value | dictsort %}"
        "{%- if not loop.first %}{{- ',' }}{%- endif %}"
        "{{- ('<|\"|>' ~ k ~ '<|\"|>' if quote_keys else k) ~ ':' ~ gemma_value(v, quote_keys) }}{%- endfor %}"
        "{{- '}' }}"
        "{%- elif value is sequence %}{{- '[' }}{%- for v in value %}{%- if not loop.first %}{{- ',' }}{%- endif %}"
        "{{- gemma_value(v, quote_keys) }}{%- endfor %}{{- ']' }}"
        "{%- else %}{{- value }}{%- endif %}"
        "{%- endmacro %}\n"
    )

    def jinja_tools(self) -> str:
        quoted_list = (
            "{{- '[' }}{%- for item in {0} %}{%- if not loop.first %}{{- ',' }}{%- endif %}"
            "{{- '<|\"|>' ~ item ~ '<|\"|>' }}{%- endfor %}{{- ']' }}"
        )
        return (
            self.JINJA_MACROS +
            "{%- macro gemma_properties(props) %}"
            "{%- for key, spec in props | dictsort if key not in " + json.dumps(list(STANDARD_KEYS)) + " %}"
            "{%- if not loop.first %}{{- ',' }}{%- endif %}"
            "{%- set ns = namespace(comma=false) %}"
            "{{- key ~ ':{' }}"
            "{%- if spec.description %}{{- 'description:<|\"|>' ~ spec.description ~ '<|\"|>' }}"
            "{%- set ns.comma = true %}{%- endif %}"
            "{%- if spec.nullable %}{{- ',' if ns.comma else '' }}{%- set ns.comma = true %}"
            "{{- 'nullable:true' }}{%- endif %}"
            "{%- set kind = spec.type | upper %}"
            "{%- if kind == 'STRING' %}"
            "{%- if spec.enum %}{{- ',' if ns.comma else '' }}{%- set ns.comma = true %}"
            "{{- 'enum:' ~ gemma_value(spec.enum, true) }}{%- endif %}"
            "{%- elif kind == 'OBJECT' %}"
            "{{- ',properties:{' ~ gemma_properties(spec.properties if spec.properties is mapping else spec) ~ '}' }}"
            "{%- if spec.required %}{{- ',required:' }}" + quoted_list.replace("{0}", "spec.required") + "{%- endif %}"
            "{%- elif kind == 'ARRAY' %}"
            "{%- if spec['items'] is mapping and spec['items'] %}{{- ',items:{' }}"
            "{%- for item_key, item_value in spec['items'] | dictsort if item_value is not none %}"
            "{%- if not loop.first %}{{- ',' }}{%- endif %}"
            "{%- if item_key == 'properties' %}"
            "{{- 'properties:{' ~ (gemma_properties(item_value) if item_value is mapping else '') ~ '}' }}"
            "{%- elif item_key == 'required' %}{{- 'required:' }}"
            + quoted_list.replace("{0}", "item_value") +
            "{%- elif item_key == 'type' %}"
            "{{- 'type:' ~ gemma_value(item_value | upper if item_value is string "
            "else item_value | map('upper') | list, true) }}"
            "{%- else %}{{- item_key ~ ':' ~ gemma_value(item_value, true) }}{%- endif %}"
            "{%- endfor %}{{- '}' }}{%- endif %}"
            "{%- endif %}"
            "{{- (',' if ns.comma else '') ~ 'type:<|\"|>' ~ kind ~ '<|\"|>}' }}"
            "{%- endfor %}"
            "{%- endmacro %}\n"
            "{%- for tool in tools %}\n"
            "{%- set fn = tool.function if tool.function is defined else tool %}\n"
            "{%- set decl %}"
            "{{- 'declaration:' ~ fn.name ~ '{description:<|\"|>' ~ (fn.description or '') ~ '<|\"|>' }}"
            "{%- set params = fn.parameters %}"
            "{%- if params %}{{- ',parameters:{' }}"
            "{%- if params.properties %}{{- 'properties:{' ~ gemma_properties(params.properties) ~ '},' }}{%- endif %}"
            "{%- if params.required %}{{- 'required:' }}" + quoted_list.replace("{0}", "params.required") +
            "{{- ',' }}{%- endif %}"
            "{%- if params.type %}{{- 'type:<|\"|>' ~ (params.type | upper) ~ '<|\"|>}' }}{%- endif %}"
            "{%- endif %}"
            "{%- if 'response' in fn %}{{- ',response:{' }}"
            "{%- if fn.response.description %}{{- 'description:<|\"|>' ~ fn.response.description ~ '<|\"|>,' }}"
            "{%- endif %}"
            "{%- if (fn.response.type | upper) == 'OBJECT' %}{{- 'type:<|\"|>OBJECT<|\"|>}' }}{%- endif %}"
            "{%- endif %}"
            "{{- '}' }}"
            "{%- endset %}\n"
            "{{- '<|tool>' ~ (decl | trim) ~ '<tool|>' }}\n"
            "{%- endfor %}\n"
        )

    def jinja_calls(self) -> str:
        return (
            self.JINJA_MACROS +
            "{%- for call in message.tool_calls %}\n"
            "{%- set fn = call.function if call.function is defined else call %}\n"
            "{%- set args = fn.arguments if fn.arguments is defined else {} %}\n"
            "{%- if args is string %}{{- raise_exception('Tool-call arguments must be a mapping for this tool format.') }}"
            "{%- endif %}\n"
            "{{- '<|tool_call>call:' ~ fn.name ~ '{' }}"
            "{%- for key, value in args | dictsort %}{%- if not loop.first %}{{- ',' }}{%- endif %}"
            "{{- key ~ ':' ~ gemma_value(value, false) }}{%- endfor %}"
            "{{- '}<tool_call|>' }}\n"
            "{%- endfor %}\n"
        )

    def jinja_results(self) -> str:
        return (
            "{%- for result in results %}{%- if not loop.first %}{{- " + json.dumps(self.RESULT_JOIN) + " }}"
            "{%- endif %}{{- result | trim }}{%- endfor %}\n"
        )
