"""Tool calls as data: the calls of a function turn, the results of an observation, call ids.

The dataset converters give a `function` turn the JSON text of one call `{"name": ...,
"arguments": {...}}` or of a list of them, and join the results of one step in an `observation`
turn with `TOOL_RESPONSE_JOIN`. This module reads those into `ToolCall`s (tolerating what datasets
do: OpenAI's `{"function": {...}}` wrapper, `parameters` for `arguments`, arguments stored as a
JSON string), derives the call ids some formats need, and writes lathe's messages as the
OpenAI-style messages jinja chat templates read. How a family *spells* calls is `tools.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from typing import Any, Sequence

from lathe.data.formats import TOOL_RESPONSE_JOIN
from lathe.data.sample import ASSISTANT, FUNCTION, OBSERVATION, USER
from lathe.errors import LatheError


@dataclass(frozen=True)
class ToolCall:
    """One tool call: the tool's name and its arguments as JSON text (an object, compact, key order kept).

    `id` is carried for formats that number calls (Mistral) and ignored by equality, so a call
    parsed back from generated text equals the call it was rendered from.
    """

    name: str
    arguments: str
    id: str = field(default="", compare=False)

    @property
    def args(self) -> Any:
        """The arguments as Python data."""
        return json.loads(self.arguments)


# --- reading the sample's JSON ----------------------------------------------------------------------


def load_tools(tools: str) -> list[Any]:
    """The tool schemas of a sample (JSON text of a list, or of one schema) as a list."""
    try:
        parsed = json.loads(tools)
    except json.JSONDecodeError as err:
        raise LatheError(f"`tools` is not valid JSON ({err}); expected a JSON list of tool schemas: {tools[:200]!r}")
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        raise LatheError(f"`tools` must be a JSON list of tool schemas, got {type(parsed).__name__}: {tools[:200]!r}")
    return parsed


def _arguments_text(value: Any) -> str:
    """Arguments as compact JSON text; a string holding JSON is parsed first (some datasets store them so)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass  # a plain string argument stays a JSON string
    return json.dumps(value, ensure_ascii=False)


def _call_from_dict(item: Any, strict: bool) -> ToolCall | None:
    """A ToolCall from `{"name", "arguments"|"parameters"}` (or OpenAI's `{"function": {...}}`), else None.

    `strict` (reading generated text) also needs the arguments key, so a plain JSON answer such
    as `{"name": "Ada"}` is not taken for a call; data may omit arguments of a call that has none.
    """
    if not isinstance(item, dict):
        return None
    call_id = item.get("id", "")
    if isinstance(item.get("function"), dict):
        item = item["function"]
    name = item.get("name")
    if not isinstance(name, str) or not name:
        return None
    if strict and "arguments" not in item and "parameters" not in item:
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    return ToolCall(name, _arguments_text(arguments), id=call_id if isinstance(call_id, str) else "")


def calls_from_data(data: Any, strict: bool = True) -> list[ToolCall] | None:
    """Calls from parsed JSON (one call object or a list of them); None when it is not that."""
    items = data if isinstance(data, list) else [data]
    calls = [_call_from_dict(item, strict) for item in items]
    if not calls or any(call is None for call in calls):
        return None
    return calls  # type: ignore[return-value]


def load_calls(calls_json: str) -> list[ToolCall]:
    """The calls of a `function` turn; LatheError when its content is not tool-call JSON."""
    try:
        calls = calls_from_data(json.loads(calls_json), strict=False)
    except json.JSONDecodeError:
        calls = None
    if calls is None:
        raise LatheError(
            "A function (tool call) turn must hold JSON text of one call "
            '{"name": <tool name>, "arguments": {...}} or a list of them; this one holds '
            f"{calls_json[:200]!r}. Fix the row, or give the turn the assistant role if it is a plain answer."
        )
    return calls


def split_results(results: str) -> list[str]:
    """The single results an observation turn joins (see `lathe.data.formats.TOOL_RESPONSE_JOIN`)."""
    return results.split(TOOL_RESPONSE_JOIN)


CALL_ID_CHARS = string.ascii_letters + string.digits


def call_id(call: ToolCall, index: int) -> str:
    """A 9-character alphanumeric call id (Mistral requires that shape): the call's own, else derived.

    Derived ids are a hash of the call and its position, so the same data always gives the same
    text (tokenized datasets stay cacheable) and a result can name the call it answers.
    """
    if re.fullmatch(r"[A-Za-z0-9]{9}", call.id or ""):
        return call.id
    digest = hashlib.sha256(f"{index}\n{call.name}\n{call.arguments}".encode()).digest()
    return "".join(CALL_ID_CHARS[b % len(CALL_ID_CHARS)] for b in digest[:9])


def to_openai_messages(messages: Sequence[dict], system: str = "") -> list[dict]:
    """lathe's messages as OpenAI/Hugging Face chat messages (what jinja chat templates read).

    A `function` turn becomes an assistant message with `tool_calls` (each with an `id` from
    `call_id` and dict arguments); an `observation` turn becomes one `tool` message per joined
    result, each with the `tool_call_id` of the call it answers.
    """
    out: list[dict] = [{"role": "system", "content": system}] if system else []
    ids: list[str] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == FUNCTION:
            calls = load_calls(content)
            ids = [call_id(c, k) for k, c in enumerate(calls)]
            out.append({
                "role": "assistant",
                "tool_calls": [
                    {"id": i, "type": "function", "function": {"name": c.name, "arguments": c.args}}
                    for i, c in zip(ids, calls)
                ],
            })
        elif role == OBSERVATION:
            for k, result in enumerate(split_results(content)):
                tool_call_id = ids[k] if k < len(ids) else call_id(ToolCall("result", json.dumps(result)), k)
                out.append({"role": "tool", "content": result, "tool_call_id": tool_call_id})
        else:
            out.append({"role": {USER: "user", ASSISTANT: "assistant"}[role], "content": content})
    return out


def wrap_function(tool: Any) -> Any:
    """A bare schema `{"name", "description", "parameters"}` as OpenAI's `{"type": "function", "function": ...}`."""
    if isinstance(tool, dict) and tool.get("type") != "function":
        return {"type": "function", "function": tool}
    return tool


def function_of(tool: Any) -> Any:
    """The function schema of a tool given in either form."""
    return tool["function"] if isinstance(tool, dict) and isinstance(tool.get("function"), dict) else tool


def json_or_none(text: str) -> Any:
    """Parsed JSON, or None when `text` is not JSON (generated text usually is not)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None

