"""The OpenAI chat-completions request as lathe's conversation, and an engine's answers back in OpenAI's shapes.

The API server (api.py) is only transport; what an OpenAI request means for lathe is here:
leading system (or developer) messages become `system`; assistant messages with `tool_calls`
become `function` turns; consecutive `tool` messages (results of parallel calls) join into one
`observation` turn, as lathe's dataset converters join them; sampling fields become engine
overrides. Anything the template could not render, or lathe cannot honour, is an `APIError`
(a 400 naming the field), never a silent change of the request.

Media parts, for a model that takes them: `{"type": "image_url", "image_url": {"url": ...}}`,
`{"type": "video_url", "video_url": {"url": ...}}` and `{"type": "input_audio", "input_audio": {"data": <base64>,
"format": "wav" | "mp3"}}` become `<image>` / `<video>` / `<audio>` placeholders at their place in the user
message's text, and the items travel in the `Prompt`. A URL may be:
- a data: URL (base64), always taken;
- a local path or file:// URL, only inside the folders of the environment variable LATHE_API_MEDIA_DIRS
  (`os.pathsep`-separated; unset: no local file is read; a relative path is taken in its first folder), since
  a client must not read the server's files;
- an http(s) URL, only when LATHE_API_REMOTE_MEDIA=1 (the server then downloads what clients name, which can
  reach its own network: turn it on for trusted clients only).
Each item may be at most 20 MiB once decoded (`MediaRules.max_bytes`). Anything else is a 400 naming the part.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..data.formats import TOOL_RESPONSE_JOIN
from ..data.media.plugins import PLACEHOLDERS
from ..data.sample import ASSISTANT, FUNCTION, OBSERVATION, USER
from ..data.templates.base import check_messages
from ..errors import LatheError
from .api_schema import AssistantMessage, ChatCompletionRequest, Content, ContentPart, SystemMessage, ToolMessage


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
    """A request as the engine takes it: `images` / `videos` / `audios` hold one item (bytes, or the path of a
    file in an allowed folder) per placeholder of their kind in `messages`, in order."""

    messages: list[dict[str, str]]
    system: str
    tools: str
    images: list[Any] = field(default_factory=list)
    videos: list[Any] = field(default_factory=list)
    audios: list[Any] = field(default_factory=list)

    def media(self) -> dict[str, list[Any]]:
        """The engine's media keyword arguments, only those with items (a text engine takes none)."""
        return {key: value for key, value in (("images", self.images), ("videos", self.videos),
                                              ("audios", self.audios)) if value}


# ------------------------------------------------------------------ media parts

MEDIA_DIRS_ENV = "LATHE_API_MEDIA_DIRS"
REMOTE_MEDIA_ENV = "LATHE_API_REMOTE_MEDIA"
MAX_MEDIA_BYTES = 20 * 1024 * 1024
REMOTE_TIMEOUT_S = 30
AUDIO_FORMATS = ("wav", "mp3")  # OpenAI's input_audio formats
PART_KINDS = {"image_url": "image", "video_url": "video", "input_audio": "audio"}  # part type -> media kind
TEXT_ONLY = "lathe serves this model for text only"


@dataclass(frozen=True)
class MediaRules:
    """Where the media of a request may come from (see the module docstring)."""

    dirs: tuple[str, ...] = ()  # real paths of the folders local files may be read from
    remote: bool = False  # http(s) URLs are downloaded
    max_bytes: int = MAX_MEDIA_BYTES  # per item, decoded

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MediaRules:
        """The rules of LATHE_API_MEDIA_DIRS and LATHE_API_REMOTE_MEDIA; a listed folder that does not exist
        stops the server at its start."""
        environ = os.environ if environ is None else environ
        dirs = []
        for entry in environ.get(MEDIA_DIRS_ENV, "").split(os.pathsep):
            if not entry.strip():
                continue
            folder = os.path.realpath(os.path.expanduser(entry.strip()))
            if not os.path.isdir(folder):
                raise LatheError(f"{MEDIA_DIRS_ENV}: {entry.strip()} is not a folder; list existing folders, "
                                 f"separated by {os.pathsep!r}.")
            dirs.append(folder)
        remote = environ.get(REMOTE_MEDIA_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
        return cls(tuple(dirs), remote)


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # another drive (Windows)
        return False


class _Parts:
    """Reads the content of messages, gathering the media parts of a request in order."""

    def __init__(self, kinds: Collection[str], rules: MediaRules, refusal: str) -> None:
        self.kinds, self.rules, self.refusal = tuple(kinds), rules, refusal
        self.media: dict[str, list[Any]] = {kind: [] for kind in PLACEHOLDERS}

    def text(self, content: Content | None, param: str, media_allowed: bool = False) -> str:
        """The content as text; a media part becomes its placeholder, text parts are joined by newlines."""
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        out, after_text = "", False
        for k, part in enumerate(content):
            where = f"{param}[{k}]"
            if part.type == "text" and part.text is not None:
                out += ("\n" if after_text else "") + part.text
                after_text = True
                continue
            kind = PART_KINDS.get(part.type)
            if kind is None or kind not in self.kinds:
                raise APIError(400, f"Content part of type {part.type!r} is not supported: {self._takes()}.",
                               param=where)
            if not media_allowed:
                raise APIError(400, f"A {part.type!r} part belongs in a user message.", param=where)
            self.media[kind].append(self._item(kind, part, where))
            out += PLACEHOLDERS[kind]
            after_text = False
        return out

    def _takes(self) -> str:
        if not self.kinds:
            return self.refusal + "; send only {\"type\": \"text\", \"text\": ...} parts"
        types = ["text"] + [t for t, kind in PART_KINDS.items() if kind in self.kinds]
        return f"the served model takes {', '.join(self.kinds)}; send parts of type {', '.join(types)}"

    def _item(self, kind: str, part: ContentPart, where: str) -> Any:
        if kind == "audio":
            audio = part.input_audio
            if audio is None:
                raise APIError(400, "An input_audio part needs `input_audio: {\"data\": <base64>, \"format\": "
                               "\"wav\"}`.", param=f"{where}.input_audio")
            if audio.format.lower() not in AUDIO_FORMATS:
                raise APIError(400, f"input_audio format {audio.format!r} is not one of {', '.join(AUDIO_FORMATS)}.",
                               param=f"{where}.input_audio.format")
            return self._base64(audio.data, f"{where}.input_audio.data")
        url_part = part.image_url if kind == "image" else part.video_url
        if url_part is None:
            raise APIError(400, f"A {part.type} part needs `{part.type}: {{\"url\": ...}}`.", param=f"{where}.{part.type}")
        return self._url(url_part.url, f"{where}.{part.type}.url")

    def _url(self, url: str, where: str) -> Any:
        lower = url[:8].lower()
        if lower.startswith("data:"):
            head, sep, payload = url.partition(",")
            if not sep:
                raise APIError(400, "A data: URL needs a ',' before its data.", param=where)
            if head.lower().endswith(";base64"):
                return self._base64(payload, where)
            return self._sized(urllib.parse.unquote_to_bytes(payload), where)
        if lower.startswith(("http://", "https://")):
            if not self.rules.remote:
                raise APIError(400, "This server does not download media from URLs: send the file as a data: URL "
                               f"(base64), or start the server with {REMOTE_MEDIA_ENV}=1.", param=where)
            return self._download(url, where)
        if "://" in url[:16] and not lower.startswith("file://"):
            raise APIError(400, f"URL scheme of {url[:40]!r} is not taken: use data:, file:// or a local path.",
                           param=where)
        return self._local(url, where)

    def _base64(self, data: str, where: str) -> bytes:
        data = "".join(data.split())
        if len(data) // 4 * 3 > self.rules.max_bytes + 3:  # refused before decoding megabytes for nothing
            raise self._too_large(len(data) // 4 * 3, where)
        try:
            return self._sized(base64.b64decode(data, validate=True), where)
        except (binascii.Error, ValueError) as error:
            raise APIError(400, f"The data is not valid base64: {error}.", param=where) from None

    def _sized(self, data: bytes, where: str) -> bytes:
        if len(data) > self.rules.max_bytes:
            raise self._too_large(len(data), where)
        return data

    def _too_large(self, size: int, where: str) -> APIError:
        return APIError(400, f"The item has {size / 2**20:.1f} MiB; this server takes at most "
                        f"{self.rules.max_bytes / 2**20:.1f} MiB per image, video or audio.", param=where)

    def _local(self, url: str, where: str) -> str:
        if not self.rules.dirs:
            raise APIError(400, "This server reads no local files: send the file as a data: URL (base64), or start "
                           f"the server with {MEDIA_DIRS_ENV} naming the folders it may read.", param=where)
        path = urllib.request.url2pathname(urllib.parse.urlparse(url).path) if url[:7].lower() == "file://" else url
        path = os.path.expanduser(path)
        real = os.path.realpath(path if os.path.isabs(path) else os.path.join(self.rules.dirs[0], path))
        if not any(_inside(real, folder) for folder in self.rules.dirs):
            raise APIError(400, f"{url} is outside the folders this server reads media from ({MEDIA_DIRS_ENV}).",
                           param=where)
        if not os.path.isfile(real):
            raise APIError(400, f"{url}: no such file.", param=where)
        size = os.path.getsize(real)
        if size > self.rules.max_bytes:
            raise self._too_large(size, where)
        return real

    def _download(self, url: str, where: str) -> bytes:
        request = urllib.request.Request(url, headers={"User-Agent": "lathe"})
        try:
            with urllib.request.urlopen(request, timeout=REMOTE_TIMEOUT_S) as response:
                data = response.read(self.rules.max_bytes + 1)
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise APIError(400, f"{url} could not be downloaded: {error}.", param=where) from None
        return self._sized(data, where)


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


def to_prompt(request: ChatCompletionRequest, media_kinds: Collection[str] = (), rules: MediaRules | None = None,
              refusal: str | None = None) -> Prompt:
    """OpenAI messages -> lathe's conversation; 400 for anything the template could not render.

    Leading system (or developer) messages become `system`; an assistant message with
    `tool_calls` becomes a `function` turn (its text, if any, is dropped as the templates have no
    place for it); consecutive `tool` messages (results of parallel calls) join into one
    `observation` turn, as lathe's dataset converters join them. `media_kinds`: what the served
    model takes ("image", "video", "audio"); media parts of user messages are read by `rules`
    (see the module docstring), others refused with `refusal` (why the server takes none).
    """
    parts = _Parts(media_kinds, rules or MediaRules(), refusal or TEXT_ONLY)
    system_parts: list[str] = []
    messages: list[dict[str, str]] = []
    for i, message in enumerate(request.messages):
        param = f"messages[{i}].content"
        if isinstance(message, SystemMessage):
            if messages:
                raise APIError(400, f"Message {i} is a {message.role} message after the conversation started; "
                               "put system instructions at the start.", param=f"messages[{i}].role")
            system_parts.append(parts.text(message.content, param))
        elif isinstance(message, ToolMessage):
            text = parts.text(message.content, param)
            if messages and messages[-1]["role"] == OBSERVATION:
                messages[-1]["content"] += TOOL_RESPONSE_JOIN + text
            else:
                messages.append({"role": OBSERVATION, "content": text})
        elif isinstance(message, AssistantMessage) and message.tool_calls:
            messages.append({"role": FUNCTION, "content": _function_turn(message, i)})
        else:
            role = ASSISTANT if isinstance(message, AssistantMessage) else USER
            messages.append({"role": role, "content": parts.text(message.content, param, media_allowed=role == USER)})
    try:
        check_messages(messages, for_prompt=True)
    except LatheError as err:
        raise APIError(400, f"{err} (After system messages: user and tool messages are prompt turns, "
                       "assistant messages answer turns; the last message must be user or tool.)",
                       param="messages") from None
    tools = ""
    if request.tools and request.tool_choice != "none":
        tools = json.dumps([t.function.model_dump(exclude_none=True) for t in request.tools], ensure_ascii=False)
    return Prompt(messages, "\n".join(system_parts), tools, parts.media["image"], parts.media["video"],
                  parts.media["audio"])


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
