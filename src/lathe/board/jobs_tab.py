"""The Evaluate & Predict and Export tabs: one-shot jobs over the model in the top bar.

Each builds a config from the top bar and its own fields (generated from the schema groups
evaluation / generating / export), validates it like the CLI, and runs the same command a
shell would (`lathe train` with do_predict, `lathe eval`, `lathe export`) through the runner.
A timer shows the job's console output and, at the end, its results file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from ..errors import LatheError
from .checks import check_config
from .context import BoardContext, error_md, split_args
from .form import FormField, group_fields, training_fields, values_to_raw
from .locales import t
from .monitor import read_metrics

PREDICT_FILE = "predict_results.json"


def _by_name(fields: list[FormField]) -> dict[str, FormField]:
    return {f.name: f for f in fields}


def benchmark_tasks(task_dir: str) -> list[str]:
    """<benchmark>_<split> names found under task_dir (folders with a mapping.json)."""
    root = Path(task_dir or "evaluation").expanduser()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.iterdir() if (p / "mapping.json").is_file()):
        out += [f"{folder.name}_{split.name}" for split in sorted(folder.iterdir()) if split.is_dir() and split.name != "dev"]
    return out


def _job(ctx: BoardContext, button, inputs: list[Any], make: Callable[..., tuple[str, dict, str, tuple]],
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
        try:
            kind, raw, target, extra_args = make(*values)
            run = ctx.runner.start(kind, raw, target, extra_args)
        except LatheError as e:
            return error_md(lang, e), gr.skip(), gr.skip()
        return f"{t('msg_started', lang)}: `{' '.join(run.cmd)}`", run.key, gr.Timer(active=True)

    def tick(run_key):
        run = ctx.runner.get(run_key)
        if run is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)
        state = ctx.state_of(run)
        if state == "running":
            return gr.skip(), run.log_tail(), gr.skip(), gr.skip()
        metrics = read_metrics(run.key, results_name) if results_name and state == "finished" else None
        return f"{t('state_' + state, lang)}: `{run.key}`", run.log_tail(), metrics, gr.Timer(active=False)

    button.click(start, inputs, [status, key, timer])
    timer.tick(tick, key, [status, log_box, results, timer])


def build_eval_tab(ctx: BoardContext) -> None:
    w, lang = ctx.w, ctx.w.lang
    data = _by_name(group_fields("data"))
    gen = _by_name(group_fields("generating"))
    train = _by_name(training_fields())
    evaluation = group_fields("evaluation")

    # ---- predict on a dataset, BLEU / ROUGE
    dataset_dir = ctx.w.components["dataset_dir"]
    from .train_tab import dataset_names

    predict_fields = [data["eval_dataset"], data["cutoff_len"], data["max_samples"], train["per_device_eval_batch_size"],
                      gen["max_new_tokens"], gen["top_p"], gen["temperature"]]
    with gr.Row():
        comps = [w.field(predict_fields[0], choices=dataset_names("data"), prefix="predict-", scale=2)]
        comps += [w.field(f, prefix="predict-") for f in predict_fields[1:4]]
    with gr.Row():
        comps += [w.field(f, prefix="predict-") for f in predict_fields[4:]]
        out_dir = w.field(train["output_dir"], prefix="predict-", value=f"saves/predict-{time.strftime('%Y%m%d-%H%M%S')}")
    predict_btn = w.ui(gr.Button(t("predict", lang), variant="primary", elem_id="predict-start"), "predict", "value")
    dataset_dir.change(lambda d: gr.update(choices=dataset_names(d)), dataset_dir, comps[0])

    n_top = len(ctx.top)

    def make_predict(*args):
        top_values, values, (folder, out) = split_args(args, n_top, len(predict_fields), 2)
        raw = predict_config(ctx.top_raw(top_values), predict_fields, values, folder, out)
        return "predict", raw, out, ()

    _job(ctx, predict_btn, [*ctx.top_components, *comps, dataset_dir, out_dir], make_predict, PREDICT_FILE, "predict")

    # ---- multiple-choice benchmark
    by_name = _by_name(evaluation)
    with gr.Row():
        task_dir = w.field(by_name["task_dir"], prefix="eval-")
        task = w.field(by_name["task"], choices=benchmark_tasks(by_name["task_dir"].default), prefix="eval-")
        rest = [w.field(by_name[n], prefix="eval-") for n in ("n_shot", "lang", "batch_size")]
        save_dir = w.field(by_name["save_dir"], prefix="eval-", value=f"saves/eval-{time.strftime('%Y%m%d-%H%M%S')}")
    eval_btn = w.ui(gr.Button(t("choice_eval", lang), variant="primary", elem_id="eval-start"), "choice_eval", "value")
    task_dir.change(lambda d: gr.update(choices=benchmark_tasks(d)), task_dir, task)
    eval_fields = [by_name[n] for n in ("task_dir", "task", "n_shot", "lang", "batch_size", "save_dir")]

    def make_eval(*args):
        top_values, values = split_args(args, n_top, len(eval_fields))
        raw = eval_config(ctx.top_raw(top_values), eval_fields, values)
        return "eval", raw, raw["save_dir"], ()

    _job(ctx, eval_btn, [*ctx.top_components, task_dir, task, *rest, save_dir], make_eval, "results.json", "eval")


def build_export_tab(ctx: BoardContext) -> None:
    w, lang = ctx.w, ctx.w.lang
    fields = group_fields("export")
    comps = []
    for i in range(0, len(fields), 3):
        with gr.Row():
            comps += [w.field(f, prefix="export-") for f in fields[i:i + 3]]
    button = w.ui(gr.Button(t("export", lang), variant="primary", elem_id="export-start"), "export", "value")
    n_top = len(ctx.top)

    def make_export(*args):
        top_values, values = split_args(args, n_top, len(fields))
        raw = export_config(ctx.top_raw(top_values), fields, values)
        return "export", raw, raw["export_dir"], ()

    _job(ctx, button, [*ctx.top_components, *comps], make_export, None, "export")


# ---------------------------------------------------------------- the configs each job runs


def _named(fields: list[FormField], values: list[Any]) -> dict[str, Any]:
    return dict(zip([f.name for f in fields], values))


def predict_config(top: dict[str, Any], fields: list[FormField], values: list[Any], dataset_dir: str,
                   output_dir: str) -> dict[str, Any]:
    """`lathe train` with do_predict + predict_with_generate: BLEU/ROUGE in predict_results.json."""
    raw = dict(top)
    raw.update(values_to_raw(fields, _named(fields, values)))
    raw.update({"stage": "sft", "do_train": False, "do_predict": True, "predict_with_generate": True,
                "dataset_dir": dataset_dir, "output_dir": output_dir})
    if not raw.get("eval_dataset"):
        raise LatheError("`eval_dataset` is required: pick the dataset to predict on.")
    check_config(raw, purpose="train")
    return raw


def eval_config(top: dict[str, Any], fields: list[FormField], values: list[Any]) -> dict[str, Any]:
    """`lathe eval`: a multiple-choice benchmark; results.json in a new save_dir."""
    raw = dict(top)
    raw.update(values_to_raw(fields, _named(fields, values), always=("task",)))
    if not raw.get("task"):
        raise LatheError("`task` is required: pick a benchmark (a folder of task_dir).")
    if not raw.get("save_dir"):
        raise LatheError("`save_dir` is required: the new folder for results.json.")
    if Path(raw["save_dir"]).expanduser().exists():
        raise LatheError(f"`save_dir`: {raw['save_dir']} exists already; choose a new folder.")
    check_config(raw, purpose="infer")
    return raw


def export_config(top: dict[str, Any], fields: list[FormField], values: list[Any]) -> dict[str, Any]:
    """`lathe export`: merge the adapters and write the model to export_dir."""
    raw = dict(top)
    raw.update(values_to_raw(fields, _named(fields, values)))
    if not raw.get("export_dir"):
        raise LatheError("`export_dir` is required: the folder the merged model is written to.")
    check_config(raw, purpose="infer")
    return raw
