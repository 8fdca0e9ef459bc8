"""Tool formats whose calls are XML tags with one element per argument (Qwen3.5, GLM-4.5/4.6/4.7, MiniMax-M2, Seed-OSS).

The newer families stopped writing a call as one JSON object: each argument is its own tagged
element, a string value written bare (no quotes, no escapes, newlines kept), any other value as
JSON. Reading a call back therefore parses each value as JSON where it is JSON and keeps it as a
string otherwise, as the vendors' own parsers do without a schema. That is ambiguous for a
string that looks like JSON (`"3"` comes back as 3): the spelling, not lathe, loses the type.

The vendors' templates differ from these formats only where a value is neither a string nor a
number/object/list: Qwen3.5's and Seed-OSS's templates write booleans and null with Python's
`str` (`True`, `None`; Seed-OSS also writes objects as Python reprs), which no parser reads back
as JSON; lathe writes JSON there, as LLaMA-Factory does, so a parsed call equals the call written.
Each tools preamble, call and result layout is the vendor template's (tests/data/test_tools_xml.py
renders the vendors' jinja files against these).
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Sequence

from lathe.errors import LatheError

from .tool_calls import ToolCall, function_of, load_tools, split_results, wrap_function
from .tool_format import (
    BEFORE_SYSTEM,
    IN_SYSTEM,
    JINJA_TOOL_VARS,
    JsonToolList,
    ToolFormat,
    ToolResponseResults,
    jinja_str,
)

# --- argument values --------------------------------------------------------------------------------


def value_text(value: Any) -> str:
    """An argument value as the XML formats write it: a string bare, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def read_value(text: str) -> Any:
    """An argument value read back: JSON where the (stripped) text is JSON, else the text itself."""
    try:
        return json.loads(text.strip())
    except json.JSONDecodeError:
        return text


def arguments_of(call: ToolCall) -> dict:
    """The arguments of a call as a mapping: XML formats write one element per key, so nothing else fits."""
    args = call.args
    if not isinstance(args, dict):
        raise LatheError(
            f"The call of `{call.name}` has arguments {call.arguments[:200]}, not a JSON object; this tool format "
            "writes one element per argument name. Fix the row's function turn to give an object."
        )
    return args


def xml_calls(calls: Sequence[ToolCall], head: str, arg: str, tail: str, join: str) -> str:
    """The calls in one XML spelling: `head` ({name}) and `tail` around each call, `arg` ({key}, {value})
    for each argument, the calls joined by `join`. The formats differ only in these strings."""
    return join.join(
        head.format(name=c.name)
        + "".join(arg.format(key=k, value=value_text(v)) for k, v in arguments_of(c).items())
        + tail
        for c in calls
    )


def make_call(name: str, pairs: Iterable[tuple[str, Any]]) -> ToolCall:
    """A ToolCall from a name and (key, parsed value) pairs, arguments as compact JSON text."""
    return ToolCall(name, json.dumps(dict(pairs), ensure_ascii=False))


def parsed_calls(blocks: list[Any], opened: int) -> list[ToolCall] | None:
    """The calls read from matched blocks; None when there are none or some opened call did not match."""
    calls = [c for c in blocks if c is not None]
    return calls if calls and len(calls) == opened == len(blocks) else None


# Jinja pieces shared by the formats: a loop over the calls setting `fn`, and each value's text.
JINJA_CALL_LOOP = (
    "{%- for call in message.tool_calls %}\n"
    "{%- set fn = call.function if call.function is defined else call %}\n"
    "{%- set args = fn.arguments if fn.arguments is defined else {} %}\n"
    "{%- if args is string %}{{- raise_exception('Tool-call arguments must be a mapping for this tool format.') }}"
    "{%- endif %}\n"
)
JINJA_VALUE = "(value if value is string else value | tojson)"


class XmlResults(ToolResponseResults, ToolFormat):
    """Results in `<tool_response>` pairs (the Qwen spelling), which Qwen3.5 and GLM-4.5/4.6 share."""


# --- Qwen3.5 (Qwen3-Coder's spelling) ----------------------------------------------------------------


class Qwen35Tools(JsonToolList, XmlResults):
    """Qwen3.5 / Qwen3-Coder: tools before the system text, `<function=NAME>` calls with `<parameter=KEY>` values."""

    name = "qwen3_5"
    placement = BEFORE_SYSTEM
    system_join = "\n\n"
    HEADER = "# Tools\n\nYou have access to the following functions:\n\n<tools>"
    FOOTER = (
        "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
        "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
        "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
        "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n"
        "- Function calls MUST follow the specified format: an inner <function=...></function> block must be "
        "nested within <tool_call></tool_call> XML tags\n"
        "- Required parameters MUST be specified\n"
        "- You may provide optional reasoning for your function call in natural language BEFORE the function call, "
        "but NOT after\n"
        "- If there is no function call available, answer the question like normal with your current knowledge "
        "and do not tell the user about function calls\n</IMPORTANT>"
    )
    CALL = re.compile(r"<tool_call>\s*<function=([^\s<>]+)>(.*?)</function>\s*</tool_call>", re.DOTALL)
    PARAM = re.compile(r"<parameter=([^\s<>]+)>(.*?)</parameter>", re.DOTALL)

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        return xml_calls(calls, "<tool_call>\n<function={name}>\n", "<parameter={key}>\n{value}\n</parameter>\n",
                         "</function>\n</tool_call>", "\n")

    @staticmethod
    def _value(text: str) -> Any:
        # The value sits between one newline after the tag and one before the closing tag (Qwen3-Coder's parser).
        text = text[1:] if text.startswith("\n") else text
        return read_value(text[:-1] if text.endswith("\n") else text)

    def parse_data(self, text: str) -> list[ToolCall] | None:
        blocks = [make_call(name, ((k, self._value(v)) for k, v in self.PARAM.findall(body)))
                  for name, body in self.CALL.findall(text)]
        return parsed_calls(blocks, text.count("<tool_call>"))

    def jinja_calls(self) -> str:
        return (
            JINJA_CALL_LOOP +
            "{%- if not loop.first %}{{- '\\n' }}{%- endif %}\n"
            "{{- '<tool_call>\\n<function=' ~ fn.name ~ '>\\n' }}\n"
            "{%- for key, value in args.items() %}"
            "{{- '<parameter=' ~ key ~ '>\\n' ~ " + JINJA_VALUE + " ~ '\\n</parameter>\\n' }}{%- endfor %}\n"
            "{{- '</function>\\n</tool_call>' }}\n"
            "{%- endfor %}\n"
        )


# --- GLM-4.5 / 4.6 ----------------------------------------------------------------------------------


class Glm4MoeTools(XmlResults):
    """GLM-4.5/4.6 (glm4_moe): tools in their own system block, `<tool_call>NAME` with `<arg_key>`/`<arg_value>` pairs."""

    name = "glm4_moe"
    placement = BEFORE_SYSTEM
    system_join = "<|system|>\n"  # GLM writes the tools and the sample's system prompt as two system blocks
    HEADER = (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    )
    FOOTER = (
        "</tools>\n\nFor each function call, output the function name and arguments within the following XML format:\n"
        "<tool_call>{function-name}\n<arg_key>{arg-key-1}</arg_key>\n<arg_value>{arg-value-1}</arg_value>\n"
        "<arg_key>{arg-key-2}</arg_key>\n<arg_value>{arg-value-2}</arg_value>\n...\n</tool_call>"
    )
    CALL = re.compile(r"<tool_call>([^\s<>]+)\s*(.*?)</tool_call>", re.DOTALL)
    PAIR = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)

    def render_tools(self, tools_json: str) -> str:
        body = "".join(json.dumps(wrap_function(t), ensure_ascii=False) + "\n" for t in load_tools(tools_json))
        return self.HEADER + body + self.FOOTER

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        return xml_calls(calls, "<tool_call>{name}\n", "<arg_key>{key}</arg_key>\n<arg_value>{value}</arg_value>\n",
                         "</tool_call>", "\n")

    def parse_data(self, text: str) -> list[ToolCall] | None:
        blocks = []
        for name, body in self.CALL.findall(text):
            pairs = self.PAIR.findall(body)
            # Everything in the body must be argument pairs: a JSON body is another format's call.
            ok = self.PAIR.sub("", body).strip() == ""
            blocks.append(make_call(name, ((k.strip(), read_value(v)) for k, v in pairs)) if ok else None)
        return parsed_calls(blocks, text.count("<tool_call>"))

    def jinja_tools(self) -> str:
        return (
            "{{- " + jinja_str(self.HEADER) + " }}\n"
            "{%- for tool in tools %}\n" + JINJA_TOOL_VARS + "{{- (wrapped | tojson) ~ '\\n' }}\n{%- endfor %}\n"
            "{{- " + jinja_str(self.FOOTER) + " }}\n"
        )

    def jinja_calls(self) -> str:
        return (
            JINJA_CALL_LOOP +
            "{%- if not loop.first %}{{- '\\n' }}{%- endif %}\n"
            "{{- '<tool_call>' ~ fn.name ~ '\\n' }}\n"
            "{%- for key, value in args.items() %}"
            "{{- '<arg_key>' ~ key ~ '</arg_key>\\n<arg_value>' ~ " + JINJA_VALUE + " ~ '</arg_value>\\n' }}"
            "{%- endfor %}\n"
            "{{- '</tool_call>' }}\n"
            "{%- endfor %}\n"
        )


class Glm47Tools(Glm4MoeTools):
    """GLM-4.7: GLM-4.5's format without the newlines between a call's pieces and around each result.

    Its template also writes the tools block as `<|system|>\n# Tools...` but the sample's system
    prompt as `<|system|>TEXT`, so the newline belongs to the tools text here.
    """

    name = "glm4_7"
    system_join = "<|system|>"
    HEADER = "\n" + Glm4MoeTools.HEADER
    FOOTER = (
        "</tools>\n\nFor each function call, output the function name and arguments within the following XML format:\n"
        "<tool_call>{function-name}<arg_key>{arg-key-1}</arg_key><arg_value>{arg-value-1}</arg_value>"
        "<arg_key>{arg-key-2}</arg_key><arg_value>{arg-value-2}</arg_value>...</tool_call>"
    )

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        return xml_calls(calls, "<tool_call>{name}", "<arg_key>{key}</arg_key><arg_value>{value}</arg_value>",
                         "</tool_call>", "")

    def render_results(self, results: str, calls_json: str = "") -> str:
        return "".join(f"<tool_response>{r}</tool_response>" for r in split_results(results))

    def jinja_calls(self) -> str:
        return (
            JINJA_CALL_LOOP +
            "{{- '<tool_call>' ~ fn.name }}\n"
            "{%- for key, value in args.items() %}"
            "{{- '<arg_key>' ~ key ~ '</arg_key><arg_value>' ~ " + JINJA_VALUE + " ~ '</arg_value>' }}"
            "{%- endfor %}\n"
            "{{- '</tool_call>' }}\n"
            "{%- endfor %}\n"
        )

    def jinja_results(self) -> str:
        return "{%- for result in results %}{{- '<tool_response>' ~ result ~ '</tool_response>' }}{%- endfor %}\n"


# --- MiniMax-M2 -------------------------------------------------------------------------------------


class MiniMax2Tools(ToolFormat):
    """MiniMax-M2: `<tool>` schemas after the system text, one `<minimax:tool_call>` block of `<invoke>` calls.

    The vendor's template writes a newline before the block even when the turn has no text before
    it. A lathe call turn holds only calls, so that newline would always follow the `]~b]ai\n`
    header, and byte-level vocabularies merge the two into one `\n\n` token that straddles the
    prompt/answer seam: the prompt a model sees at inference (ending `\n`) would never occur in
    training. The learned call therefore starts at `<minimax:tool_call>` (a special token of
    MiniMax's vocabulary); the parser reads either spelling.
    """

    name = "minimax2"
    placement = IN_SYSTEM
    HEADER = (
        "# Tools\nYou may call one or more tools to assist with the user query.\n"
        "Here are the tools available in JSONSchema format:\n\n<tools>\n"
    )
    FOOTER = (
        "</tools>\n\nWhen making tool calls, use XML format to invoke tools and pass parameters:\n\n"
        '<minimax:tool_call>\n<invoke name="tool-name-1">\n<parameter name="param-key-1">param-value-1</parameter>\n'
        '<parameter name="param-key-2">param-value-2</parameter>\n...\n</invoke>\n</minimax:tool_call>'
    )
    RESULT = "\n<response>{}</response>"  # each result; the observation slot writes only the tool turn around them
    BLOCK = re.compile(r"<minimax:tool_call>(.*?)</minimax:tool_call>", re.DOTALL)
    INVOKE = re.compile(r'<invoke name="([^"]+)">(.*?)</invoke>', re.DOTALL)
    PARAM = re.compile(r'<parameter name="([^"]+)">(.*?)</parameter>', re.DOTALL)

    def render_tools(self, tools_json: str) -> str:
        body = "".join(
            "<tool>" + json.dumps(function_of(t), ensure_ascii=False) + "</tool>\n" for t in load_tools(tools_json)
        )
        return self.HEADER + body + self.FOOTER

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        invokes = xml_calls(calls, '<invoke name="{name}">\n', '<parameter name="{key}">{value}</parameter>\n',
                            "</invoke>\n", "")
        return f"<minimax:tool_call>\n{invokes}</minimax:tool_call>"

    def render_results(self, results: str, calls_json: str = "") -> str:
        return "".join(self.RESULT.format(r) for r in split_results(results))

    def parse_data(self, text: str) -> list[ToolCall] | None:
        blocks: list[Any] = []
        opened = 0
        for block in self.BLOCK.findall(text):
            opened += block.count("<invoke ")
            blocks += [make_call(name, ((k, read_value(v)) for k, v in self.PARAM.findall(body)))
                       for name, body in self.INVOKE.findall(block)]
        return parsed_calls(blocks, opened)

    def jinja_tools(self) -> str:
        return (
            "{{- " + jinja_str(self.HEADER) + " }}\n"
            "{%- for tool in tools %}\n" + JINJA_TOOL_VARS + "{{- '<tool>' ~ (fn | tojson) ~ '</tool>\\n' }}\n"
            "{%- endfor %}\n"
            "{{- " + jinja_str(self.FOOTER) + " }}\n"
        )

    def jinja_calls(self) -> str:
        return (
            "{{- '<minimax:tool_call>\\n' }}\n" + JINJA_CALL_LOOP +
            "{{- '<invoke name=\"' ~ fn.name ~ '\">\\n' }}\n"
            "{%- for key, value in args.items() %}"
            "{{- '<parameter name=\"' ~ key ~ '\">' ~ " + JINJA_VALUE + " ~ '</parameter>\\n' }}{%- endfor %}\n"
            "{{- '</invoke>\\n' }}\n"
            "{%- endfor %}\n"
            "{{- '</minimax:tool_call>' }}\n"
        )

    def jinja_results(self) -> str:
        return "{%- for result in results %}{{- '\\n<response>' ~ result ~ '</response>' }}{%- endfor %}\n"


# --- Seed-OSS ---------------------------------------------------------------------------------------


SEED_PY_TYPES = {"string": "str", "number": "int", "integer": "int", "boolean": "bool", "array": "list"}


def seed_py_type(spec: Any) -> str:
    """The Python type name Seed-OSS's template gives a JSON-schema type (anything else is Any)."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    return SEED_PY_TYPES.get(kind, "Any") if isinstance(kind, str) else "Any"


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


class SeedOssTools(ToolFormat):
    """Seed-OSS: each tool as a Python signature with a docstring after the system text, `<seed:tool_call>` calls.

    With tools and no system prompt, Seed-OSS's template writes its own ("You are Doubao, ...").
    """

    name = "seed_oss"
    placement = IN_SYSTEM
    DEFAULT_SYSTEM = "You are Doubao, a helpful AI assistant. You may call one or more functions to assist with the user query."
    FOOTER = (
        "\n工具调用请遵循如下格式:\n<seed:tool_call>\n<function=example_function_name>\n"
        "<parameter=example_parameter_1>value_1</parameter>\n<parameter=example_parameter_2>This is the value for "
        "the second parameter\nthat can span\nmultiple lines</parameter>\n</function>\n</seed:tool_call>\n"
    )
    RESULT_JOIN = "<seed:eos><seed:bos>tool\n"  # one tool turn per result, as the template writes them
    CALL = re.compile(r"<seed:tool_call>\s*<function=([^\s<>]+)>(.*?)</function>\s*</seed:tool_call>", re.DOTALL)
    PARAM = re.compile(r"<parameter=([^\s<>]+)>(.*?)</parameter>", re.DOTALL)

    @staticmethod
    def _doc(tool: Any) -> str:
        fn = _mapping(function_of(tool))
        params = _mapping(fn.get("parameters"))
        props = _mapping(params.get("properties"))
        required = params.get("required") or []
        returns = _mapping(_mapping(fn.get("returns")).get("properties"))
        signature = ",".join(f"{name}: {seed_py_type(spec)}" for name, spec in props.items())
        text = f'\n\nFunction:\ndef {fn.get("name", "")}({signature}):\n    """\n    {str(fn.get("description", "")).strip()}\n\n'
        if props:
            text += "    Args:" + "".join(
                f"\n    - {name} ({seed_py_type(spec)}) {'[必填]' if name in required else '[选填]'}: "
                f"{_mapping(spec).get('description') or ''}"
                for name, spec in props.items()
            )
        if returns:
            text += "\n    Returns:" + "".join(
                f"\n    - {name} ({seed_py_type(spec)}): {_mapping(spec).get('description') or ''}"
                for name, spec in returns.items()
            )
        else:
            text += "\n"
        return text + '\n    """'

    def render_tools(self, tools_json: str) -> str:
        return "".join(map(self._doc, load_tools(tools_json))) + self.FOOTER

    def system_with_tools(self, system: str, tools_text: str) -> str:
        return (system or self.DEFAULT_SYSTEM) + tools_text

    def jinja_system_with_tools(self) -> str:
        return "{%- set system = (system if system else " + jinja_str(self.DEFAULT_SYSTEM) + ") ~ tools_text %}\n"

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        return xml_calls(calls, "<seed:tool_call>\n<function={name}>\n", "<parameter={key}>{value}</parameter>\n",
                         "</function>\n</seed:tool_call>", "\n")

    def render_results(self, results: str, calls_json: str = "") -> str:
        return self.RESULT_JOIN.join(split_results(results))

    def parse_data(self, text: str) -> list[ToolCall] | None:
        blocks = [make_call(name, ((k, read_value(v)) for k, v in self.PARAM.findall(body)))
                  for name, body in self.CALL.findall(text)]
        return parsed_calls(blocks, text.count("<seed:tool_call>"))

    def jinja_tools(self) -> str:
        types = "{'string': 'str', 'number': 'int', 'integer': 'int', 'boolean': 'bool', 'array': 'list'}"
        py_type = f"({types}[spec.type] if spec.type is string and spec.type in {types} else 'Any')"
        return (
            "{%- for tool in tools %}\n"
            "{%- set fn = tool.function if tool.function is defined else tool %}\n"
            "{%- set params = fn.parameters if fn.parameters is mapping else {} %}\n"
            "{%- set props = params.properties if params.properties is mapping else {} %}\n"
            "{%- set required = params.required if params.required is defined and params.required else [] %}\n"
            "{%- set returns = fn.returns.properties if fn.returns is mapping and fn.returns.properties is mapping "
            "else {} %}\n"
            "{{- '\\n\\nFunction:\\ndef ' ~ fn.name ~ '(' }}\n"
            "{%- for name, spec in props.items() %}{%- if not loop.first %}{{- ',' }}{%- endif %}"
            "{{- name ~ ': ' ~ " + py_type + " }}{%- endfor %}\n"
            "{{- '):\\n    \"\"\"\\n    ' ~ ((fn.description if fn.description is defined else '') | trim) ~ '\\n\\n' }}\n"
            "{%- if props %}{{- '    Args:' }}{%- for name, spec in props.items() %}"
            "{{- '\\n    - ' ~ name ~ ' (' ~ " + py_type + " ~ ') ' ~ ('[必填]' if name in required else '[选填]') "
            "~ ': ' ~ (spec.description or '') }}{%- endfor %}{%- endif %}\n"
            "{%- if returns %}{{- '\\n    Returns:' }}{%- for name, spec in returns.items() %}"
            "{{- '\\n    - ' ~ name ~ ' (' ~ " + py_type + " ~ '): ' ~ (spec.description or '') }}{%- endfor %}"
            "{%- else %}{{- '\\n' }}{%- endif %}\n"
            "{{- '\\n    \"\"\"' }}\n"
            "{%- endfor %}\n"
            "{{- " + jinja_str(self.FOOTER) + " }}\n"
        )

    def jinja_calls(self) -> str:
        return (
            JINJA_CALL_LOOP +
            "{%- if not loop.first %}{{- '\\n' }}{%- endif %}\n"
            "{{- '<seed:tool_call>\\n<function=' ~ fn.name ~ '>\\n' }}\n"
            "{%- for key, value in args.items() %}"
            "{{- '<parameter=' ~ key ~ '>' ~ " + JINJA_VALUE + " ~ '</parameter>\\n' }}{%- endfor %}\n"
            "{{- '</function>\\n</seed:tool_call>' }}\n"
            "{%- endfor %}\n"
        )

    def jinja_results(self) -> str:
        return "{{- results | join(" + jinja_str(self.RESULT_JOIN) + ") }}\n"


XML_TOOL_FORMATS: tuple[ToolFormat, ...] = (Qwen35Tools(), Glm4MoeTools(), Glm47Tools(), MiniMax2Tools(), SeedOssTools())
