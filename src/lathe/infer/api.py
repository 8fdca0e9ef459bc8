"""`lathe api CONFIG`: an OpenAI-compatible chat server (FastAPI + uvicorn) over the chat engine.

Any OpenAI client can talk to a tuned model: `GET /v1/models`, `POST /v1/chat/completions`
(streamed as server-sent events or not, with tool calls). Requests are turned into lathe's
messages (`user`/`assistant`/`function`/`observation`, system and tools apart) and rendered by
the same template the model was trained with. See docs/api.md.

Two choices worth knowing:
- Generation is serialised by an async gate in front of the engine, not only by the engine's
  lock: waiting requests then queue in the event loop instead of each holding a worker thread,
  so the server keeps answering (and a stream holding the engine can never be starved of the
  thread it needs to go on).
- Every error leaves in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`, so
  clients raise their usual exceptions; a bad request is a 400 naming the field, never a 500.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.formats import TOOL_RESPONSE_JOIN
from ..data.schema import ASSISTANT, FUNCTION, OBSERVATION, USER
from ..data.templates.base import check_messages
from ..errors import LatheError
from .api_schema import AssistantMessage, ChatCompletionRequest, Content, ScoreRequest, SystemMessage, ToolMessage

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # loopback: exposing a model to the network is a choice made with API_HOST
DEFAULT_PORT = 8000
BEARER = HTTPBearer(auto_error=False)  # reads `Authorization: Bearer ...`; the key is checked in create_app


class APIError(Exception):
    """An error answered in OpenAI's shape with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ------------------------------------------------------------------ request -> lathe conversation


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


def _chunk(ident: str, created: int, model: str, delta: dict, finish: str | None = None) -> bytes:
    body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    return format_sse_event(data_str=json.dumps(body, ensure_ascii=False))


def _next_piece(iterator: Any) -> tuple[bool, Any]:
    """(True, piece) or (False, the generator's return value): the engine may return its final Response."""
    try:
        return True, next(iterator)
    except StopIteration as stop:
        return False, stop.value


# ------------------------------------------------------------------ the app


def create_app(engine: Any, api_key: str | None = None, model_name: str | None = None,
               cors_origins: list[str] | None = None) -> FastAPI:
    """The FastAPI app over `engine` (anything with BaseEngine's chat/stream_chat/count_prompt_tokens/
    max_length/template/model_name), requiring `Authorization: Bearer <api_key>` when a key is given."""
    served = model_name or engine.model_name
    started = int(time.time())
    gate = anyio.Lock()  # one generation at a time, queued in the event loop (see module docstring)
    app = FastAPI(title="lathe OpenAI-compatible API", version="1")
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"])
    _add_error_handlers(app)

    def authorize(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if api_key is None:
            return
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "Missing or incorrect API key: send `Authorization: Bearer <API_KEY>`.",
                           code="invalid_api_key")

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list",
                "data": [{"id": served, "object": "model", "created": started, "owned_by": "lathe"}]}

    @app.post("/v1/score/evaluation", dependencies=[Depends(authorize)])
    async def score(request: ScoreRequest) -> dict[str, Any]:
        """Reward-model scores, for a model folder trained with `stage: rm` (LLaMA-Factory's endpoint)."""
        async with gate:
            scores = await run_in_threadpool(engine.get_scores, request.messages)
        return {"id": f"scoreval-{uuid.uuid4().hex[:24]}", "model": served, "scores": scores}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(request: ChatCompletionRequest):
        prompt = to_prompt(request)
        options = generation_options(request)
        too_long = getattr(engine, "surely_too_long", None)
        if too_long is not None and too_long(prompt.messages, prompt.system, prompt.tools):
            raise APIError(400, f"The prompt cannot fit the model's context of {engine.max_length} tokens: "
                           f"shorten the messages.", param="messages", code="context_length_exceeded")
        prompt_tokens = await run_in_threadpool(engine.count_prompt_tokens, prompt.messages, prompt.system,
                                                prompt.tools)
        if prompt_tokens >= engine.max_length:
            raise APIError(400, f"The prompt has {prompt_tokens} tokens, but the model's context is "
                           f"{engine.max_length} tokens: shorten the messages.", param="messages",
                           code="context_length_exceeded")
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            events = _stream(ident, created, prompt, options, prompt_tokens, include_usage)
            return EventSourceResponse(events)
        async with gate:
            responses = await run_in_threadpool(engine.chat, prompt.messages, prompt.system, prompt.tools,
                                                **options)
        completion_tokens = sum(r.completion_tokens for r in responses)
        return {
            "id": ident, "object": "chat.completion", "created": created, "model": served,
            "choices": [choice_of(engine, k, r, prompt) for k, r in enumerate(responses)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    async def _stream(ident: str, created: int, prompt: Prompt, options: dict, prompt_tokens: int,
                      include_usage: bool) -> AsyncIterator[bytes]:
        """Chunks, then `[DONE]`. An error after the response has begun goes out as an `error` event
        (the status line is already sent), which the openai client raises as an APIError."""
        try:
            async with gate:
                yield _chunk(ident, created, served, {"role": "assistant", "content": ""})
                if prompt.tools:
                    # Whether the answer is a call is only known once it is complete: generate it whole.
                    (response,) = await run_in_threadpool(engine.chat, prompt.messages, prompt.system,
                                                          prompt.tools, **options)
                    for event in _whole_answer_chunks(ident, created, served, choice_of(engine, 0, response, prompt)):
                        yield event
                    completion_tokens = response.completion_tokens
                else:
                    text, final = "", None
                    iterator = engine.stream_chat(prompt.messages, prompt.system, prompt.tools, **options)
                    try:
                        while True:
                            more, value = await run_in_threadpool(_next_piece, iterator)
                            if not more:
                                final = value
                                break
                            text += value
                            yield _chunk(ident, created, served, {"content": value})
                    finally:
                        iterator.close()  # releases the engine's lock when the client went away mid-stream
                    finish_reason = getattr(final, "finish_reason", None) or "stop"
                    completion_tokens = getattr(final, "completion_tokens", None)
                    if completion_tokens is None:
                        completion_tokens = _count_tokens(engine, text)
                    yield _chunk(ident, created, served, {}, finish_reason)
            if include_usage:
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}
                body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": served,
                        "choices": [], "usage": usage}
                yield format_sse_event(data_str=json.dumps(body))
        except Exception as err:
            if isinstance(err, LatheError):
                body = error_body(str(err))
            else:
                logger.exception("streamed generation failed")
                body = error_body("The server failed while generating; see its log.", "server_error")
            yield format_sse_event(data_str=json.dumps(body))
        yield format_sse_event(data_str="[DONE]")

    return app


def _whole_answer_chunks(ident: str, created: int, model: str, choice: dict[str, Any]) -> list[bytes]:
    """A complete answer as stream chunks: one with its text or its tool calls, one with the finish reason."""
    message = choice["message"]
    if message.get("tool_calls"):
        delta = {"tool_calls": [{"index": k, **call} for k, call in enumerate(message["tool_calls"])]}
    else:
        delta = {"content": message["content"]}
    return [_chunk(ident, created, model, delta), _chunk(ident, created, model, {}, choice["finish_reason"])]


def _count_tokens(engine: Any, text: str) -> int:
    """Completion tokens of a streamed answer when the engine does not report them (re-tokenized: close, not exact)."""
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None or not text:
        return 0
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape; validation errors as 400 naming the field, crashes as 500 without a trace."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse(error_body(err.message, err.type, err.param, err.code), err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, err: RequestValidationError) -> JSONResponse:
        errors = err.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            message = f"The request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}."
            return JSONResponse(error_body(message, code="invalid_json"), 400)
        by_param: dict[str, list[str]] = {}  # a union reports one error per member: say them as alternatives
        for e in errors:
            by_param.setdefault(_param(e.get("loc", ())), []).append(e["msg"])
        described = [f"{where}: {', or '.join(msgs)}" if where else ", or ".join(msgs)
                     for where, msgs in list(by_param.items())[:3]]
        more = f" (and {len(by_param) - 3} more)" if len(by_param) > 3 else ""
        message = "Invalid request: " + "; ".join(described) + more + "."
        return JSONResponse(error_body(message, param=_param(first.get("loc", ())) or None), 400)

    @app.exception_handler(LatheError)
    async def lathe_error(_: Request, err: LatheError) -> JSONResponse:
        return JSONResponse(error_body(str(err)), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return JSONResponse(error_body(str(err.detail), code=code), err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def crash(_: Request, err: Exception) -> JSONResponse:
        # Starlette re-raises after this handler, so uvicorn logs the traceback; the client never sees it.
        return JSONResponse(error_body("The server failed on this request; see its log.", "server_error"), 500)


UNION_MEMBER = re.compile(r"str|int|float|bool|none|.*\[.*\]")


def _param(loc: tuple | list) -> str:
    """pydantic's error location as OpenAI's param.

    ("body", "messages", 0, "user", "content", "str") -> "messages[0].content"
    """
    out = ""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    for k, part in enumerate(parts):
        if isinstance(part, int):
            out += f"[{part}]"
        elif k > 0 and isinstance(parts[k - 1], int) and part in ("system", "developer", "user", "assistant", "tool"):
            continue  # the discriminator tag pydantic inserts after a message index
        elif UNION_MEMBER.fullmatch(str(part)):
            continue  # which member of a union failed ("str", "list[ContentPart]"): not a field
        else:
            out += f".{part}" if out else str(part)
    return out


# ------------------------------------------------------------------ serving


def run_api(cfg: RunConfig) -> None:
    """Load the model of `cfg` and serve it until interrupted.

    Settings come from LLaMA-Factory's environment variables, so existing deployments keep working:
    API_HOST (default 127.0.0.1), API_PORT (8000), API_KEY (unset: no auth), API_MODEL_NAME
    (default: model_name_or_path), plus API_CORS_ORIGINS (comma-separated; unset: no CORS).
    """
    import uvicorn

    from .engine import create_engine

    host = os.environ.get("API_HOST", DEFAULT_HOST)
    port_text = os.environ.get("API_PORT", str(DEFAULT_PORT))
    try:
        port = int(port_text)
    except ValueError:
        raise LatheError(f"API_PORT must be a port number, got {port_text!r}.") from None
    api_key = os.environ.get("API_KEY") or None
    origins = [o.strip() for o in os.environ.get("API_CORS_ORIGINS", "").split(",") if o.strip()]
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        logger.warning("Serving on %s without API_KEY: anyone who can reach this address can use the model.", host)
    engine = create_engine(cfg)
    app = create_app(engine, api_key=api_key, model_name=os.environ.get("API_MODEL_NAME") or None,
                     cors_origins=origins or None)
    print(f"Serving {engine.model_name} at http://{host}:{port}/v1 (docs: http://{host}:{port}/docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
