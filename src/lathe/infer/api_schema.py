"""The request body of OpenAI's chat completions endpoint, as pydantic models.

Only the fields lathe acts on are declared; other OpenAI fields (`seed`, `user`,
`presence_penalty`, ...) are accepted and ignored, so stock clients work unchanged. Fields
whose meaning lathe cannot honour (`logprobs`, a forced `tool_choice`, a JSON
`response_format`) are refused in `api_requests.py` rather than silently ignored.

Messages are a union discriminated by `role`, so an unknown role is reported as such
("does not match any of the expected tags: 'system', ...") instead of as five unrelated errors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator


class MediaURL(BaseModel):
    """`image_url` / `video_url`: a data: URL, a local path or file:// URL, or an http(s) URL (api_requests.py
    says which are taken)."""

    url: str = Field(min_length=1)
    detail: str | None = None  # OpenAI's resolution hint; the model's processor decides the resolution


class InputAudio(BaseModel):
    """`input_audio`: base64 audio in one of OpenAI's formats."""

    data: str = Field(min_length=1)
    format: str


class ContentPart(BaseModel):
    """One part of a message's content: `text`, or `image_url` / `video_url` / `input_audio` for a model that takes
    media. The type is a plain string so an unknown one is refused in api_requests.py, naming the part."""

    type: str
    text: str | None = None
    image_url: MediaURL | None = None
    video_url: MediaURL | None = None
    input_audio: InputAudio | None = None

    @field_validator("image_url", "video_url", mode="before")
    @classmethod
    def _bare_url(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value  # some clients send the URL itself


# OpenAI lets content be a string or a list of parts.
Content = str | list[ContentPart]


class FunctionCall(BaseModel):
    name: str = Field(min_length=1)
    arguments: str | dict[str, Any] = "{}"  # OpenAI sends JSON text; some clients send the object


class ToolCallIn(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(BaseModel):
    role: Literal["system", "developer"]
    content: Content


class UserMessage(BaseModel):
    role: Literal["user"]
    content: Content


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCallIn] | None = None

    @model_validator(mode="after")
    def _has_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs `content` or `tool_calls`")
        return self


class ToolMessage(BaseModel):
    role: Literal["tool"]
    content: Content
    tool_call_id: str | None = None


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class FunctionDef(BaseModel):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Unset sampling fields fall back to the run config's `generating` options."""

    model: str = ""  # echoed back as the served name; one model is served
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops or None


class ScoreRequest(BaseModel):
    """POST /v1/score/evaluation: texts (a prompt with its answer each) to score with a reward model."""

    model: str | None = None
    messages: list[str] = Field(min_length=1)
    max_length: int | None = Field(default=None, ge=1)
