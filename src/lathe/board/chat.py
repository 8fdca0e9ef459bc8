"""The chat panel shared by the Board's Chat tab and `lathe webchat`.

It drives the same engine (`create_engine`) as `lathe chat` and `lathe api` (template, adapters and stop
tokens exactly as in training) and streams its pieces into a Gradio chatbot. One engine per
Board process: a model is large, and two browser tabs chatting share it (the engine's lock
serialises generation).
"""

from __future__ import annotations

import gc
import json
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr

from ..config.coercion import coerce, type_hints
from ..config.options import GeneratingArguments
from ..errors import LatheError
from .form import FormField, group_fields
from .locales import t
from .widgets import Widgets

# Sampling settings shown next to the chat, in this order (generated from the schema).
SAMPLING = ("do_sample", "temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty")


# File endings of the media a chat may attach, by kind (what PyAV and Pillow decode).
MEDIA_ENDINGS = {
    "image": (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"),
    "video": (".mp4", ".avi", ".mov", ".mkv", ".webm"),
    "audio": (".wav", ".mp3", ".flac", ".ogg", ".m4a"),
}
PLACEHOLDER = {"image": "<image>", "video": "<video>", "audio": "<audio>"}


def media_kind(path: str) -> str:
    ending = Path(path).suffix.lower()
    for kind, endings in MEDIA_ENDINGS.items():
        if ending in endings:
            return kind
    known = ", ".join(e for endings in MEDIA_ENDINGS.values() for e in endings)
    raise LatheError(f"{Path(path).name}: not an image, video or audio file lathe knows ({known}).")


class ChatSession:
    """Holds the loaded engine and the conversation's media; load / unload / attach / stream."""

    def __init__(self) -> None:
        self.engine = None
        self.lock = threading.Lock()
        self.media: dict[str, list[str]] = {kind: [] for kind in PLACEHOLDER}

    def attach(self, text: str, paths: list[str]) -> str:
        """Keep uploaded files for this conversation; the message with a placeholder for each, in front."""
        kinds = [media_kind(p) for p in paths]
        taken = getattr(self.engine, "media_kinds", ())
        for kind in kinds:
            if kind not in taken:
                raise LatheError(f"the loaded model does not take {kind}s" + (
                    f" (it takes {', '.join(taken)})" if taken else " (it is a text model)"))
        for kind, path in zip(kinds, paths):
            self.media[kind].append(path)
        return "".join(PLACEHOLDER[k] for k in kinds) + text

    def clear(self) -> None:
        self.media = {kind: [] for kind in PLACEHOLDER}

    def load_config(self, cfg) -> str:
        from ..infer.engine import create_engine

        with self.lock:
            self.engine = None
            self.clear()
            gc.collect()
            self.engine = create_engine(cfg)
        adapters = cfg.model.adapter_name_or_path
        return f"{self.engine.model_name}" + (f" + {adapters}" if adapters else "")

    def unload(self) -> None:
        with self.lock:
            self.engine = None
        self.clear()
        gc.collect()

    def stream(self, history: list[dict], system: str, tools: str, gen: dict[str, Any]) -> Iterator[str]:
        if self.engine is None:
            raise LatheError("no model loaded")
        messages = [{"role": m["role"], "content": _text(m["content"])} for m in history]
        media = {f"{kind}s": paths for kind, paths in self.media.items() if paths}
        yield from self.engine.stream_chat(messages, system=system or "", tools=tools or "", **media, **gen)


def _text(content: Any) -> str:
    """Gradio may hand back message content as a list of parts; the engine takes text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(c) for c in content)
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    return str(content)


def check_tools(text: str) -> str:
    """The tools box holds a JSON list of function schemas (or one schema); '' when empty."""
    if not text or not text.strip():
        return ""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LatheError(f"tools: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}.") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise LatheError("tools: give a JSON list of function schemas ({\"name\": ..., \"parameters\": ...}).")
    return json.dumps(data, ensure_ascii=False)


def sampling_fields() -> list[FormField]:
    by_name = {f.name: f for f in group_fields("generating")}
    return [by_name[name] for name in SAMPLING]


def sampling_kwargs(fields: list[FormField], values: list[Any]) -> dict[str, Any]:
    """Widget values -> generation overrides, typed and checked like the config's own."""
    hints = type_hints(GeneratingArguments)
    out = {}
    for f, value in zip(fields, values):
        config_value = f.to_config(value)
        if config_value is None:
            continue
        out[f.name] = coerce(f.name, config_value, hints[f.name])
    return out


def build_chat_panel(w: Widgets, session: ChatSession, load_fn: Callable[..., Any] | None = None,
                     load_inputs: list[Any] | None = None, lang_pick: Any = None) -> dict[str, Any]:
    """Chatbot, message box, system prompt, tools, sampling; Load/Unload when `load_fn` is given.

    `load_fn(*load_inputs)` returns a RunConfig to load (the Board builds it from its form);
    without it the session must already hold an engine (`lathe webchat`). `lang_pick`: the Board's language
    menu, whose value the messages follow (else the page's language).
    """
    lang = w.lang
    picked = [lang_pick] if lang_pick is not None else []

    def split(values: tuple) -> tuple[tuple, str]:
        """(the handler's own inputs, the language): the menu's value comes last when there is a menu."""
        return (values[:-1], values[-1] or lang) if picked else (values, lang)
    status = gr.Markdown(elem_id="chat-status")
    if load_fn is not None:
        with gr.Row():
            load_btn = w.ui(gr.Button(t("load_model", lang), variant="primary", elem_id="chat-load"), "load_model", "value")
            unload_btn = w.ui(gr.Button(t("unload_model", lang), elem_id="chat-unload"), "unload_model", "value")
    with gr.Row():
        with gr.Column(scale=4):
            chatbot = w.ui(gr.Chatbot(elem_id="chatbot", height=420, label=t("tab_chat", lang)), "tab_chat")
            message = w.ui(gr.Textbox(label=t("message", lang), lines=2, elem_id="chat-message"), "message")
            attach = w.ui(gr.File(label=t("attach", lang), file_count="multiple", elem_id="chat-attach"), "attach")
            with gr.Row():
                send = w.ui(gr.Button(t("send", lang), variant="primary", elem_id="chat-send"), "send", "value")
                clear = w.ui(gr.Button(t("clear", lang), elem_id="chat-clear"), "clear", "value")
        with gr.Column(scale=2):
            system = w.ui(gr.Textbox(label=t("system", lang), lines=2, elem_id="chat-system"), "system")
            tools = w.ui(gr.Textbox(label=t("tools", lang), lines=3, elem_id="chat-tools"), "tools")
            fields = sampling_fields()
            with w.ui(gr.Accordion(t("sampling", lang), open=True), "sampling"):
                sampling = [w.field(f) for f in fields]

    def respond(history, text, files, system_text, tools_text, *rest):
        sampling_values, lang = split(rest)
        history = list(history or [])
        paths = [str(getattr(f, "name", f)) for f in (files or [])]
        if (not text or not text.strip()) and not paths:
            yield history, text, files, gr.skip()
            return
        try:
            if session.engine is None:
                raise LatheError(t("msg_no_model", lang))
            tools_json = check_tools(tools_text)
            gen = sampling_kwargs(fields, list(sampling_values))
            text = session.attach(text or "", paths) if paths else text
        except LatheError as e:
            yield history, text, files, f"**{t('msg_error', lang)}:** {e}"
            return
        history.append({"role": "user", "content": text})
        answer = {"role": "assistant", "content": ""}
        yield history + [answer], "", None, ""
        try:
            for piece in session.stream(history, system_text, tools_json, gen):
                answer = {"role": "assistant", "content": answer["content"] + piece}
                yield history + [answer], "", None, gr.skip()
        except LatheError as e:
            yield history + [answer], "", None, f"**{t('msg_error', lang)}:** {e}"

    def clear_all():
        session.clear()
        return []

    inputs = [chatbot, message, attach, system, tools, *sampling, *picked]
    send.click(respond, inputs, [chatbot, message, attach, status])
    message.submit(respond, inputs, [chatbot, message, attach, status])
    clear.click(clear_all, None, chatbot)

    if load_fn is not None:
        def load(*values):
            args, lang = split(values)
            try:
                cfg = load_fn(*args)
                name = session.load_config(cfg)
            except LatheError as e:
                return f"**{t('msg_error', lang)}:** {e}"
            except Exception as e:  # a model that fails to load: show why, keep the Board alive
                return f"**{t('msg_error', lang)}:** {type(e).__name__}: {e}"
            return f"{t('msg_loaded', lang)}: `{name}`"

        def unload(*values):
            _, lang = split(values)
            session.unload()
            return t("msg_unloaded", lang)

        load_btn.click(load, [*(load_inputs or []), *picked], status)
        unload_btn.click(unload, picked or None, status)
    return {"chatbot": chatbot, "message": message, "status": status, "system": system, "tools": tools}
