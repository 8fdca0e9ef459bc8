"""OpenAI's harmony tool format (gpt-oss): a TypeScript-like `namespace functions`, calls on the commentary channel.

The tools go into the developer message as `# Tools` followed by one TypeScript type per function,
written as the vendor's chat template writes them (its quirks included: a nested object's fields
start on an indented new line, a `oneOf` joins its variants across lines); tests/data/
test_templates_gpt_oss.py renders the vendor's template against this for many schemas.

A call is a message of its own, addressed to the function:

    <|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>{ARGUMENTS}<|call|>

The `<|start|>assistant` header ends every prompt turn of the `gpt_oss` template, so a call
turn's text starts at ` to=`; several calls of one turn are written as one message each, the
header between them. A result is a message from the function back to the assistant, its text a
JSON string (the vendor's `tojson`):

    <|start|>functions.NAME to=assistant<|channel|>commentary<|message|>"RESULT"<|end|>

The vendor's template assumes one call per turn and names every result after it; lathe names
the k-th result after the k-th call, which is the same for one call. The harmony library (and the
model, when it generates) spells a call's header `<|channel|>commentary to=functions.NAME
<|constrain|>json`; the parser reads that spelling and the template's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from lathe.errors import LatheError

from .tool_calls import ToolCall, calls_from_data, function_of, json_or_none, load_calls, load_tools, split_results
from .tool_format import IN_SYSTEM, JINJA_CALL_VARS, ToolFormat, jinja_str

HEADER = "<|start|>assistant"  # opens every assistant message; the template's prompt turns end with it
TOOLS_HEADING = "# Tools\n\n## functions\n\nnamespace functions {\n\n"
TOOLS_END = "} // namespace functions"
SIMPLE_ARRAYS = {"string": "string[]", "number": "number[]", "integer": "number[]", "boolean": "boolean[]"}
SCALARS = {"number": "number", "integer": "number", "boolean": "boolean"}
NESTED_FIELD = "\n" + " " * 16  # the vendor's template writes this before each field type of a nested object
VARIANT_DEFAULT = " " * 20  # ... and this before a oneOf variant's default


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _tojson(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _tojson(value)


def ts_type(spec: Any) -> str:
    """A JSON-schema type as the TypeScript-like type the vendor's template writes (`render_typescript_type`)."""
    spec = _mapping(spec)
    kind = spec.get("type")
    nullable = " | null" if spec.get("nullable") else ""
    if kind == "array":
        items = spec.get("items")
        if not items:
            return "any[]" + nullable
        item_kind = _mapping(items).get("type")
        if isinstance(item_kind, str) and item_kind in SIMPLE_ARRAYS:
            return SIMPLE_ARRAYS[item_kind] + nullable
        inner = ts_type(items)
        return ("any[]" if inner == "object | object" or len(inner) > 50 else inner + "[]") + nullable
    if isinstance(kind, (list, tuple)) and kind:
        return " | ".join(map(str, kind))
    if spec.get("oneOf"):
        # The vendor's template means to write `any` for a union with an object variant, but sets its
        # flag inside a loop (jinja scoping), so it never does: neither does lathe.
        out = []
        for v in map(_mapping, spec["oneOf"]):
            text = ts_type(v) + ("// " + str(v["description"]) if v.get("description") else "")
            out.append(text + (VARIANT_DEFAULT + "// default: " + _tojson(v["default"]) if "default" in v else ""))
        return " | \n".join(out)
    if kind == "string":
        if spec.get("enum"):
            return '"' + '" | "'.join(map(str, spec["enum"])) + '"'
        return "string" + nullable
    if isinstance(kind, str) and kind in SCALARS:
        return SCALARS[kind]
    if kind == "object":
        properties = _mapping(spec.get("properties"))
        if not properties:
            return "object"
        required = spec.get("required") or []
        fields = [f"{name}{'' if name in required else '?'}: {NESTED_FIELD}{ts_type(prop)}"
                  for name, prop in properties.items()]
        return "{\n" + ", ".join(fields) + "}"
    return "any"


def _function_type(tool: Any) -> str:
    fn = _mapping(function_of(tool))
    if not fn.get("name"):
        raise LatheError(f"A tool schema needs a `name`; this one has none: {_tojson(tool)[:200]}")
    text = f"// {_text(fn.get('description', ''))}\ntype {fn['name']} = "
    params = _mapping(fn.get("parameters"))
    properties = _mapping(params.get("properties"))
    if not properties:
        return text + "() => any;\n\n"
    required = params.get("required") or []
    text += "(_: {\n"
    for name, spec in properties.items():
        spec = _mapping(spec)
        if spec.get("description"):
            text += f"// {spec['description']}\n"
        text += f"{name}{'' if name in required else '?'}: {ts_type(spec)}"
        if "default" in spec:
            default = spec["default"]
            if spec.get("enum"):
                text += ", // default: " + _text(default)
            elif spec.get("oneOf"):
                text += "// default: " + _text(default)
            else:
                text += ", // default: " + _tojson(default)
        text += ",\n"
    return text + "}) => any;\n\n"


# The same as jinja: the vendor's macro, with `param_spec.type` read through `spec.get` so bare
# schemas (no `type`) render as in Python.
JINJA_TS_MACRO = r"""{%- macro harmony_ts(spec) -%}
{%- set kind = spec.get('type') if spec is mapping else none -%}
{%- set nullable = ' | null' if spec is mapping and spec.get('nullable') else '' -%}
{%- if kind == 'array' -%}
{%- set items = spec.get('items') -%}
{%- if not items -%}{{- 'any[]' ~ nullable -}}
{%- else -%}
{%- set item_kind = items.get('type') if items is mapping else none -%}
{%- if item_kind is string and item_kind in SIMPLE_ARRAYS -%}{{- SIMPLE_ARRAYS[item_kind] ~ nullable -}}
{%- else -%}
{%- set inner = harmony_ts(items) -%}
{{- ('any[]' if inner == 'object | object' or inner | length > 50 else inner ~ '[]') ~ nullable -}}
{%- endif -%}
{%- endif -%}
{%- elif kind is iterable and kind is not string and kind is not mapping and kind | length > 0 -%}
{{- kind | join(' | ') -}}
{%- elif spec is mapping and spec.get('oneOf') -%}
{%- for v in spec.get('oneOf') -%}
{%- if not loop.first -%}{{- ' | \n' -}}{%- endif -%}
{{- harmony_ts(v) -}}
{%- if v.get('description') -%}{{- '// ' ~ v.get('description') -}}{%- endif -%}
{%- if 'default' in v -%}{{- VARIANT_DEFAULT ~ '// default: ' ~ (v.get('default') | tojson) -}}{%- endif -%}
{%- endfor -%}
{%- elif kind == 'string' -%}
{%- if spec.get('enum') -%}{{- '"' ~ (spec.get('enum') | join('" | "')) ~ '"' -}}
{%- else -%}{{- 'string' ~ nullable -}}{%- endif -%}
{%- elif kind is string and kind in SCALARS -%}{{- SCALARS[kind] -}}
{%- elif kind == 'object' -%}
{%- set properties = spec.get('properties') if spec.get('properties') is mapping else {} -%}
{%- if not properties -%}{{- 'object' -}}
{%- else -%}
{%- set required = spec.get('required') or [] -%}
{{- '{\n' -}}
{%- for name, prop in properties.items() -%}
{%- if not loop.first -%}{{- ', ' -}}{%- endif -%}
{{- name ~ ('' if name in required else '?') ~ ': ' ~ NESTED_FIELD ~ harmony_ts(prop) -}}
{%- endfor -%}
{{- '}' -}}
{%- endif -%}
{%- else -%}{{- 'any' -}}
{%- endif -%}
{%- endmacro -%}"""


class HarmonyTools(ToolFormat):
    """gpt-oss: tools as `namespace functions` after the developer message's instructions, calls on commentary."""

    name = "gpt_oss"
    placement = IN_SYSTEM
    CALL = re.compile(
        r"to=functions\.([^\s<]+)(?:\s|<\|channel\|>commentary|<\|constrain\|>|json)*<\|message\|>"
        r"(.*?)(?:<\|call\|>|<\|end\|>|\Z)",
        re.DOTALL,
    )

    def render_tools(self, tools_json: str) -> str:
        return TOOLS_HEADING + "".join(map(_function_type, load_tools(tools_json))) + TOOLS_END

    def system_with_tools(self, system: str, tools_text: str) -> str:
        # The instructions (the gpt_oss template's `system_prompt`) end with a blank line already.
        return system + tools_text

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        return HEADER.join(f" to=functions.{c.name}<|channel|>commentary json<|message|>{c.arguments}<|call|>"
                           for c in calls)

    def render_results(self, results: str, calls_json: str = "") -> str:
        if not calls_json:
            raise LatheError("The harmony format names the function each tool result comes from, but this "
                             "observation turn follows no tool call (function turn). Fix the row.")
        calls = load_calls(calls_json)
        return "".join(
            f"<|start|>functions.{calls[min(k, len(calls) - 1)].name} to=assistant<|channel|>commentary<|message|>"
            f"{_tojson(result)}<|end|>"
            for k, result in enumerate(split_results(results))
        )

    def parse_data(self, text: str) -> list[ToolCall] | None:
        calls = []
        for name, body in self.CALL.findall(text):
            arguments = json_or_none(body.strip())
            parsed = calls_from_data({"name": name, "arguments": arguments}) if isinstance(arguments, dict) else None
            if parsed is None:
                return None
            calls += parsed
        return calls or None

    def jinja_tools(self) -> str:
        return (
            "{%- set SIMPLE_ARRAYS = " + _tojson(SIMPLE_ARRAYS) + " %}\n"
            "{%- set SCALARS = " + _tojson(SCALARS) + " %}\n"
            "{%- set NESTED_FIELD = " + jinja_str(NESTED_FIELD) + " %}\n"
            "{%- set VARIANT_DEFAULT = " + jinja_str(VARIANT_DEFAULT) + " %}\n"
            + JINJA_TS_MACRO + "\n"
            "{{- " + jinja_str(TOOLS_HEADING) + " }}\n"
            "{%- for tool in tools %}\n"
            "{%- set fn = tool.function if tool.function is defined else tool %}\n"
            "{%- set params = fn.parameters if fn.parameters is defined and fn.parameters is mapping else {} %}\n"
            "{%- set properties = params.get('properties') if params.get('properties') is mapping else {} %}\n"
            "{%- set description = fn.description if fn.description is defined else '' %}\n"
            "{{- '// ' ~ (description if description is string else description | tojson) ~ '\\ntype ' ~ fn.name"
            " ~ ' = ' }}\n"
            "{%- if not properties %}{{- '() => any;\\n\\n' }}\n"
            "{%- else %}\n"
            "{%- set required = params.get('required') or [] %}\n"
            "{{- '(_: {\\n' }}\n"
            "{%- for name, spec in properties.items() %}\n"
            "{%- if spec.get('description') %}{{- '// ' ~ spec.get('description') ~ '\\n' }}{%- endif %}\n"
            "{{- name ~ ('' if name in required else '?') ~ ': ' ~ harmony_ts(spec) }}\n"
            "{%- if 'default' in spec %}\n"
            "{%- set default = spec.get('default') %}\n"
            "{%- set default_text = default if default is string else default | tojson %}\n"
            "{%- if spec.get('enum') %}{{- ', // default: ' ~ default_text }}\n"
            "{%- elif spec.get('oneOf') %}{{- '// default: ' ~ default_text }}\n"
            "{%- else %}{{- ', // default: ' ~ (default | tojson) }}{%- endif %}\n"
            "{%- endif %}\n"
            "{{- ',\\n' }}\n"
            "{%- endfor %}\n"
            "{{- '}) => any;\\n\\n' }}\n"
            "{%- endif %}\n"
            "{%- endfor %}\n"
            "{{- " + jinja_str(TOOLS_END) + " }}\n"
        )

    def jinja_system_with_tools(self) -> str:
        return "{%- set system = system ~ tools_text %}\n"

    def jinja_calls(self) -> str:
        return (
            "{%- for call in message.tool_calls %}\n" + JINJA_CALL_VARS +
            "{%- if not loop.first %}{{- " + jinja_str(HEADER) + " }}{%- endif %}\n"
            "{{- ' to=functions.' ~ fn.name ~ '<|channel|>commentary json<|message|>' ~ args ~ '<|call|>' }}\n"
            "{%- endfor %}\n"
        )

    def jinja_results(self) -> str:
        # Each result is named after the call it answers: the latest assistant message with calls.
        return (
            "{%- set ns_calls = namespace(calls=[]) %}\n"
            "{%- for earlier in loop_messages[:loop.index0] %}"
            "{%- if earlier.role == 'assistant' and earlier.tool_calls is defined and earlier.tool_calls %}"
            "{%- set ns_calls.calls = earlier.tool_calls %}{%- endif %}{%- endfor %}\n"
            "{%- if not ns_calls.calls %}"
            "{{- raise_exception('A tool result in the harmony format must follow a tool call.') }}{%- endif %}\n"
            "{%- for result in results %}\n"
            "{%- set call = ns_calls.calls[[loop.index0, ns_calls.calls | length - 1] | min] %}\n"
            "{%- set fn = call.function if call.function is defined else call %}\n"
            "{{- '<|start|>functions.' ~ fn.name ~ ' to=assistant<|channel|>commentary<|message|>' ~ (result | tojson)"
            " ~ '<|end|>' }}\n"
            "{%- endfor %}\n"
        )
