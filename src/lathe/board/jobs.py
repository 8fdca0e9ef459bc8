"""One-shot jobs of the Board (predict, evaluate, export) over the model in the top bar.

A job builds a config from the top bar and its tab's fields, validates it like the CLI, and
runs the same command a shell would through the runner; a timer shows its console output
and, at the end, its results file. The tabs that start jobs are eval_tab.py and export_tab.py.
"""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from ..errors import LatheError
from .context import BoardContext, error_md
from .form import FormField
from .locales import t
from .monitor import read_metrics


def by_name(fields: list[FormField]) -> dict[str, FormField]:
    return {f.name: f for f in fields}


def named(fields: list[FormField], values: list[Any]) -> dict[str, Any]:
    return dict(zip([f.name for f in fields], values))


def wire_job(ctx: BoardContext, button, inputs: list[Any], make: Callable[..., tuple[str, dict, str, tuple]],
         results_name: str | None, elem: str):
    """Wire `button` to run the job `make(*values) -> (kind, raw, target, extra_args)` and a timer for it."""
    lang = ctx.w.lang
    status = gr.Markdown(elem_id=f"{elem}-status")
    with gr.Row():
        log_box = ctx.w.ui(gr.Textbox(label=t("log", lang), lines=10, max_lines=10, elem_id=f"{elem}-log"), "log")
        results = ctx.w.ui(gr.JSON(label=t("metrics", lang), elem_id=f"{elem}-results"), "metrics")
    key = gr.State(None)
    timer = gr.Timer(1.0, active=False)

    def start(*values):
        *values, code = values  # the language menu comes last
        try:
            kind, raw, target, extra_args = make(*values)
            run = ctx.runner.start(kind, raw, target, extra_args)
        except LatheError as e:
            return error_md(code, e), gr.skip(), gr.skip()
        return f"{t('msg_started', code)}: `{' '.join(run.cmd)}`", run.key, gr.Timer(active=True)

    def tick(run_key, code):
        run = ctx.runner.get(run_key)
        if run is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)
        state = ctx.state_of(run)
        if state == "running":
            return gr.skip(), run.log_tail(), gr.skip(), gr.skip()
        metrics = read_metrics(run.key, results_name) if results_name and state == "finished" else None
        return f"{t('state_' + state, code)}: `{run.key}`", run.log_tail(), metrics, gr.Timer(active=False)

    button.click(start, [*inputs, ctx.lang_pick], [status, key, timer])
    timer.tick(tick, [key, ctx.lang_pick], [status, log_box, results, timer])
