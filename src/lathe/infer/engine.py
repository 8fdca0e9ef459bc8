"""The chat engines behind `lathe chat`, `lathe api` and the Board: one model, the training template.

Every backend shares `BaseEngine`: the prompt is rendered with the training template, stop
tokens and stop texts end the answer the same way, and tool calls are parsed with the
template's tool format, so switching `infer_backend` changes speed, never the conversation.

The Hugging Face backend (`huggingface`, the default) generates with `model.generate`;
streaming runs it in a background thread feeding a `TextIteratorStreamer`. One lock
serialises generation: a transformers model holds no per-request state, but two generations
interleaved on one CPU/GPU only slow each other down and two streamers must not share a
thread. vLLM and SGLang live in their own modules (`vllm_engine.py`, `sglang_engine.py`).

Images, video and audio (`chat(..., images=[...], videos=[...], audios=[...])`) are taken by the Hugging Face
backend when the model is a multimodal one (`model/multimodal.py`): the prompt is expanded and the media tensors
made as in training (`media.py`). Every other engine or model refuses them by name instead of dropping them.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from ..errors import LatheError
from ..model.adapters.common import split_names
from ..model.generation import generation_kwargs, stop_token_ids
from ..registry import INFER_BACKENDS, Choice
from ..data.media.encode import media_for_run
from .media import MEDIA_ARGS, Expanded, expand, gather, generate_inputs, has_media, has_placeholders

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)



@dataclass
class Response:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    tool_calls: list | None = None


def load_inference_tokenizer(cfg: "RunConfig"):
    """Tokenizer and template as training saw them (the template may add tokens and a pad)."""
    from ..data.loader import run_template
    from ..model.load import add_config_tokens, load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    template = run_template(cfg, tokenizer)
    template.fix_tokenizer(tokenizer)
    add_config_tokens(tokenizer, cfg.model)
    return tokenizer, template


def inference_dtype_config(cfg: "RunConfig") -> "RunConfig":
    """`infer_dtype` (when not auto) wins over `dtype` for serving, as in LLaMA-Factory."""
    import dataclasses

    if cfg.model.infer_dtype == "auto":
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype=cfg.model.infer_dtype))


def load_inference_model(cfg: "RunConfig", before_merge=None):
    """Tokenizer, template and model (adapters merged) exactly as training saw them.

    `before_merge(model)` may inspect the base model first (export refuses quantized ones).
    """
    from ..model.adapters.lora import adapter_location, load_adapters
    from ..model.load import load_model

    tokenizer, template = load_inference_tokenizer(cfg)
    model = load_model(inference_dtype_config(cfg), tokenizer)
    adapters = split_names(cfg.model.adapter_name_or_path)
    if before_merge is not None and adapters:
        before_merge(model)
    if adapters:
        model = load_adapters(model, adapters, trainable_last=False, **adapter_location(cfg.model))
    model.config.use_cache = cfg.model.use_kv_cache
    return tokenizer, template, model.eval()


def create_engine(cfg: "RunConfig") -> "BaseEngine":
    """The engine of `infer_backend`; a backend whose package is missing is refused by name."""
    import importlib.util

    backend = INFER_BACKENDS[cfg.model.infer_backend]
    if backend.package and importlib.util.find_spec(backend.package) is None:
        raise LatheError(
            f"infer_backend `{backend.name}` needs the `{backend.package}` package (and a CUDA GPU): "
            f"pip install {backend.package}, or use `infer_backend: {HUGGINGFACE.name}`, which runs everywhere."
        )
    return backend.engine(cfg)


# ---------------------------------------------------------------- engines outside this process (vllm, sglang)


def extra_engine_args(value: Any, key: str) -> dict[str, Any]:
    """`vllm_config` / `sglang_config`: a dict, or its JSON text (as the Board and the CLI give it)."""
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise LatheError(f"`{key}` must be a dict or its JSON text: {e}.") from None
    if not isinstance(value, dict):
        raise LatheError(f"`{key}` must be a dict of engine arguments, got {type(value).__name__}.")
    return value


def single_adapter(cfg: "RunConfig", backend: str) -> str | None:
    adapters = split_names(cfg.model.adapter_name_or_path)
    if len(adapters) > 1:
        raise LatheError(
            f"infer_backend {backend} serves one LoRA adapter, got {len(adapters)}: merge the others first "
            f"with `lathe export`, then serve the merged model with the last adapter."
        )
    return adapters[0] if adapters else None


def check_servable(cfg: "RunConfig", backend: str) -> None:
    """What these engines cannot do, refused before minutes of engine start-up."""
    if cfg.model.quantization_bit is not None:
        raise LatheError(
            f"infer_backend {backend} does not quantize on the fly (`quantization_bit`): serve a checkpoint "
            f"that is already quantized (GPTQ/AWQ), or use `infer_backend: huggingface`."
        )
    if cfg.generating.num_beams > 1:
        raise LatheError(f"infer_backend {backend} does not do beam search here: set `num_beams: 1`.")


class BaseEngine:
    """What every backend shares: the template's prompt, the context check and how an answer ends."""

    backend = "base"
    media_kinds: tuple[str, ...] = ()  # the kinds of media this engine's model takes ("image", "video", "audio")

    def __init__(self, cfg: "RunConfig", tokenizer, template) -> None:
        self.cfg = cfg
        self.tokenizer, self.template = tokenizer, template
        name = cfg.model.model_name_or_path
        self.model_name = Path(name).name if Path(name).expanduser().exists() else name  # no local paths in replies
        self.lock = threading.Lock()
        self.stop_ids = stop_token_ids(self.tokenizer, self.template)
        self.max_length = self.context_length()
        # No token spells more characters than the longest vocabulary entry, so a prompt with more
        # characters than max_length times that cannot fit: refused without tokenizing a megabyte.
        self.max_token_chars = max((len(t) for t in self.tokenizer.get_vocab()), default=1) or 1

    def context_length(self) -> int:
        """Longest prompt + answer in tokens: each backend reads it from its own model or settings."""
        raise NotImplementedError

    # ------------------------------------------------------------ prompts

    def encode(self, messages: list[dict], system: str = "", tools: str = "") -> list[int]:
        return self.template.encode_prompt(self.tokenizer, messages, system=system or "", tools=tools or "")

    def count_prompt_tokens(self, messages: list[dict], system: str = "", tools: str = "",
                            images: list | None = None, videos: list | None = None,
                            audios: list | None = None) -> int:
        """Tokens of the prompt, each media item counted as the tokens it expands to."""
        media = gather(images, videos, audios)
        if has_media(media):
            messages = self.media_messages(messages, media).messages
        return len(self.encode(messages, system, tools))

    # ------------------------------------------------------------ media

    def no_media_reason(self) -> str:
        """Why this engine takes no media: said by every refusal (the chat CLI, the API's 400)."""
        return f"infer_backend {self.backend} serves text only in lathe; serve with `infer_backend: huggingface` " \
               "to send images, video or audio"

    def refuse_media(self, images: list | None = None, videos: list | None = None,
                     audios: list | None = None) -> None:
        """Engines without media support call this first: media given to them stop the request by name."""
        media = gather(images, videos, audios)
        if has_media(media):
            given = ", ".join(f"{len(media[k])} {k}(s)" for k in MEDIA_ARGS if media[k])
            raise LatheError(f"{given} given, but {self.no_media_reason()}.")

    def media_messages(self, messages: list[dict], media: dict[str, list]) -> Expanded:
        """The conversation with its media expanded (`media.Expanded`); engines that take media override this."""
        self.refuse_media(**{MEDIA_ARGS[k]: v for k, v in media.items()})
        return Expanded(list(messages))

    def surely_too_long(self, messages: list[dict], system: str = "", tools: str = "") -> bool:
        chars = len(system or "") + len(tools or "") + sum(len(str(m.get("content") or "")) for m in messages)
        return chars > self.max_length * self.max_token_chars

    def _check_length(self, prompt_len: int) -> None:
        if prompt_len >= self.max_length:
            raise LatheError(
                f"The prompt has {prompt_len} tokens, but the model's context is {self.max_length}: shorten it."
            )

    def _max_new_tokens(self, requested: int | None, prompt_len: int) -> int:
        gen = self.cfg.generating
        limit = requested or (gen.max_new_tokens if gen.max_new_tokens and gen.max_new_tokens > 0
                              else gen.max_length - prompt_len)
        return max(1, min(int(limit), self.max_length - prompt_len))

    def finish(self, new: list[int], prompt_len: int, limit: int | None, tools: str,
               stop_texts: list[str]) -> Response:
        """The answer in `new` (generated ids) cut at a stop token or stop text, tool calls parsed."""
        ended = any(t in self.stop_ids for t in new)
        if ended:
            new = new[: next(i for i, t in enumerate(new) if t in self.stop_ids)]
        text = self.tokenizer.decode(new, skip_special_tokens=self.cfg.generating.skip_special_tokens)
        cut = min((text.find(w) for w in stop_texts if w and w in text), default=-1)
        if cut >= 0:  # OpenAI's `stop`: the stop text itself is not part of the answer
            text, ended = text[:cut], True
        text = text.strip()
        finish = "length" if (not ended and limit is not None and len(new) >= limit) else "stop"
        calls = self.template.parse_tool_calls(text) if tools else None
        return Response(text, prompt_len, len(new), finish, calls or None)

    def stream_text(self, growing: Iterator[list[int]], prompt_len: int, stop_texts: list[str]):
        """Yield the new text each time the generated ids grow; return the last ids.

        Engines that report the whole output so far (vLLM, SGLang) stream through here, so a
        stop text is never sent before it is recognised as one.
        """
        sent, tokens = "", []
        for tokens in growing:
            text = self.finish(tokens, prompt_len, None, "", stop_texts).text
            if text.startswith(sent) and len(text) > len(sent):
                yield text[len(sent):]
                sent = text
        return tokens

    def get_scores(self, texts: list[str]) -> list[float]:
        raise LatheError(
            f"Reward scores are computed by the huggingface backend only; serve the reward model with "
            f"`infer_backend: huggingface` (this server uses {self.backend})."
        )

class HuggingFaceEngine(BaseEngine):
    """`chat`, `stream_chat` and `get_scores` over one model loaded with transformers."""

    backend = "huggingface"

    def __init__(self, cfg: "RunConfig") -> None:
        tokenizer, template, self.model = load_inference_model(cfg)
        super().__init__(cfg, tokenizer, template)
        self.media = media_for_run(cfg, tokenizer, template)  # None: a text model
        self.media_kinds = self.media.plugin.kinds if self.media is not None else ()

    def no_media_reason(self) -> str:
        model_type = getattr(self.model.config, "model_type", "?")
        return (f"{self.model_name} is a text model (`{model_type}`) and takes no images, video or audio; "
                "serve a vision-language or audio model (docs/multimodal.md)")

    def media_messages(self, messages: list[dict], media: dict[str, list]) -> Expanded:
        if self.media is None:
            return super().media_messages(messages, media)
        if not has_media(media) and not has_placeholders(messages):
            return Expanded(list(messages))
        return expand(self.media, messages, media)

    def _inputs(self, messages: list[dict], system: str, tools: str, media: dict[str, list]
                ) -> tuple[list[int], dict[str, Any]]:
        """The prompt ids, checked against the context, and the media keyword arguments of `generate`."""
        expanded = self.media_messages(messages, media)
        ids = self.encode(expanded.messages, system, tools)
        self._check_length(len(ids))
        if not has_media(expanded.items):
            return ids, {}
        extra = {}
        for key, value in generate_inputs(self.media, expanded.items, ids).items():
            if isinstance(value, torch.Tensor):
                floating = value.is_floating_point()
                value = value.to(self.model.device, dtype=self.model.dtype if floating else None)
            extra[key] = value
        return ids, extra

    def context_length(self) -> int:
        positions = getattr(self.model.config, "max_position_embeddings", None)
        return int(positions or getattr(self.tokenizer, "model_max_length", 4096))

    def _kwargs(self, overrides: dict[str, Any], prompt_len: int) -> dict[str, Any]:
        gen = self.cfg.generating
        kwargs = generation_kwargs(gen)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        stop = overrides.pop("stop", None)
        n = overrides.pop("num_return_sequences", 1)
        kwargs.update(overrides)
        kwargs["use_cache"] = self.cfg.model.use_kv_cache
        if not kwargs.get("do_sample", False):
            for key in ("temperature", "top_p", "top_k"):
                kwargs.pop(key, None)
        if "max_new_tokens" in kwargs:
            kwargs.pop("max_length", None)
            kwargs["max_new_tokens"] = max(1, min(kwargs["max_new_tokens"], self.max_length - prompt_len))
        if n > 1:
            kwargs["num_return_sequences"] = n
            if not kwargs.get("do_sample") and kwargs.get("num_beams", 1) < n:
                kwargs["do_sample"] = True  # n different answers need sampling
        if stop:
            kwargs["stop_strings"] = list(stop)
            kwargs["tokenizer"] = self.tokenizer
        return kwargs

    # ------------------------------------------------------------ generation

    @torch.no_grad()
    def chat(self, messages: list[dict], system: str = "", tools: str = "", images: list | None = None,
             videos: list | None = None, audios: list | None = None, **gen: Any) -> list[Response]:
        """Answers to the conversation; `images` / `videos` / `audios`: paths, data: URLs, bytes or PIL images, one
        per `<image>` / `<video>` / `<audio>` of the messages (none written: at the start of the first user turn)."""
        ids, media = self._inputs(messages, system, tools, gather(images, videos, audios))
        kwargs = self._kwargs(gen, len(ids))
        input_ids = torch.tensor([ids], device=self.model.device)
        with self.lock:
            output = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id, **media, **kwargs,
            )
        limit = kwargs.get("max_new_tokens")
        stop_texts = list(gen.get("stop") or [])
        responses = [self._response(row, len(ids), limit, tools, stop_texts) for row in output]
        return responses

    def stream_chat(self, messages: list[dict], system: str = "", tools: str = "", images: list | None = None,
                    videos: list | None = None, audios: list | None = None, **gen: Any) -> Iterator[str]:
        """Yield text pieces as they are generated; the generator returns the final Response.

        Closing the generator early (a client that went away) stops the generation too, so
        the next request does not wait for an answer nobody reads. Media as in `chat`.
        """
        from transformers import (
            StoppingCriteria,
            StoppingCriteriaList,
            TextIteratorStreamer,
        )

        ids, media = self._inputs(messages, system, tools, gather(images, videos, audios))
        stop_texts = list(gen.get("stop") or [])
        kwargs = self._kwargs(gen, len(ids))
        kwargs.pop("num_return_sequences", None)
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=self.cfg.generating.skip_special_tokens
        )
        cancelled = threading.Event()

        class Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

        input_ids = torch.tensor([ids], device=self.model.device)
        outputs: list[torch.Tensor] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.no_grad():
                    outputs.append(self.model.generate(
                        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), eos_token_id=self.stop_ids,
                        pad_token_id=self.tokenizer.pad_token_id, streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([Cancel()]), **media, **kwargs,
                    ))
            except BaseException as e:  # surfaced to the reader below
                errors.append(e)
                streamer.end()

        with self.lock:
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            text = ""
            try:
                for piece in streamer:
                    if not piece:
                        continue
                    text += piece
                    yield piece
            finally:
                cancelled.set()
                thread.join()
        if errors:
            raise errors[0]
        return self._response(outputs[0][0], len(ids), kwargs.get("max_new_tokens"), tools, stop_texts)

    def _response(self, row: torch.Tensor, prompt_len: int, limit: int | None, tools: str,
                  stop_texts: list[str]) -> Response:
        return self.finish(row[prompt_len:].tolist(), prompt_len, limit, tools, stop_texts)

    @torch.no_grad()
    def get_scores(self, texts: list[str]) -> list[float]:
        """Scores of a reward model folder (`stage: rm`); other models have no score head."""
        from ..model.value_head import HEAD_FILE, load_reward_model

        folder = Path(self.cfg.model.adapter_name_or_path or self.cfg.model.model_name_or_path).expanduser()
        if not (folder / HEAD_FILE).exists():
            raise LatheError(f"{folder} is not a reward model ({HEAD_FILE} missing): train one with `stage: rm`.")
        if not hasattr(self, "_reward"):
            self._reward = load_reward_model(folder, base_model=self.cfg.model.model_name_or_path)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True)
        with self.lock:
            return self._reward(enc["input_ids"], enc["attention_mask"]).tolist()


# ---------------------------------------------------------------- the backends (`infer_backend`)


@dataclass(frozen=True, kw_only=True)
class Backend(Choice):
    """An inference backend: `engine(cfg)` starts it (its module is imported on use); `package` it needs."""

    engine: Callable[["RunConfig"], BaseEngine] = field(compare=False)
    package: str | None = None


def _vllm(cfg: "RunConfig") -> BaseEngine:
    from .vllm_engine import VllmEngine

    return VllmEngine(cfg)


def _sglang(cfg: "RunConfig") -> BaseEngine:
    from .sglang_engine import SglangEngine

    return SglangEngine(cfg)


HUGGINGFACE = INFER_BACKENDS.register(Backend(name="huggingface", help="transformers' generate, everywhere",
                                              engine=HuggingFaceEngine))
INFER_BACKENDS.register(Backend(name="vllm", help="vLLM, CUDA", engine=_vllm, package="vllm"))
INFER_BACKENDS.register(Backend(name="sglang", help="SGLang, CUDA", engine=_sglang, package="sglang"))
