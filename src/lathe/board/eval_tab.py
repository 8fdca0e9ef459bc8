"""The Evaluate & Predict tab: predict with generation (BLEU/ROUGE), the loss on a dataset, and
multiple-choice benchmarks.

Its fields are generated from the schema groups evaluation and generating; each button runs a
job (jobs.py), with its progress bar and Abort: `lathe train` with do_predict, `lathe train`
with do_eval (eval_loss and its perplexity), or `lathe eval`.

An aborted prediction is taken up where it stopped when rerun into the same folder with the same
settings (train/predict.py keeps the answers on disk), which the note after an abort says.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import LatheError
from ..evaluate.choice import check_save_dir
from ..train.sft import SFT
from .checks import check_config
from .context import BoardContext, follows_model, new_run_dir, split_args
from .form import FormField, group_fields, training_fields, values_to_raw
from .jobs import by_name, named, wire_job
from .locales import t

PREDICT_FILE = "predict_results.json"
EVAL_FILE = "eval_results.json"
PREDICT_FLAGS = {"do_predict": True, "predict_with_generate": True}  # the predict job: generate, score BLEU/ROUGE
LOSS_FLAGS = {"do_eval": True}  # the loss job: eval_loss (and its perplexity), nothing generated
LOSS_KIND = "eval_loss"  # the loss job's folders: <save_root>/<model>/<method>/eval_loss_<timestamp>


def benchmark_tasks(task_dir: str) -> list[str]:
    """<benchmark>_<split> names found under task_dir (folders with a mapping.json)."""
    root = Path(task_dir or "evaluation").expanduser()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.iterdir() if (p / "mapping.json").is_file()):
        out += [f"{folder.name}_{split.name}" for split in sorted(folder.iterdir()) if split.is_dir() and split.name != "dev"]
    return out


def build_eval_tab(ctx: BoardContext) -> None:
    w, lang = ctx.w, ctx.w.lang
    data = by_name(group_fields("data"))
    gen = by_name(group_fields("generating"))
    train = by_name(training_fields())
    evaluation = group_fields("evaluation")

    # ---- predict on a dataset, BLEU / ROUGE
    dataset_dir = ctx.w.components["dataset_dir"]
    from .train_tab import dataset_names

    # the dataset and its batches, which both jobs read; then what only generation needs
    dataset_fields = [data["eval_dataset"], data["cutoff_len"], data["max_samples"],
                      train["per_device_eval_batch_size"]]
    generation_fields = [*(gen[name] for name in ("max_new_tokens", "top_p", "temperature")), train["seed"]]
    predict_fields = [*dataset_fields, *generation_fields]

    def dataset_row(prefix: str) -> list[Any]:
        """The dataset fields' widgets, the dataset menu first (it follows the dataset folder)."""
        dataset, *rest = dataset_fields
        comps = [w.field(dataset, choices=dataset_names("data"), prefix=prefix, scale=2)]
        comps += [w.field(f, prefix=prefix) for f in rest]
        dataset_dir.change(lambda d: gr.update(choices=dataset_names(d)), dataset_dir, comps[0])
        return comps

    with gr.Row():
        comps = dataset_row("predict-")
    with gr.Row():
        comps += [w.field(f, prefix="predict-") for f in generation_fields]
        out_dir = w.field(train["output_dir"], prefix="predict-", value=initial_dir(ctx, "predict"))
    predict_btn = w.ui(gr.Button(t("predict", lang), variant="primary", elem_id="predict-start"), "predict", "value")

    n_top = len(ctx.top)

    def make_predict(*args):
        top_values, values, (folder, out) = split_args(args, n_top, len(predict_fields), 2)
        raw = predict_config(ctx.top_raw(top_values), predict_fields, values, folder, out)
        return "predict", raw, out, ()

    wire_job(ctx, predict_btn, [*ctx.top_components, *comps, dataset_dir, out_dir], make_predict, PREDICT_FILE,
             "predict", aborted_note="predict_starts_over")

    # ---- the loss (and perplexity) on a dataset
    loss_fields = dataset_fields  # nothing is generated
    with gr.Row():
        loss_comps = dataset_row("loss-")
        loss_dir = w.field(train["output_dir"], prefix="loss-", value=initial_dir(ctx, LOSS_KIND))
    loss_btn = w.ui(gr.Button(t("eval_loss_job", lang), variant="primary", elem_id="loss-start"), "eval_loss_job",
                    "value")

    def make_loss(*args):
        top_values, values, (folder, out) = split_args(args, n_top, len(loss_fields), 2)
        raw = predict_config(ctx.top_raw(top_values), loss_fields, values, folder, out, LOSS_FLAGS)
        return "predict", raw, out, ()

    wire_job(ctx, loss_btn, [*ctx.top_components, *loss_comps, dataset_dir, loss_dir], make_loss, EVAL_FILE, "loss",
             results=with_perplexity)

    # ---- multiple-choice benchmark
    fields = by_name(evaluation)
    with gr.Row():
        task_dir = w.field(fields["task_dir"], prefix="eval-")
        task = w.field(fields["task"], choices=benchmark_tasks(fields["task_dir"].default), prefix="eval-")
        rest = [w.field(fields[n], prefix="eval-") for n in ("n_shot", "lang", "batch_size")]
        save_dir = w.field(fields["save_dir"], prefix="eval-", value=initial_dir(ctx, "eval"))
    eval_btn = w.ui(gr.Button(t("choice_eval", lang), variant="primary", elem_id="eval-start"), "choice_eval", "value")
    task_dir.change(lambda d: gr.update(choices=benchmark_tasks(d)), task_dir, task)
    eval_fields = [fields[n] for n in ("task_dir", "task", "n_shot", "lang", "batch_size", "save_dir")]

    def make_eval(*args):
        top_values, values = split_args(args, n_top, len(eval_fields))
        raw = eval_config(ctx.top_raw(top_values), eval_fields, values)
        return "eval", raw, raw["save_dir"], ()

    wire_job(ctx, eval_btn, [*ctx.top_components, task_dir, task, *rest, save_dir], make_eval, "results.json", "eval")
    follow_model(ctx, out_dir, "predict")
    follow_model(ctx, loss_dir, LOSS_KIND)
    follow_model(ctx, save_dir, "eval")


def initial_dir(ctx: BoardContext, kind: str) -> str:
    """`<save_root>/<model>/<method>/<kind>_<timestamp>` for the model and method the top bar starts with."""
    comps = ctx.w.components
    return new_run_dir(comps["model_name_or_path"].value, comps["finetuning_type"].value, ctx.save_root, kind)


def follow_model(ctx: BoardContext, folder: Any, kind: str) -> None:
    """A new model or method in the top bar renames `folder` after it, as the Train tab's run folders,
    unless the user typed a folder of their own."""
    comps = ctx.w.components
    model, method = comps["model_name_or_path"], comps["finetuning_type"]

    def rename(model_path, method_name, current):
        if not follows_model(current, kind):
            return gr.update()
        return gr.update(value=new_run_dir(model_path, method_name, ctx.save_root, kind))

    rename.__name__ = f"follow_{kind}_folder"  # one handler name per folder (the Board's tests find them by name)
    for comp in (model, method):
        comp.change(rename, [model, method, folder], folder, show_progress="hidden")


def predict_config(top: dict[str, Any], fields: list[FormField], values: list[Any], dataset_dir: str,
                   output_dir: str, flags: dict[str, bool] = PREDICT_FLAGS) -> dict[str, Any]:
    """`lathe train` with no training, on eval_dataset, doing what `flags` ask: PREDICT_FLAGS (the predict
    job: BLEU/ROUGE in predict_results.json) or LOSS_FLAGS (the loss job: eval_loss in eval_results.json)."""
    raw = dict(top)
    raw.update(values_to_raw(fields, named(fields, values)))
    raw.update({"stage": SFT.name, "do_train": False, **flags, "dataset_dir": dataset_dir, "output_dir": output_dir})
    if not raw.get("eval_dataset"):
        raise LatheError("`eval_dataset` is required: pick the dataset to run on.")
    check_config(raw, purpose="train")
    return raw


def with_perplexity(metrics: dict[str, Any]) -> dict[str, Any]:
    """eval_loss (and eval_<name>_loss per dataset) with its perplexity, exp(loss), beside it."""
    out = dict(metrics)
    for key in [k for k in metrics if k.startswith("eval_") and k.endswith("_loss")]:
        out.setdefault(key[:-len("loss")] + "perplexity", math.exp(min(float(metrics[key]), 700.0)))
    return out


def eval_config(top: dict[str, Any], fields: list[FormField], values: list[Any]) -> dict[str, Any]:
    """`lathe eval`: a multiple-choice benchmark; results.json in a new save_dir."""
    raw = dict(top)
    raw.update(values_to_raw(fields, named(fields, values), always=("task",)))
    if not raw.get("task"):
        raise LatheError("`task` is required: pick a benchmark (a folder of task_dir).")
    if not raw.get("save_dir"):
        raise LatheError("`save_dir` is required: the new folder for results.json.")
    check_save_dir(raw["save_dir"])  # a new folder, or the progress of an aborted run only
    check_config(raw, purpose="infer")
    return raw
