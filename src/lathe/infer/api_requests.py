"""The OpenAI chat-completions request as lathe's conversation, and an engine's answers back in OpenAI's shapes.

The API server (api.py) is only transport; what an OpenAI request means for lathe is here:
leading system (or developer) messages become `system`; assistant messages with `tool_calls`
become `function` turns; consecutive `tool` messages (results of parallel calls) join into one
`observation` turn, as lathe's dataset converters join them; sampling fields become engine
overrides. Anything the template could not render, or lathe cannot honour, is an `APIError`
(a 400 naming the field), never a silent change of the request.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from ..data.formats import TOOL_RESPONSE_JOIN
from ..data.sample import ASSISTANT, FUNCTION, OBSERVATION, USER
from ..data.templates.base import check_messages
from ..errors import LatheError
from .api_schema import AssistantMessage, ChatCompletionRequest, Content, SystemMessage, ToolMessage


class APIError(Exception):
    """An error answered in OpenAI's shape with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass
class Prompt:
    """A request as the engine takes it."""

    messages: list[dict[str, str]]
    system: str
    tools: str


def _text(content: Content | None, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for k, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise APIError(400, f"Content part of type {part.type!r} is not supported: lathe serves text models, "
                           "send only {\"type\": \"text\", \"text\": ...} parts.", param=f"{param}[{k}]")
        texts.append(part.text)
    return "\n".join(texts)


def _function_turn(message: AssistantMessage, i: int) -> str:
    """An assistant's `tool_calls` as a lathe `function` turn: JSON of one call, or of a list of them."""
    calls = []
    for j, call in enumerate(message.tool_calls or []):
        arguments = call.function.arguments
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except json.JSONDecodeError:
                raise APIError(400, f"The arguments of tool call {j} in message {i} are not valid JSON: "
                               f"{call.function.arguments[:200]!r}.",
                               param=f"messages[{i}].tool_calls[{j}].function.arguments") from None
        calls.append({"name": call.function.name, "arguments": arguments})
    return json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)


def to_prompt(request: ChatCompletionRequest) -> Prompt:
    """OpenAI messages -> lathe's conversation; 400 for anything the template could not render.

    Leading system (or developer) messages become `system`; an assistant message with
    `tool_calls` becomes a `function` turn (its text, if any, is dropped as the templates have no
    place for it); consecutive `tool` messages (results of parallel calls) join into one
    `observation` turn, as lathe's dataset converters join them.
    """
    system_parts: list[str] = []
    messages: list[dict[str, str]] = []
    for i, message in enumerate(request.messages):
        param = f"messages[{i}].content"
        if isinstance(message, SystemMessage):
            if messages:
                raise APIError(400, f"Message {i} is a {message.role} message after the conversation started; "
                               "put system instructions at the start.", param=f"messages[{i}].role")
            system_parts.append(_text(message.content, param))
        elif isinstance(message, ToolMessage):
            text = _text(message.content, param)
            if messages and messages[-1]["role"] == OBSERVATION:
                messages[-1]["content"] += TOOL_RESPONSE_JOIN + text
            else:
                messages.append({"role": OBSERVATION, "content": text})
        elif isinstance(message, AssistantMessage) and message.tool_calls:
            messages.append({"role": FUNCTION, "content": _function_turn(message, i)})
        else:
            role = ASSISTANT if isinstance(message, AssistantMessage) else USER
            messages.append({"role": role, "content": _text(message.content, param)})
    try:
        check_messages(messages, for_prompt=True)
    except LatheError as err:
        raise APIError(400, f"{err} (After system messages: user and tool messages are prompt turns, "
                       "assistant messages answer turns; the last message must be user or tool.)",
                       param="messages") from None
    tools = ""
    if request.tools and request.tool_choice != "none":
        tools = json.dumps([t.function.model_dump(exclude_none=True) for t in request.tools], ensure_ascii=False)
    return Prompt(messages, "\n".join(system_parts), tools)


def generation_options(request: ChatCompletionRequest) -> dict[str, Any]:
    """The request's sampling fields as engine overrides; unset ones keep the run config's values.

    `temperature: 0` means greedy decoding (as OpenAI documents it), any other temperature sampling.
    """
    if request.logprobs:
        raise APIError(400, "`logprobs` is not supported by lathe's server.", param="logprobs")
    if request.response_format and request.response_format.get("type", "text") != "text":
        raise APIError(400, "Only `response_format: {\"type\": \"text\"}` is supported; lathe does not "
                       "constrain output to JSON.", param="response_format")
    if request.tool_choice not in (None, "auto", "none"):
        raise APIError(400, "`tool_choice` can be \"auto\" or \"none\"; lathe cannot force a tool call.",
                       param="tool_choice")
    if request.stream and request.n > 1:
        raise APIError(400, "Streaming returns one answer; use `n: 1` with `stream: true`.", param="n")
    options: dict[str, Any] = {}
    if request.temperature is not None:
        options.update({"do_sample": False} if request.temperature == 0
                       else {"do_sample": True, "temperature": request.temperature})
    if request.top_p is not None:
        options["top_p"] = request.top_p
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens:
        options["max_new_tokens"] = max_tokens
    if request.stop:
        options["stop"] = request.stop
    if request.n > 1:
        options["num_return_sequences"] = request.n
    return options


# ------------------------------------------------------------------ engine answers -> OpenAI shapes


def tool_calls_of(engine: Any, response: Any, prompt: Prompt) -> list[dict[str, Any]] | None:
    """The answer's tool calls in OpenAI's shape (with ids), or None for a text answer or a request without tools."""
    if not prompt.tools:
        return None
    calls = getattr(response, "tool_calls", None) or engine.template.parse_tool_calls(response.text)
    if not calls:
        return None
    return [
        {"id": getattr(c, "id", "") or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
         "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def choice_of(engine: Any, index: int, response: Any, prompt: Prompt) -> dict[str, Any]:
    calls = tool_calls_of(engine, response, prompt)
    if calls:
        message = {"role": "assistant", "content": None, "tool_calls": calls}
        return {"index": index, "message": message, "finish_reason": "tool_calls", "logprobs": None}
    message = {"role": "assistant", "content": response.text}
    return {"index": index, "message": message, "finish_reason": response.finish_reason, "logprobs": None}
