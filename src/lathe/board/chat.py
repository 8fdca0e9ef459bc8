"""The chat panel shared by the Board's Chat tab and `lathe webchat`.

It drives the same engine (`create_engine`) as `lathe chat` and `lathe api` (template, adapters and stop
tokens exactly as in training) and streams its pieces into a Gradio chatbot. One engine per
Board process: a model is large, and two browser tabs chatting share it (the engine's lock
serialises generation).

Next to the sampling settings: a thinking switch (`enable_thinking`) and `skip_special_tokens`, which
apply to the next message without reloading (`chat_options` swaps the engine's template and config
for that one answer), and, in the Board, the backend the Load button uses (`infer_backend`, only
those whose package is installed). A tool call the model makes is kept as a `function` turn and a
tool result typed with the role "observation" as an `observation` turn, shown as titled blocks
(gradio's message metadata), so the next prompt renders them as the template trained them.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import importlib.util
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr

from ..config.coercion import coerce, type_hints
from ..config.options import GeneratingArguments
from ..data.sample import ASSISTANT, FUNCTION, OBSERVATION, USER
from ..errors import LatheError
from ..registry import INFER_BACKENDS
from .form import FormField, group_fields
from .launch import environment
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
# A chatbot message whose metadata id starts so is a lathe turn gradio has no role for (`<prefix><role>-<n>`).
TURN_ID = "lathe-"
MEDIA_TURN = "media"  # TURN_ID + MEDIA_TURN: an attached file, shown only
FENCE = re.compile(r"^```(?:json)?\n(.*)\n```$", re.DOTALL)


def installed_backends() -> list[str]:
    """The `infer_backend` names this machine can run: those without a package, or whose package is installed."""
    return [name for name, backend in INFER_BACKENDS.items()
            if not getattr(backend, "package", None) or importlib.util.find_spec(backend.package) is not None]


def with_backend(cfg, backend: str | None):
    """The config the Load button loads, with the backend picked (refused by name when not installed)."""
    if not backend or backend == cfg.model.infer_backend:
        return cfg
    offered = installed_backends()
    if backend not in offered:
        raise LatheError(f"infer_backend `{backend}` is not installed here; pick one of {', '.join(offered)}.")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, infer_backend=backend))


def thinking_template(template, enabled: bool):
    """`template` rendering prompts with thinking on or off (itself when that changes nothing).

    A registered template has `with_options`; the tokenizer's own jinja template takes
    `enable_thinking=False` as a keyword, as resolve_template gives it when the config says so.
    """
    if hasattr(template, "with_options"):
        return template.with_options(enable_thinking=enabled)
    kwargs = getattr(template, "chat_template_kwargs", None)
    if kwargs is None:
        return template
    wanted = {k: v for k, v in kwargs.items() if k != "enable_thinking"}
    if not enabled:
        wanted["enable_thinking"] = False
    if wanted == kwargs:
        return template
    changed = copy.copy(template)
    changed.chat_template_kwargs = wanted
    return changed


@contextmanager
def chat_options(engine, enable_thinking: bool | None = None, skip_special_tokens: bool | None = None):
    """The engine renders and decodes one answer with these options, then gets its own back.

    The config is frozen, so a copy with the other `skip_special_tokens` stands in for it (the
    streamers read it when they start); the template is swapped for its thinking variant.
    """
    saved_template, saved_cfg = engine.template, engine.cfg
    try:
        if enable_thinking is not None:
            engine.template = thinking_template(saved_template, bool(enable_thinking))
        gen = saved_cfg.generating
        if skip_special_tokens is not None and bool(skip_special_tokens) != gen.skip_special_tokens:
            engine.cfg = dataclasses.replace(
                saved_cfg, generating=dataclasses.replace(gen, skip_special_tokens=bool(skip_special_tokens)))
        yield engine
    finally:
        engine.template, engine.cfg = saved_template, saved_cfg


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
        self.answering = threading.Lock()  # one answer at a time: its options are set on the shared engine
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

    def option_defaults(self) -> dict[str, bool]:
        """The loaded config's thinking and special-token settings (the schema's before a model is loaded)."""
        if self.engine is None:
            return {"enable_thinking": True, "skip_special_tokens": GeneratingArguments().skip_special_tokens}
        cfg = self.engine.cfg
        return {"enable_thinking": cfg.data.enable_thinking, "skip_special_tokens": cfg.generating.skip_special_tokens}

    def stream(self, history: list[dict], system: str, tools: str, gen: dict[str, Any],
               enable_thinking: bool | None = None, skip_special_tokens: bool | None = None) -> Iterator[str]:
        """Yield the answer's pieces; returns the engine's final Response (tool calls parsed), if it gives one."""
        engine = self.engine
        if engine is None:
            raise LatheError("no model loaded")
        messages = to_messages(history)
        media = {f"{kind}s": paths for kind, paths in self.media.items() if paths}
        with self.answering, chat_options(engine, enable_thinking, skip_special_tokens):
            return (yield from engine.stream_chat(messages, system=system or "", tools=tools or "", **media, **gen))

    def tool_calls(self, response: Any, text: str, tools: str) -> list | None:
        """The tool calls of an answer (None for plain text, or when no tools were given)."""
        if not tools or self.engine is None:
            return None
        calls = getattr(response, "tool_calls", None)
        return calls or self.engine.template.parse_tool_calls(text) or None


def _text(content: Any) -> str:
    """Gradio may hand back message content as a list of parts; the engine takes text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(c) for c in content)
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    return str(content)


def to_messages(history: list[dict]) -> list[dict]:
    """Chatbot messages -> lathe's conversation: titled tool blocks back to `function` / `observation` turns."""
    out = []
    for m in history:
        meta = m.get("metadata") or {}
        turn = str(meta.get("id") or "")
        role, content = m["role"], _text(m["content"])
        if turn.startswith(TURN_ID + MEDIA_TURN):
            continue  # an attached file shown in the chat: the model gets it through the turn's placeholder
        if turn.startswith(TURN_ID + FUNCTION):
            role, content = FUNCTION, _unfence(content)
        elif turn.startswith(TURN_ID + OBSERVATION):
            role = OBSERVATION
        out.append({"role": role, "content": content})
    return out


def _unfence(text: str) -> str:
    found = FENCE.match(text.strip())
    return found.group(1) if found else text


def function_message(calls: list, index: int, lang: str) -> dict[str, Any]:
    """A tool call as a chatbot block titled with the tools called; its content is the `function` turn's JSON."""
    data = [{"name": c.name, "arguments": c.args} for c in calls]
    turn = json.dumps(data[0] if len(data) == 1 else data, ensure_ascii=False, indent=2)
    names = ", ".join(c.name for c in calls)
    return {"role": ASSISTANT, "content": f"```json\n{turn}\n```",
            "metadata": {"title": f"🛠️ {t('tool_call', lang)}: {names}", "id": f"{TURN_ID}{FUNCTION}-{index}"}}


def media_message(path: str, index: int) -> dict[str, Any]:
    """An attached image / video / audio shown above the message it goes with (the `<image>` placeholder the
    model reads there is not shown); left out of the conversation the model gets."""
    return {"role": USER, "content": {"path": path}, "metadata": {"id": f"{TURN_ID}{MEDIA_TURN}-{index}"}}


def observation_message(text: str, index: int, lang: str) -> dict[str, Any]:
    """A tool result typed by the user, shown as a titled block; sent as an `observation` turn."""
    return {"role": USER, "content": text,
            "metadata": {"title": f"📋 {t('tool_result', lang)}", "id": f"{TURN_ID}{OBSERVATION}-{index}"}}


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


def switch_fields() -> list[FormField]:
    """The thinking switch (a data option: it shapes the template) and skip_special_tokens, as checkboxes."""
    thinking = next(f for f in group_fields("data") if f.name == "enable_thinking")
    skip = next(f for f in group_fields("generating") if f.name == "skip_special_tokens")
    return [thinking, skip]


def backend_field() -> FormField:
    return next(f for f in group_fields("model") if f.name == "infer_backend")


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
            with gr.Row():
                message = w.ui(gr.Textbox(label=t("message", lang), lines=2, elem_id="chat-message", scale=4),
                               "message")
                role = w.ui(gr.Radio(choices=[USER, OBSERVATION], value=USER, label=t("chat_role", lang),
                                     info=t("chat_role_info", lang), elem_id="chat-role", scale=1), "chat_role", "info")
            attach = w.ui(gr.File(label=t("attach", lang), file_count="multiple", elem_id="chat-attach"), "attach")
            with gr.Row():
                send = w.ui(gr.Button(t("send", lang), variant="primary", elem_id="chat-send"), "send", "value")
                clear = w.ui(gr.Button(t("clear", lang), elem_id="chat-clear"), "clear", "value")
        with gr.Column(scale=2):
            system = w.ui(gr.Textbox(label=t("system", lang), lines=2, elem_id="chat-system"), "system")
            tools = w.ui(gr.Textbox(label=t("tools", lang), lines=3, elem_id="chat-tools"), "tools")
            fields = sampling_fields()
            switches = switch_fields()
            defaults = session.option_defaults()
            with gr.Row():
                toggles = [w.field(f, prefix="chat-", value=defaults[f.name]) for f in switches]
            if load_fn is not None:
                backend = w.field(backend_field(), choices=installed_backends(), prefix="chat-")
            with w.ui(gr.Accordion(t("sampling", lang), open=True), "sampling"):
                sampling = [w.field(f) for f in fields]

    def respond(history, text, files, role_name, system_text, tools_text, thinking, skip_special, *rest):
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
        if role_name == OBSERVATION:
            history.append(observation_message(text, len(history), lang))
        else:
            history += [media_message(path, len(history) + i) for i, path in enumerate(paths)]
            history.append({"role": USER, "content": text})
        answer = {"role": ASSISTANT, "content": ""}
        yield history + [answer], "", None, ""
        pieces = session.stream(history, system_text, tools_json, gen, enable_thinking=bool(thinking),
                                skip_special_tokens=bool(skip_special))
        try:
            while True:
                try:
                    piece = next(pieces)
                except StopIteration as done:
                    response = done.value
                    break
                answer = {"role": ASSISTANT, "content": answer["content"] + piece}
                yield history + [answer], "", None, gr.skip()
            calls = session.tool_calls(response, getattr(response, "text", answer["content"]), tools_json)
            if calls:
                yield history + [function_message(calls, len(history), lang)], "", None, gr.skip()
        except LatheError as e:
            yield history + [answer], "", None, f"**{t('msg_error', lang)}:** {e}"
        finally:
            pieces.close()

    def clear_all():
        session.clear()
        return []

    inputs = [chatbot, message, attach, role, system, tools, *toggles, *sampling, *picked]
    send.click(respond, inputs, [chatbot, message, attach, status])
    message.submit(respond, inputs, [chatbot, message, attach, status])
    clear.click(clear_all, None, chatbot)

    if load_fn is not None:
        def load(*values):
            (*args, backend_name), lang = split(values)
            try:
                loaded = load_fn(*args)  # a config, or (config, variables to load it under: the hub's)
                cfg, env = loaded if isinstance(loaded, tuple) else (loaded, {})
                with environment(env):
                    name = session.load_config(with_backend(cfg, backend_name))
            except LatheError as e:
                return f"**{t('msg_error', lang)}:** {e}"
            except Exception as e:  # a model that fails to load: show why, keep the Board alive
                return f"**{t('msg_error', lang)}:** {type(e).__name__}: {e}"
            return f"{t('msg_loaded', lang)}: `{name}`"

        def unload(*values):
            _, lang = split(values)
            session.unload()
            return t("msg_unloaded", lang)

        load_btn.click(load, [*(load_inputs or []), backend, *picked], status)
        unload_btn.click(unload, picked or None, status)
    return {"chatbot": chatbot, "message": message, "status": status, "system": system, "tools": tools,
            "role": role, "enable_thinking": toggles[0], "skip_special_tokens": toggles[1]}
