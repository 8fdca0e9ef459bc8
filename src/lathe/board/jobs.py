"""One-shot jobs of the Board (predict, evaluate, export) over the model in the top bar.

A job builds a config from the top bar and its tab's fields, validates it like the CLI, and
runs the same command a shell would through the runner. Each job has a progress bar, an Abort
button, its console output and, at the end, its results. The bar reads `progress.jsonl` in the
job's folder, which the child writes batch by batch (`train/callbacks.ProgressLog`: Trainer
evaluation and prediction, generation, benchmarks), so a job started from a shell in that folder
reads the same. A job that writes no progress (export) shows its state, and 100% once finished.
The tabs that start jobs are eval_tab.py and export_tab.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import LatheError
from ..train.callbacks import PROGRESS_FILE
from .context import BoardContext, error_md
from .form import FormField, to_yaml
from .launch import hub_env
from .locales import t
from .monitor import progress_html, read_jsonl, read_metrics
from .runner import job_command, shell_line

Make = Callable[..., tuple[str, dict, str, tuple]]


def by_name(fields: list[FormField]) -> dict[str, FormField]:
    return {f.name: f for f in fields}


def named(fields: list[FormField], values: list[Any]) -> dict[str, Any]:
    return dict(zip([f.name for f in fields], values))


def read_progress(folder: str | Path, since: float | None = None) -> list[dict[str, Any]]:
    """The records of `folder/progress.jsonl` so far (`monitor.read_jsonl`: a half-written last line skipped).

    `since` (a time): a file last written before it is an earlier run's, not this one's (the child
    begins the file anew only once its model is loaded)."""
    return read_jsonl(Path(folder) / PROGRESS_FILE, since=since)


def job_progress(records: list[dict[str, Any]], state: str, elem: str, lang: str) -> str:
    """The job's progress bar, with a DOM id of its own (several bars share a page).

    A finished job is whole even when its last record did not say so (a job that writes none)."""
    if state == "finished" and (not records or not records[-1].get("finished")):
        last = records[-1] if records else {}
        total = last.get("total_steps", last.get("current_steps", 1))
        records = [*records, {**last, "current_steps": total, "total_steps": total, "percentage": 100.0,
                              "finished": True}]
    return progress_html(records, state, t(f"state_{state}", lang), lang, dom_id=f"{elem}-progress-bar")


def wire_job(ctx: BoardContext, button, inputs: list[Any], make: Make, results_name: str | None, elem: str,
             results: Callable[[dict[str, Any]], dict[str, Any]] | None = None, aborted_note: str | None = None):
    """Wire `button` to run the job `make(*values) -> (kind, raw, target, extra_args)`, with an Abort button,
    a progress bar and a timer that follows it. The job runs with the hub menu's variables (`launch.hub_env`),
    as a training run does, so a ModelScope or Modelers id in the top bar is fetched from that hub.

    `results_name` is the file under the target folder shown at the end (through `results`, which may add
    derived numbers); `aborted_note` is a ui key said after an abort (e.g. whether a rerun goes on).
    The handlers are named `start_<elem>`, `abort_<elem>` and `tick_<elem>`: one name per job.
    """
    lang = ctx.w.lang
    preview = ctx.w.ui(gr.Button(t("preview_cmd", lang), elem_id=f"{elem}-preview"), "preview_cmd", "value")
    abort = ctx.w.ui(gr.Button(t("abort", lang), variant="stop", elem_id=f"{elem}-abort"), "abort", "value")
    status = gr.Markdown(elem_id=f"{elem}-status")
    progress = gr.HTML(job_progress([], "idle", elem, lang), elem_id=f"{elem}-progress")
    with gr.Row():
        log_box = ctx.w.ui(gr.Textbox(label=t("log", lang), lines=10, max_lines=10, elem_id=f"{elem}-log"), "log")
        shown = ctx.w.ui(gr.JSON(label=t("metrics", lang), elem_id=f"{elem}-results"), "metrics")
    key = gr.State(None)
    timer = gr.Timer(1.0, active=False)

    def start(*values):
        *values, code = values  # the language menu comes last, the hub menu (where there is one) before it
        hub_name = values.pop() if ctx.hub is not None else None
        try:
            kind, raw, target, extra_args = make(*values)
            run = ctx.runner.start(kind, raw, target, extra_args, env=hub_env(hub_name))
        except LatheError as e:
            return error_md(code, e), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return (f"{t('msg_started', code)}: `{run.line}`", run.key, gr.Timer(active=True),
                job_progress([], "running", elem, code), None)

    def show(*values):
        """The YAML and the command the job would run, nothing started (as the Train tab's Preview command)."""
        *values, code = values
        hub_name = values.pop() if ctx.hub is not None else None
        try:
            kind, raw, target, extra_args = make(*values)
        except LatheError as e:
            return error_md(code, e)
        line = shell_line(job_command(kind, ctx.runner.config_path(target), extra_args), hub_env(hub_name))
        return f"```yaml\n{to_yaml(raw)}```\n\n`{line}`"

    def stop(run_key, code):
        run = ctx.runner.get(run_key)
        if run is None or not run.running():
            return t("msg_nothing", code)
        threading.Thread(target=ctx.runner.stop, args=(run,), daemon=True).start()  # SIGTERM, then SIGKILL
        return t("msg_aborted", code)

    def tick(run_key, code):
        run = ctx.runner.get(run_key)
        if run is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)
        state = ctx.state_of(run)
        bar = job_progress(read_progress(run.key, since=run.started - 2.0), state, elem, code)  # mtime granularity
        if state == "running":
            return gr.skip(), bar, run.log_tail(), gr.skip(), gr.skip()
        metrics = None
        if results_name and state == "finished":
            metrics = read_metrics(run.key, results_name)
            metrics = results(metrics) if results else metrics
        message = f"{t('state_' + state, code)}: `{run.key}`"
        if state == "aborted" and aborted_note:
            message += f"\n\n{t(aborted_note, code)}"
        return message, bar, run.log_tail(), metrics, gr.Timer(active=False)

    start.__name__, stop.__name__, tick.__name__ = f"start_{elem}", f"abort_{elem}", f"tick_{elem}"
    show.__name__ = f"preview_{elem}"
    hub = [ctx.hub] if ctx.hub is not None else []  # a bare context (a tab built alone) has no hub menu
    button.click(start, [*inputs, *hub, ctx.lang_pick], [status, key, timer, progress, shown])
    preview.click(show, [*inputs, *hub, ctx.lang_pick], status)
    abort.click(stop, [key, ctx.lang_pick], status)
    timer.tick(tick, [key, ctx.lang_pick], [status, progress, log_box, shown, timer])
