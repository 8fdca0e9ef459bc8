"""The Compare tab: several past runs side by side, their curves overlaid and the options they differ in.

A run is a folder under `<save root>/<model>/<method>/<run>` (context.py) or any folder typed in. Everything
shown is read from what the run itself wrote, so a run started from a shell compares like one the Board
started: the curves from `trainer_log.jsonl` (one line per logging step: loss, eval_loss, reward for GRPO,
rewards/*, accuracy, throughput, ...), the options from `lathe_config.yaml`, the resolved config every
`lathe train` writes before the weights load (train/base.py). Only a run that stopped before that file was
written falls back to the config the Board started it with (`Runner.run_folder(key)/config.yaml`).

The functions here take folders and return plain data (a pandas frame for the plot, lists of rows for the
tables); `build_compare_tab` only wires them to widgets.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from ..config.read import read_config_file
from ..errors import LatheError
from ..train.base import CONFIG_FILE
from ..train.callbacks import LOG_FILE
from .context import SAVE_ROOT, BoardContext, error_md, is_run
from .locales import t
from .monitor import read_log
from .runner import Runner

MISSING = "—"  # an option or a metric a run does not have
FIRST_METRICS = ("loss", "eval_loss", "reward", "accuracy")  # offered first, in this order, when logged
NOT_METRICS = frozenset({"current_steps", "total_steps", "percentage", "epoch"})  # the x axis and its relatives
HIDDEN_OPTIONS = frozenset({"output_dir"})  # differs in every run; the run's label already names it
SUMMARY_KEYS = ("run", "steps", "loss", "eval_loss", "reward", "throughput", "elapsed_time")
OPTIONAL_SUMMARY = frozenset({"eval_loss", "reward", "throughput", "elapsed_time"})  # shown when some run logs them


# ---------------------------------------------------------------- which runs


def _mtime(folder: Path) -> float | None:
    """When the run last wrote: its log when it has one (a folder's own time misses appended lines); None for
    a folder gone since it was listed."""
    try:
        times = [folder.stat().st_mtime]
    except OSError:
        return None
    try:
        times.append((folder / LOG_FILE).stat().st_mtime)
    except OSError:  # no log (yet), or it went with its folder
        pass
    return max(times)


def _subfolders(folder: Path) -> list[Path]:
    """The folders inside `folder`; none where it cannot be read (no permission, deleted while listed):
    one such folder under the save root must not hide every other run."""
    try:
        return [p for p in folder.iterdir() if p.is_dir()]
    except OSError:
        return []


def _is_run(folder: Path) -> bool:
    try:
        return is_run(folder)
    except OSError:  # unreadable, or deleted while looked at: not a run to offer
        return False


def _holds_run(folder: Path) -> bool:
    """A folder given by path counts when it has a training log or a run config (a model folder does not)."""
    try:
        return folder.is_dir() and ((folder / LOG_FILE).is_file() or (folder / CONFIG_FILE).is_file())
    except OSError:
        return False


def find_runs(root: str | Path = SAVE_ROOT, extra: Iterable[str] = ()) -> list[str]:
    """Every run folder under `<root>/<model>/<method>/`, of any model and method, newest first; then the
    folders of `extra` (runs given by path, the Board's own runs) that hold a run and are not among them.
    A folder that cannot be read, or is deleted while this looks, is left out."""
    base = Path(root).expanduser()
    found = [run for model in _subfolders(base) for method in _subfolders(model) for run in _subfolders(method)
             if _is_run(run)]
    stamped = [(stamp, run) for run in found if (stamp := _mtime(run)) is not None]
    stamped.sort(key=lambda pair: pair[0], reverse=True)
    runs = [str(run) for _, run in stamped]
    seen = {run.resolve() for _, run in stamped}
    for path in extra:
        folder = Path(str(path or "").strip()).expanduser()
        if str(folder) in ("", ".") or not _holds_run(folder) or folder.resolve() in seen:
            continue
        seen.add(folder.resolve())
        runs.append(str(folder))
    return runs


def run_labels(runs: list[str]) -> dict[str, str]:
    """A short unique name per run: `<model>/<method>/<run>`, longer only where two runs would share it."""
    parts = {run: Path(run).expanduser().resolve().parts for run in runs}
    depth = {run: 3 for run in runs}
    while True:
        labels = {run: "/".join(parts[run][-depth[run]:]) for run in runs}
        clash = [run for run in runs if list(labels.values()).count(labels[run]) > 1 and depth[run] < len(parts[run])]
        if not clash:
            return labels
        for run in clash:
            depth[run] += 1


# ---------------------------------------------------------------- curves


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


Logs = dict[str, list[dict[str, Any]]]  # run -> the records of its trainer_log.jsonl


def read_logs(runs: list[str], logs: Logs | None = None) -> Logs:
    """Each run's log records; `logs` when given (a handler reads every log once and hands them on)."""
    return logs if logs is not None else {run: read_log(run) for run in runs}


def metric_names(runs: list[str], logs: Logs | None = None) -> list[str]:
    """The numeric fields the runs' logs hold, loss (then eval_loss, reward, accuracy) first, the rest by name."""
    logs = read_logs(runs, logs)
    names: set[str] = set()
    for run in runs:
        for record in logs[run]:
            names.update(k for k, v in record.items() if _number(v) and k not in NOT_METRICS)
    return [m for m in FIRST_METRICS if m in names] + sorted(names - set(FIRST_METRICS))


def curves(runs: list[str], metric: str, logs: Logs | None = None):
    """One `metric` curve per run, as a long frame (columns step, value, run) that a LinePlot colours by run."""
    import pandas as pd

    logs = read_logs(runs, logs)
    labels = run_labels(runs)
    rows = [(r["current_steps"], float(r[metric]), labels[run])
            for run in runs for r in logs[run] if _number(r.get(metric)) and _number(r.get("current_steps"))]
    return pd.DataFrame(rows, columns=["step", "value", "run"])


def _last_of(records: list[dict[str, Any]]):
    """key -> the last value the log holds for it (a field is absent from the lines that do not log it)."""
    return lambda key: next((r[key] for r in reversed(records) if key in r), None)


def summary(runs: list[str], logs: Logs | None = None) -> list[list[str]]:
    """Header + a row per run: steps done, final loss, best eval_loss, final reward, last throughput and time.

    Columns no run logs (eval_loss without evaluation, reward outside GRPO/PPO) are left out.
    """
    logs = read_logs(runs, logs)
    labels = run_labels(runs)
    table = []
    for run in runs:
        records = logs[run]
        last = _last_of(records)
        evals = [r["eval_loss"] for r in records if _number(r.get("eval_loss"))]
        steps = last("current_steps")
        total = last("total_steps")
        row = {"run": labels[run], "steps": MISSING if steps is None else f"{steps}/{total if total else '?'}",
               "loss": last("loss"), "eval_loss": min(evals) if evals else None, "reward": last("reward"),
               "throughput": last("throughput"), "elapsed_time": last("elapsed_time")}
        table.append({k: _text(v) if k not in ("run", "steps") else v for k, v in row.items()})
    keys = [k for k in SUMMARY_KEYS if k not in OPTIONAL_SUMMARY or any(row[k] != MISSING for row in table)]
    return [list(keys)] + [[row[k] for k in keys] for row in table]


# ---------------------------------------------------------------- options


class Options(NamedTuple):
    """A run's options; `error`: why its config could not be read (values empty); `as_written`: why the Board's
    copy of its config is shown as written, not resolved (the first line of the validation error)."""

    values: dict[str, Any]
    error: str | None = None
    as_written: str | None = None


def read_options(run: str, runner: Runner | None = None) -> Options:
    """The options a run was trained with: its `lathe_config.yaml`; else the config the Board started it
    with (resolved as `lathe train` would, when it still validates; as written, saying why, when not);
    else {} (nothing records them). A config that cannot be read gives {} and the error."""
    path = Path(run).expanduser() / CONFIG_FILE
    try:
        if not path.is_file() and runner is not None:
            board_copy = runner.config_path(run)
            if board_copy.is_file():
                return _resolved(read_config_file(board_copy), board_copy)
        return Options(read_config_file(path) if path.is_file() else {})
    except LatheError as e:
        return Options({}, error=str(e))
    except OSError as e:  # no permission, or deleted while read
        return Options({}, error=f"{e.filename or path}: cannot read the run's config ({e.strerror or e}); "
                                 f"make it readable.")


def run_options(run: str, runner: Runner | None = None) -> dict[str, Any]:
    """`read_options(run, runner).values`: the options alone."""
    return read_options(run, runner).values


def _resolved(raw: dict[str, Any], source: Path) -> Options:
    """The Board's copy holds only what the form changed: resolve it as `lathe train` would, so its defaults
    compare with the other runs' `lathe_config.yaml`. A config that no longer validates is shown as written,
    its defaults missing, with the first line of the reason."""
    from ..config.load import build_config

    try:
        return Options(build_config(raw, str(source), purpose="train").to_dict())
    except (LatheError, ValueError, TypeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return Options(raw, as_written=reason)


def _training_defaults() -> dict[str, Any]:
    """The Trainer's own defaults: `lathe_config.yaml` writes a Trainer option only when the config set it."""
    import dataclasses

    from ..config.training import training_fields

    out = {}
    for name, f in training_fields().items():
        if f.default is not dataclasses.MISSING:
            out[name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[name] = f.default_factory()
    return out


def _text(value: Any) -> str:
    """One option value as the YAML would show it; numbers written as text ('5e-5') read as numbers."""
    if value is None:
        return MISSING
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return _text(int(number) if number.is_integer() and "." not in value and "e" not in value.lower()
                     else number) if math.isfinite(number) else value
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value, ensure_ascii=False, default=str)


def option_table(runs: list[str], runner: Runner | None = None, only_differences: bool = True,
                 configs: list[dict[str, Any]] | None = None) -> list[list[str]]:
    """Header (`option`, then each run's label) + a row per option, a column per run.

    Only options whose values differ between the runs are listed (all of them with `only_differences` off);
    an option a run's config lacks (another method's, a run without a config) shows as "—". A Trainer option
    a config leaves out is at the Trainer's default, and is shown as that. `configs`: the runs' options when
    already read (`read_options`), else they are read here.
    """
    labels = run_labels(runs)
    configs = configs if configs is not None else [run_options(run, runner) for run in runs]
    defaults = _training_defaults() if any(configs) else {}
    keys: list[str] = []
    for cfg in configs:
        keys += [k for k in cfg if k not in keys and k not in HIDDEN_OPTIONS]
    rows = []
    for key in keys:
        values = [_text(cfg[key]) if key in cfg else _text(defaults.get(key)) if cfg else MISSING
                  for cfg in configs]
        if not only_differences or len(set(values)) > 1:
            rows.append([key, *values])
    return [["option", *[labels[run] for run in runs]], *rows]


# ---------------------------------------------------------------- the tab


def build_compare_tab(ctx: BoardContext) -> None:
    """Runs (a multi-select, re-read when opened or on Refresh), a metric, the overlaid curves, a summary
    and the options the runs differ in. Each handler takes the language menu's value last."""
    w, lang = ctx.w, ctx.w.lang
    with gr.Row():
        runs_pick = w.ui(gr.Dropdown(choices=_choices(ctx, []), value=[], multiselect=True, allow_custom_value=True,
                                     label=t("cmp_runs", lang), info=t("cmp_runs_info", lang),
                                     elem_id="compare-runs", scale=4), "cmp_runs", "info")
        metric = w.ui(gr.Dropdown(choices=["loss"], value="loss", label=t("cmp_metric", lang),
                                  elem_id="compare-metric", scale=1), "cmp_metric")
        refresh = w.ui(gr.Button(t("cmp_refresh", lang), elem_id="compare-refresh", scale=0), "cmp_refresh", "value")
    status = gr.Markdown(elem_id="compare-status")
    # gradio's LinePlot fixes its axes and series colours from the first value it draws: it starts empty (None) and
    # is cleared before each redraw, or a second run's line comes out without a stroke and the legend empty.
    plot = w.ui(gr.LinePlot(None, x="step", y="value", color="run", y_title="loss",
                            label=t("cmp_plot", lang), elem_id="compare-plot", height=320), "cmp_plot")
    table_summary = w.ui(gr.Dataframe(label=t("cmp_summary", lang), interactive=False, elem_id="compare-summary"),
                         "cmp_summary")
    table_options = w.ui(gr.Dataframe(label=t("cmp_options", lang), interactive=False, wrap=True,
                                      elem_id="compare-options"), "cmp_options")

    def clear_plot():
        return None

    def on_open_runs(picked, code):
        return gr.update(choices=_choices(ctx, picked or []))

    def on_compare(picked, current_metric, code):
        """Each run's log and options are read once here and handed to every table and curve."""
        picked = _picked(picked)
        if not picked:
            return (gr.update(choices=["loss"], value="loss"), gr.update(value=None, y_title="loss"),
                    _frame([["run"]], code, 1), _frame([["option"]], code, 1), t("msg_cmp_pick", code))
        logs = read_logs(picked)
        read = {run: read_options(run, ctx.runner) for run in picked}
        names = metric_names(picked, logs) or ["loss"]
        chosen = current_metric if current_metric in names else names[0]
        notes = []
        silent = [p for p in picked if not logs[p]]
        if silent:
            notes.append(f"{t('msg_cmp_no_log', code)}: " + ", ".join(f"`{p}`" for p in silent))
        notes += [error_md(code, LatheError(read[run].error)) for run in picked if read[run].error]
        notes += [f"{t('msg_cmp_as_written', code)}: `{run}`: {read[run].as_written}"
                  for run in picked if read[run].as_written]
        configs = [read[run].values for run in picked]
        options = option_table(picked, only_differences=len(picked) > 1, configs=configs)
        unknown = [run for run in picked if not read[run].values and not read[run].error]
        if unknown:
            notes.append(f"{t('msg_cmp_no_config', code)}: " + ", ".join(f"`{p}`" for p in unknown))
        elif len(picked) > 1 and len(options) == 1:
            notes.append(t("msg_cmp_same", code))
        return (gr.update(choices=names, value=chosen), gr.update(value=curves(picked, chosen, logs), y_title=chosen),
                _frame(summary(picked, logs), code), _frame(options, code, 1), "\n\n".join(notes))

    def on_metric(picked, chosen, code):
        picked = _picked(picked)
        return gr.update(value=curves(picked, chosen or "loss"), y_title=chosen or "loss")

    lang_pick = ctx.lang_pick
    compare_out = [metric, plot, table_summary, table_options, status]
    runs_pick.focus(on_open_runs, [runs_pick, lang_pick], runs_pick, show_progress="hidden")
    runs_pick.change(clear_plot, None, plot, show_progress="hidden").then(
        on_compare, [runs_pick, metric, lang_pick], compare_out)
    metric.input(clear_plot, None, plot, show_progress="hidden").then(on_metric, [runs_pick, metric, lang_pick], plot)
    refresh.click(on_open_runs, [runs_pick, lang_pick], runs_pick).then(
        clear_plot, None, plot, show_progress="hidden").then(on_compare, [runs_pick, metric, lang_pick], compare_out)


def _choices(ctx: BoardContext, picked: list[str]) -> list[tuple[str, str]]:
    """(label, folder) for the run menu: the save root's runs, the Board's own runs, and those picked by path."""
    runs = find_runs(ctx.save_root, [*ctx.runner.runs, *picked])
    labels = run_labels(runs)
    return [(labels[run], run) for run in runs]


def _picked(picked: list[str] | None) -> list[str]:
    """The runs picked, blanks dropped, each once."""
    return list(dict.fromkeys(str(p).strip() for p in picked or [] if str(p).strip()))


def _frame(table: list[list[str]], code: str, words: int | None = None) -> dict[str, Any]:
    """A Dataframe value from header + rows; the header's first `words` cells (run, option, final loss, ...)
    are keys said in `code`, the rest (run labels) stay as they are."""
    header = [t(f"cmp_col_{cell}", code) if words is None or i < words else cell for i, cell in enumerate(table[0])]
    return {"headers": header, "data": table[1:] or [[""] * len(header)]}
