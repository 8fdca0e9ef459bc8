"""The Board (`lathe webui`) and the chat page (`lathe webchat`): building and launching them.

Both bind 127.0.0.1:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise, make
a public share link only with GRADIO_SHARE=1, and never call home: analytics are off and the
page loads nothing from the internet. Stopping the Board stops the runs it started.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

# Before gradio is imported: no usage analytics, no version check over the network.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from ..errors import LatheError  # noqa: E402
from ..model.catalog import lookup, model_names  # noqa: E402
from .chat import ChatSession, build_chat_panel  # noqa: E402
from .checks import check_config  # noqa: E402
from .compare_tab import build_compare_tab  # noqa: E402
from .context import BoardContext  # noqa: E402
from .form import TOP, group_fields, train_form, values_to_raw  # noqa: E402
from .eval_tab import build_eval_tab  # noqa: E402
from .export_tab import build_export_tab  # noqa: E402
from .launch import HUBS, check_hub, current_hub, hub_env, hub_id, swap_hub  # noqa: E402
from .locales import DEFAULT_LANG, languages, t  # noqa: E402
from .runner import Runner  # noqa: E402
from .user_settings import REMEMBERED_FIELDS, UserSettings, start_language  # noqa: E402
from .widgets import Widgets  # noqa: E402

QUANTIZATION_BITS = ["", "4", "8"]


def _template_names() -> list[str]:
    from ..data.templates import list_templates

    return ["", *list_templates()]


def check_language(lang: str | None) -> str | None:
    """`--lang` as given, refused up front when the Board does not speak it (not a silent English page)."""
    offered = languages()
    if lang is not None and lang not in offered:
        raise LatheError(f"--lang {lang}: the Board speaks {', '.join(offered)}; pick one of them, or leave --lang "
                         "out to follow the browser's language.")
    return lang


def create_board(workdir: str | Path = "lathe_board", lang: str | None = None) -> gr.Blocks:
    """The full Board: top bar (model and method) and the Train / Evaluate / Chat / Export tabs.

    `lang` fixes the language every page opens in; None lets each page open in the language last
    picked in the menu (remembered in `workdir`), else in its browser's language (Accept-Language)
    when the Board speaks it, else in English. The menu switches it at any time.
    """
    from .train_tab import build_train_tab

    forced = check_language(lang)
    runner = Runner(workdir)
    settings = UserSettings(runner.workdir)
    # The page is built in the likeliest language; each opening page then switches to its own.
    lang = start_language(forced, settings.get("lang"), None)
    ctx = BoardContext(runner, ChatSession(), Widgets(lang))
    w = ctx.w
    top_by_name = {f.name: f for f in train_form() if f.section == "top"}
    ctx.top = [top_by_name[name] for name in TOP]
    with gr.Blocks(title=t("title", lang), analytics_enabled=False) as app:
        app.lathe_runner = runner  # stopped by `run_webui` when the Board stops
        app.lathe_widgets = w  # what the language switch relabels
        app.lathe_settings = settings  # what the Board remembers between starts
        with gr.Row():
            lang_pick = gr.Dropdown(choices=[(v, k) for k, v in languages().items()], value=lang,
                                    label=t("lang", lang), elem_id="lang", scale=1)
            w.ui(lang_pick, "lang")
            ctx.lang_pick = lang_pick
            catalog = w.ui(gr.Dropdown(choices=["", *model_names()], value="", label=t("catalog", lang),
                                       info=t("catalog_info", lang), allow_custom_value=True, filterable=True,
                                       elem_id="catalog", scale=2), "catalog", "info")
            hub = w.ui(gr.Dropdown(choices=list(HUBS), value=current_hub(), label=t("hub", lang),
                                   info=t("hub_info", lang), elem_id="hub", scale=1), "hub", "info")
            ctx.hub = hub
            model = w.field(top_by_name["model_name_or_path"], scale=3)
            w.field(top_by_name["adapter_name_or_path"], scale=3)
        with gr.Row():
            w.field(top_by_name["finetuning_type"])
            template = w.field(top_by_name["template"], choices=_template_names())
            w.field(top_by_name["quantization_bit"], choices=QUANTIZATION_BITS)
            for name in ("quantization_method", "rope_scaling", "flash_attn", "enable_liger_kernel"):
                w.field(top_by_name[name])
        with gr.Tabs():
            with w.ui(gr.Tab(t("tab_train", lang), elem_id="tab-train"), "tab_train"):
                build_train_tab(ctx)
            with w.ui(gr.Tab(t("tab_eval", lang), elem_id="tab-eval"), "tab_eval"):
                build_eval_tab(ctx)
            with w.ui(gr.Tab(t("tab_chat", lang), elem_id="tab-chat"), "tab_chat"):
                load_fields = [*ctx.top, *[f for f in group_fields("model") if f.name == "infer_dtype"]]
                with gr.Row():
                    dtype = w.field(load_fields[-1], prefix="chat-")
                    chat_extra = w.ui(gr.Code(label=t("chat_extra", lang), language="yaml", elem_id="chat-extra",
                                              interactive=True), "chat_extra")

                def load_cfg(*values):
                    """The top bar, the inference dtype and the extra options (vllm_* / sglang_* engine settings,
                    any key `lathe chat` takes) as one config, loaded from the hub picked."""
                    *values, extra_text, hub_name = values
                    raw = values_to_raw(load_fields, dict(zip([f.name for f in load_fields], values)), extra_text)
                    check_hub(raw.get("model_name_or_path"), hub_name)
                    return check_config(raw, purpose="infer"), hub_env(hub_name)

                build_chat_panel(w, ctx.session, load_cfg, [*ctx.top_components, dtype, chat_extra, hub],
                                 lang_pick=ctx.lang_pick)
            with w.ui(gr.Tab(t("tab_export", lang), elem_id="tab-export"), "tab_export"):
                build_export_tab(ctx)
            with w.ui(gr.Tab(t("tab_compare", lang), elem_id="tab-compare"), "tab_compare"):
                build_compare_tab(ctx)

        registered = set(_template_names())

        def pick(name, hub_name):
            """The model's id on the hub picked and its default template; where that hub lacks the model, its
            Hugging Face id and the hub menu back on Hugging Face. A template lathe lacks yet (or none) leaves the
            template empty, so the run uses the tokenizer's own chat template."""
            entry = lookup(name or "")
            if entry is None:
                return gr.skip(), gr.skip(), gr.skip()
            template_name = entry.template if entry.template in registered else ""
            on_hub = hub_id(entry, hub_name)
            return on_hub or entry.path, template_name, gr.skip() if on_hub else HUBS[0]

        def on_hub(hub_name, current):
            """The same catalog model on the hub picked; a local folder or an id the catalog lacks stays."""
            return swap_hub(current, hub_name) or gr.skip()

        catalog.change(pick, [catalog, hub], [model, template, hub])
        hub.input(on_hub, [hub, model], model)
        lang_pick.change(lambda code: w.relabel(code), lang_pick, w.relabel_targets())
        remember_settings(app, forced, lang_pick, settings,
                          {"hub": hub, **{name: w.components[name] for name in REMEMBERED_FIELDS}}, lang)
    return app


def remember_settings(app: gr.Blocks, forced_lang: str | None, lang_pick, settings: UserSettings,
                      fields: dict[str, Any], built_lang: str = DEFAULT_LANG) -> None:
    """Give a page opening anew its language and the remembered fields; remember what changes.

    Only a language picked in the menu (`.input`, a user's act) is remembered, not the one a
    browser asked for; the fields are remembered whenever their value changes. A page whose
    language is already the one it was built in keeps its menu untouched, so a language picked
    before this answer arrives (a busy Board answers late) is not switched back.
    """
    names = list(fields)

    def on_open(request: gr.Request):
        header = request.headers.get("accept-language") if request is not None else None
        code = start_language(forced_lang, settings.get("lang"), header)
        return [gr.skip() if code == built_lang else code, *[settings.get(name) or gr.skip() for name in names]]

    def remember(name: str):
        def on_change(value) -> None:
            settings.update(**{name: value})
        return on_change

    app.load(on_open, None, [lang_pick, *fields.values()], show_progress="hidden")
    lang_pick.input(remember("lang"), lang_pick, None, show_progress="hidden")
    for name, comp in fields.items():
        comp.change(remember(name), comp, None, show_progress="hidden", trigger_mode="always_last")


def create_webchat(cfg: Any, lang: str = DEFAULT_LANG) -> gr.Blocks:
    """`lathe webchat`: only the chat panel, for the model of a config (loaded up front)."""
    session = ChatSession()
    name = session.load_config(cfg)
    w = Widgets(lang)
    with gr.Blocks(title=f"lathe chat: {name}", analytics_enabled=False) as app:
        gr.Markdown(f"### {name}")
        build_chat_panel(w, session)
    return app


# ---------------------------------------------------------------- launching


def server_settings() -> dict[str, Any]:
    """Host, port and share from Gradio's own variables; the defaults keep the Board local."""
    port = os.environ.get("GRADIO_SERVER_PORT", "7860")
    try:
        port_number = int(port)
    except ValueError:
        raise LatheError(f"GRADIO_SERVER_PORT must be a port number, got {port!r}.") from None
    share = os.environ.get("GRADIO_SHARE", "").lower() in ("1", "true", "yes")
    return {"server_name": os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), "server_port": port_number,
            "share": share}


def launch(app: gr.Blocks, runner: Runner | None = None) -> None:
    """Serve until interrupted; SIGTERM and Ctrl-C stop the Board's child runs first."""
    settings = server_settings()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        print(f"[lathe] serving on http://{settings['server_name']}:{settings['server_port']}", file=sys.stderr,
              flush=True)
        app.queue().launch(**settings, inbrowser=False, show_error=True, footer_links=[], quiet=True)
    except KeyboardInterrupt:
        pass
    finally:
        if runner is not None:
            runner.stop_all()
        signal.signal(signal.SIGTERM, previous)
        try:
            app.close()
        except Exception:
            pass


def run_webui(workdir: str = "lathe_board", lang: str | None = None) -> None:
    app = create_board(workdir, lang)
    launch(app, app.lathe_runner)


def run_webchat(cfg: Any) -> None:
    launch(create_webchat(cfg))
