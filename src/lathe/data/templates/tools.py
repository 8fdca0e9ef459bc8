"""Tool calling: how a model family writes tool schemas, tool calls and tool results, and reads calls back.

A sample's `tools` is the JSON text of a list of tool schemas; a `function` turn's content is the
JSON text of one call `{"name": ..., "arguments": {...}}` or of a list of them; an `observation`
turn holds the results (several results of one step are joined by the dataset converter's
`TOOL_RESPONSE_JOIN`). Each family spells these differently, and a model only calls tools well
in the spelling it was trained on, so the spelling is a named *tool format*:

    fmt = get_tool_format("qwen")
    fmt.render_tools(tools_json)    # the text that goes into the system prompt (or the first user turn)
    fmt.render_calls(calls_json)    # an assistant tool-call turn's text
    fmt.render_results(text, calls_json)  # an observation turn's text
    fmt.parse(generated_text)       # [ToolCall(name, arguments), ...], or None for a plain answer

Each registered template names its format (`tool_format:` in templates.yaml); a run can override
it. The `jinja_*` methods give the same text as jinja, for the chat template a trained tokenizer
carries (see `jinja.py`); a test checks that both render alike.

Why hand-written: the spellings live in the models' jinja templates (Hermes `<tool_call>` tags for
Qwen, bare JSON for Llama 3, `[TOOL_CALLS]` for Mistral, `name\\narguments` for GLM-4, one XML
element per argument for Qwen3.5, GLM-4.5, MiniMax-M2 and Seed-OSS in `tools_xml.py`, JSON lines
in `<tool_calls>` for MiniMax-M1 and Ling 3.0's arg_key/arg_value calls in `tools_json.py`, Gemma 4's
`<|tool_call>call:name{...}` objects in `tools_gemma4.py`, LFM2's Pythonic `[f(k=v)]` calls in
`tools_lfm2.py`), and no maintained library turns them into both training text and a parser.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from lathe.errors import LatheError, lookup

from .tool_calls import (  # noqa: F401 (re-exported: the data side of tool calling)
    ToolCall,
    call_id,
    calls_from_data,
    function_of,
    json_or_none,
    load_calls,
    load_tools,
    split_results,
    to_openai_messages,
    wrap_function,
)
from .tool_format import (  # noqa: F401 (re-exported: slots.py and jinja.py read them here)
    BEFORE_FIRST_USER,
    BEFORE_SYSTEM,
    IN_FIRST_USER,
    IN_SYSTEM,
    JINJA_CALL_VARS,
    JINJA_TOOL_VARS,
    JsonToolList,
    ToolFormat,
    ToolResponseResults,
    jinja_str,
)
from .tools_gemma4 import Gemma4Tools
from .tools_harmony import HarmonyTools
from .tools_hy3 import Hy3Tools
from .tools_json import JSON_TOOL_FORMATS
from .tools_lfm2 import Lfm2Tools
from .tools_xml import XML_TOOL_FORMATS


class DefaultTools(ToolFormat):
    """Plain JSON: schemas one per line; a call is `{"name", "arguments"}`, several calls a JSON list."""

    name = "default"
    HEADER = "You have access to the following tools. Their JSON schemas, one per line:\n"
    FOOTER = (
        "\n\nTo call a tool, answer with only a JSON object: "
        '{"name": <tool name>, "arguments": <arguments object>}. '
        "To call several tools at once, answer with a JSON list of such objects."
    )

    def render_tools(self, tools_json: str) -> str:
        lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in load_tools(tools_json))
        return self.HEADER + lines + self.FOOTER

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        items = [f'{{"name": {json.dumps(c.name, ensure_ascii=False)}, "arguments": {c.arguments}}}' for c in calls]
        return items[0] if len(items) == 1 else "[" + ", ".join(items) + "]"

    def parse_data(self, text: str) -> list[ToolCall] | None:
        fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.DOTALL)
        return calls_from_data(json_or_none(fenced.group(1) if fenced else text))

    def jinja_tools(self) -> str:
        return (
            "{{- " + jinja_str(self.HEADER) + " }}\n"
            "{%- for tool in tools %}{%- if not loop.first %}{{- '\\n' }}{%- endif %}{{- tool | tojson }}{%- endfor %}\n"
            "{{- " + jinja_str(self.FOOTER) + " }}\n"
        )

    def jinja_calls(self) -> str:
        return (
            "{%- if message.tool_calls | length > 1 %}{{- '[' }}{%- endif %}\n"
            "{%- for call in message.tool_calls %}\n" + JINJA_CALL_VARS +
            "{%- if not loop.first %}{{- ', ' }}{%- endif %}\n"
            "{{- '{\"name\": ' ~ (fn.name | tojson) ~ ', \"arguments\": ' ~ args ~ '}' }}\n"
            "{%- endfor %}\n"
            "{%- if message.tool_calls | length > 1 %}{{- ']' }}{%- endif %}\n"
        )


class QwenTools(JsonToolList, ToolResponseResults, ToolFormat):
    """Hermes-style, as Qwen2.5/Qwen3 templates write it: `<tools>` in the system prompt, `<tool_call>` tags."""

    name = "qwen"
    HEADER = (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    )
    FOOTER = (
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
        "<args-json-object>}\n</tool_call>"
    )
    CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        return "\n".join(f'<tool_call>\n{{"name": "{c.name}", "arguments": {c.arguments}}}\n</tool_call>' for c in calls)

    def parse_data(self, text: str) -> list[ToolCall] | None:
        bodies = self.CALL.findall(text)
        if not bodies:
            return None
        calls = [calls_from_data(json_or_none(body.strip())) for body in bodies]
        if any(c is None or len(c) != 1 for c in calls):
            return None
        return [c[0] for c in calls]  # type: ignore[index]

    def jinja_calls(self) -> str:
        return (
            "{%- for call in message.tool_calls %}\n" + JINJA_CALL_VARS +
            "{%- if not loop.first %}{{- '\\n' }}{%- endif %}\n"
            "{{- '<tool_call>\\n{\"name\": \"' ~ fn.name ~ '\", \"arguments\": ' ~ args ~ '}\\n</tool_call>' }}\n"
            "{%- endfor %}\n"
        )



class Llama3Tools(ToolFormat):
    """Llama 3.1/3.2 JSON tool calling: tools in the first user message, calls `{"name", "parameters"}`."""

    name = "llama3"
    placement = IN_FIRST_USER
    system_note = "Environment: ipython\n"
    HEADER = (
        "Given the following functions, please respond with a JSON for a function call with its proper arguments "
        "that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
        "Do not use variables.\n\n"
    )
    PYTHON_TAG = "<|python_tag|>"

    def render_tools(self, tools_json: str) -> str:
        body = "".join(
            json.dumps(wrap_function(t), ensure_ascii=False, indent=4) + "\n\n" for t in load_tools(tools_json)
        )
        return self.HEADER + body

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        # Llama 3 makes one call per turn; several are written as a JSON list (read back by `parse`).
        items = [f'{{"name": "{c.name}", "parameters": {c.arguments}}}' for c in calls]
        return items[0] if len(items) == 1 else "[" + ", ".join(items) + "]"

    def parse_data(self, text: str) -> list[ToolCall] | None:
        if text.startswith(self.PYTHON_TAG):
            text = text[len(self.PYTHON_TAG):].strip()
        return calls_from_data(json_or_none(text))

    def jinja_tools(self) -> str:
        return (
            "{{- " + jinja_str(self.HEADER) + " }}\n"
            "{%- for tool in tools %}\n" + JINJA_TOOL_VARS + "{{- (wrapped | tojson(indent=4)) ~ '\\n\\n' }}\n"
            "{%- endfor %}\n"
        )

    def jinja_calls(self) -> str:
        return (
            "{%- if message.tool_calls | length > 1 %}{{- '[' }}{%- endif %}\n"
            "{%- for call in message.tool_calls %}\n" + JINJA_CALL_VARS +
            "{%- if not loop.first %}{{- ', ' }}{%- endif %}\n"
            "{{- '{\"name\": \"' ~ fn.name ~ '\", \"parameters\": ' ~ args ~ '}' }}\n"
            "{%- endfor %}\n"
            "{%- if message.tool_calls | length > 1 %}{{- ']' }}{%- endif %}\n"
        )


class MistralTools(ToolFormat):
    """Mistral: `[AVAILABLE_TOOLS]` before the first user turn, `[TOOL_CALLS]` with 9-character call ids,
    `[TOOL_RESULTS]` naming the call each result answers.

    `sep` is the text after each control token: a space for the SentencePiece (v3) tokenizers of
    Mistral 7B v0.3 / Mixtral, nothing for the Tekken ones (Nemo, Ministral, Small).
    """

    placement = BEFORE_FIRST_USER
    CALLS = re.compile(r"^\[TOOL_CALLS\]\s*")

    def __init__(self, name: str, sep: str):
        self.name = name
        self.sep = sep

    def render_tools(self, tools_json: str) -> str:
        return f"[AVAILABLE_TOOLS]{self.sep}[" + ", ".join(map(self._tool, load_tools(tools_json))) + "][/AVAILABLE_TOOLS]"

    @staticmethod
    def _tool(tool: Any) -> str:
        # Mistral's template writes string values unescaped and other values as JSON; so does lathe.
        fn = function_of(tool)
        if not isinstance(fn, dict):
            raise LatheError(f"A Mistral tool schema must be a JSON object, got {fn!r}.")
        items = [
            f'"{key}": "{val}"' if isinstance(val, str) else f'"{key}": {json.dumps(val, ensure_ascii=False)}'
            for key, val in fn.items()
            if key != "return"
        ]
        return '{"type": "function", "function": {' + ", ".join(items) + "}}"

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        items = [
            f'{{"name": {json.dumps(c.name, ensure_ascii=False)}, "arguments": {c.arguments}, "id": "{call_id(c, k)}"}}'
            for k, c in enumerate(calls)
        ]
        return f"[TOOL_CALLS]{self.sep}[" + ", ".join(items) + "]"

    def render_results(self, results: str, calls_json: str = "") -> str:
        # The observation slot writes "[TOOL_RESULTS] ... [/TOOL_RESULTS]" around this; joined results
        # become one block each, as Mistral writes consecutive tool messages.
        calls = load_calls(calls_json) if calls_json else []
        out = []
        for k, result in enumerate(split_results(results)):
            rid = call_id(calls[k], k) if k < len(calls) else call_id(ToolCall("result", json.dumps(result)), k)
            out.append(f'{{"content": {result}, "call_id": "{rid}"}}')
        return f"[/TOOL_RESULTS][TOOL_RESULTS]{self.sep}".join(out)

    def parse_data(self, text: str) -> list[ToolCall] | None:
        marker = self.CALLS.match(text)
        body = text[marker.end():] if marker else text
        calls = calls_from_data(json_or_none(body))
        return calls if calls is not None and (marker or body.startswith("[")) else None

    def jinja_tools(self) -> str:
        return (
            "{{- " + jinja_str(f"[AVAILABLE_TOOLS]{self.sep}[") + " }}\n"
            "{%- for tool in tools %}\n" + JINJA_TOOL_VARS +
            "{%- if not loop.first %}{{- ', ' }}{%- endif %}\n"
            "{{- '{\"type\": \"function\", \"function\": {' }}\n"
            "{%- for key, val in fn.items() if key != 'return' %}\n"
            "{%- if not loop.first %}{{- ', ' }}{%- endif %}\n"
            "{%- if val is string %}{{- '\"' ~ key ~ '\": \"' ~ val ~ '\"' }}"
            "{%- else %}{{- '\"' ~ key ~ '\": ' ~ (val | tojson) }}{%- endif %}\n"
            "{%- endfor %}\n"
            "{{- '}}' }}\n"
            "{%- endfor %}\n"
            "{{- '][/AVAILABLE_TOOLS]' }}\n"
        )

    def jinja_calls(self) -> str:
        return (
            "{{- " + jinja_str(f"[TOOL_CALLS]{self.sep}[") + " }}\n"
            "{%- for call in message.tool_calls %}\n" + JINJA_CALL_VARS +
            "{%- if not loop.first %}{{- ', ' }}{%- endif %}\n"
            "{{- '{\"name\": ' ~ (fn.name | tojson) ~ ', \"arguments\": ' ~ args ~ ', \"id\": \"' ~ call.id ~ '\"}' }}\n"
            "{%- endfor %}\n"
            "{{- ']' }}\n"
        )

    def jinja_results(self) -> str:
        return (
            "{%- for result in results %}\n"
            "{%- if not loop.first %}{{- " + jinja_str(f"[/TOOL_RESULTS][TOOL_RESULTS]{self.sep}") + " }}{%- endif %}\n"
            "{{- '{\"content\": ' ~ result ~ ', \"call_id\": \"' ~ result_ids[loop.index0] ~ '\"}' }}\n"
            "{%- endfor %}\n"
        )


class GLM4Tools(ToolFormat):
    """GLM-4 / ChatGLM3: a Chinese tool prompt with each function as indented JSON; a call is `name\\n{arguments}`."""

    name = "glm4"
    HEADER = (
        "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
        "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具"
    )
    TOOL_END = "\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
    NAME = re.compile(r"[^\s{}\[\]\"]+")

    def render_tools(self, tools_json: str) -> str:
        body = ""
        for tool in load_tools(tools_json):
            fn = function_of(tool)
            name = fn.get("name", "") if isinstance(fn, dict) else ""
            body += f"\n\n## {name}\n\n{json.dumps(fn, ensure_ascii=False, indent=4)}{self.TOOL_END}"
        return self.HEADER + body

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        # GLM-4 makes one call per turn; several are written one after another (read back by `parse`).
        return "\n".join(f"{c.name}\n{c.arguments}" for c in calls)

    def parse_data(self, text: str) -> list[ToolCall] | None:
        decoder, calls, pos = json.JSONDecoder(), [], 0
        while pos < len(text):
            newline = text.find("\n", pos)
            name = text[pos:newline].strip() if newline >= 0 else ""
            if not self.NAME.fullmatch(name):
                return None
            start = newline + 1
            while start < len(text) and text[start].isspace():
                start += 1
            try:
                arguments, pos = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                return None
            if not isinstance(arguments, dict):
                return None
            calls.append(ToolCall(name, json.dumps(arguments, ensure_ascii=False)))
            while pos < len(text) and text[pos].isspace():
                pos += 1
        return calls or None

    def jinja_tools(self) -> str:
        return (
            "{{- " + jinja_str(self.HEADER) + " }}\n"
            "{%- for tool in tools %}\n" + JINJA_TOOL_VARS +
            "{{- '\\n\\n## ' ~ fn.name ~ '\\n\\n' ~ (fn | tojson(indent=4)) ~ " + jinja_str(self.TOOL_END) + " }}\n"
            "{%- endfor %}\n"
        )

    def jinja_calls(self) -> str:
        return (
            "{%- for call in message.tool_calls %}\n" + JINJA_CALL_VARS +
            "{%- if not loop.first %}{{- '\\n' }}{%- endif %}\n"
            "{{- fn.name ~ '\\n' ~ args }}\n"
            "{%- endfor %}\n"
        )


TOOL_FORMATS: dict[str, ToolFormat] = {
    fmt.name: fmt
    for fmt in (
        DefaultTools(),
        QwenTools(),
        Llama3Tools(),
        MistralTools("mistral", " "),
        MistralTools("mistral_tekken", ""),
        GLM4Tools(),
        *XML_TOOL_FORMATS,  # qwen3_5, glm4_moe, glm4_7, minimax2, seed_oss
        HarmonyTools(),  # gpt_oss
        Gemma4Tools(),
        Lfm2Tools(),
        *JSON_TOOL_FORMATS,  # minimax1, ling
        Hy3Tools(),
    )
}


def list_tool_formats() -> list[str]:
    """Names of the registered tool formats, sorted."""
    return sorted(TOOL_FORMATS)


def get_tool_format(name: str) -> ToolFormat:
    """The tool format called `name`; an unknown name raises LatheError listing the registered ones."""
    return lookup(TOOL_FORMATS, name, "tool format")
