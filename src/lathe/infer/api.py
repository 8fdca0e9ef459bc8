"""`lathe api CONFIG`: an OpenAI-compatible chat server (FastAPI + uvicorn) over the chat engine.

Any OpenAI client can talk to a tuned model: `GET /v1/models`, `POST /v1/chat/completions`
(streamed as server-sent events or not, with tool calls). Requests are turned into lathe's
messages (`user`/`assistant`/`function`/`observation`, system and tools apart) by
`api_requests.py` and rendered by the same template the model was trained with. See docs/api.md.

Two choices worth knowing:
- Generation is serialised by an async gate in front of the engine, not only by the engine's
  lock: waiting requests then queue in the event loop instead of each holding a worker thread,
  so the server keeps answering (and a stream holding the engine can never be starved of the
  thread it needs to go on).
- Media parts (images, video, audio) are read only from data: URLs unless LATHE_API_MEDIA_DIRS /
  LATHE_API_REMOTE_MEDIA allow local files / downloads (api_requests.py), and only for a model that takes them.
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

from ..errors import LatheError
from .api_requests import APIError, MediaRules, Prompt, choice_of, error_body, generation_options, to_prompt
from .api_schema import ChatCompletionRequest, ScoreRequest

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # loopback: exposing a model to the network is a choice made with API_HOST
DEFAULT_PORT = 8000
BEARER = HTTPBearer(auto_error=False)  # reads `Authorization: Bearer ...`; the key is checked in create_app


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
               cors_origins: list[str] | None = None, media_rules: MediaRules | None = None) -> FastAPI:
    """The FastAPI app over `engine` (anything with BaseEngine's chat/stream_chat/count_prompt_tokens/
    max_length/template/model_name), requiring `Authorization: Bearer <api_key>` when a key is given.
    `media_rules`: where media parts may come from (default: the LATHE_API_MEDIA_DIRS / LATHE_API_REMOTE_MEDIA
    environment); the engine's `media_kinds` say which kinds its model takes."""
    served = model_name or engine.model_name
    rules = media_rules or MediaRules.from_env()
    media_kinds = tuple(getattr(engine, "media_kinds", ()) or ())
    refusal = engine.no_media_reason() if hasattr(engine, "no_media_reason") else None
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
        # in a worker thread: media parts are decoded (or read, or downloaded) here
        prompt = await run_in_threadpool(to_prompt, request, media_kinds, rules, refusal)
        options = generation_options(request)
        too_long = getattr(engine, "surely_too_long", None)
        if too_long is not None and too_long(prompt.messages, prompt.system, prompt.tools):
            raise APIError(400, f"The prompt cannot fit the model's context of {engine.max_length} tokens: "
                           f"shorten the messages.", param="messages", code="context_length_exceeded")
        try:  # with media, the count expands them: a file the model's loaders cannot read is refused here
            prompt_tokens = await run_in_threadpool(engine.count_prompt_tokens, prompt.messages, prompt.system,
                                                    prompt.tools, **prompt.media())
        except LatheError as err:
            if not prompt.media():
                raise
            raise APIError(400, str(err), param="messages") from None
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
                                                **prompt.media(), **options)
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
                                                          prompt.tools, **prompt.media(), **options)
                    for event in _whole_answer_chunks(ident, created, served, choice_of(engine, 0, response, prompt)):
                        yield event
                    completion_tokens = response.completion_tokens
                else:
                    text, final = "", None
                    iterator = engine.stream_chat(prompt.messages, prompt.system, prompt.tools, **prompt.media(),
                                                  **options)
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
    (default: model_name_or_path), plus API_CORS_ORIGINS (comma-separated; unset: no CORS) and, for a model
    that takes media, LATHE_API_MEDIA_DIRS (folders local media files may be read from) and
    LATHE_API_REMOTE_MEDIA=1 (download http(s) media URLs); see api_requests.py.
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
