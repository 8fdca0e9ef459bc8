"""Training callbacks: the machine-readable log that the CLI, the Board and plots read; early stopping that says why.

Training writes `trainer_log.jsonl`; a pass that is not training (evaluation, prediction, a
multiple-choice benchmark) writes its progress to `progress.jsonl` beside its results, in the
same fields (current_steps, total_steps, percentage, elapsed_time, remaining_time), so the Board
draws one progress bar for all of them, for a run it started and for one started from a shell.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer_utils import has_length

from ..errors import LatheError
from ..process import is_main_process

logger = logging.getLogger(__name__)

LOG_FILE = "trainer_log.jsonl"
PROGRESS_FILE = "progress.jsonl"


def fmt_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append `record` as one JSON line to `path` (its folder made when missing): every log here is written so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def append_log_record(output_dir: str | Path, record: dict) -> None:
    """One line of trainer_log.jsonl (also written by loops that are not a Trainer, e.g. PPO)."""
    append_jsonl(Path(output_dir) / LOG_FILE, record)


class ProgressLog:
    """The progress of one pass over batches, as JSON lines in `folder/progress.jsonl` (main process only).

    `start()` begins the file anew with a step-0 record; `advance()` counts a batch and writes a
    record at the first batch, at the last one and otherwise at most every `every_seconds` (a
    long pass over tiny batches must not write a line per batch); `finish()` writes the closing
    record (100%, `finished: true`). Each record names its `phase` (eval, predict, benchmark) once
    it is known, and its `dataset` where one pass covers several datasets in turn. `total` is the
    number of batches, or None when the loader has no length (then no percentage until the end).
    """

    def __init__(self, folder: str | Path, phase: str | None, total: int | None, every_seconds: float = 1.0) -> None:
        self.path = Path(folder) / PROGRESS_FILE
        self.phase, self.total, self.every = phase, total, every_seconds
        self.dataset: str | None = None  # the dataset counted now, where a pass covers several one after another
        self.done = 0
        self.begun = self.last_write = time.time()
        self.main = is_main_process()

    def start(self) -> ProgressLog:
        if self.main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("", encoding="utf-8")
        self.begun = time.time()
        self._write()
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.done == n or self.done == self.total or time.time() - self.last_write >= self.every:
            self._write()

    def finish(self) -> None:
        if self.total is None or self.done < self.total:
            self.total = self.done  # a loader without length, or one that ended early: this is the whole pass
        self._write(final=True)

    def record(self, final: bool = False) -> dict:
        elapsed = time.time() - self.begun
        out = {"phase": self.phase} if self.phase else {}
        if self.dataset:
            out["dataset"] = self.dataset
        out.update(current_steps=self.done, elapsed_time=fmt_seconds(elapsed))
        if self.total is not None:
            share = self.done / self.total if self.total else 1.0  # an empty pass is a whole one
            out.update(total_steps=self.total, percentage=round(100 * share, 2))
            if self.done and not final:
                out["remaining_time"] = fmt_seconds(elapsed / self.done * max(self.total - self.done, 0))
        if final:
            out["finished"] = True
        return out

    def _write(self, final: bool = False) -> None:
        self.last_write = time.time()
        if self.main:
            append_jsonl(self.path, self.record(final))


def evaluated_dataset(metrics: dict) -> str | None:
    """The dataset an evaluation covered when it is one of several, else None: the Trainer prefixes that
    dataset's metrics `eval_<name>_`, its speed metrics among them (`eval_<name>_runtime`, always there)."""
    prefix = next((k[:-len("_runtime")] for k in metrics if k.endswith("_runtime")), "eval")
    return prefix[len("eval_"):] or None if prefix.startswith("eval_") else None


class StartupCallback(TrainerCallback):
    """Logs where the time to the first step went (lathe.startup), when the first step ends."""

    def on_step_end(self, args, state, control, **kwargs):
        from .. import startup

        if startup.reported():
            return
        startup.mark("first step")
        line = startup.summary()
        if line and is_main_process():
            logger.info("%s", line)


class JsonlLogCallback(TrainerCallback):
    """Appends one JSON line per logging step to `output_dir/trainer_log.jsonl` (main process only).

    Fields: current_steps, total_steps, loss, lr, epoch, percentage, total_tokens (non-padding
    tokens seen), throughput (tokens/s since the start of this run), elapsed_time and
    remaining_time (h:mm:ss), plus eval_loss on evaluation steps and every other number the
    stage logs (grad_norm, rewards/margins, accuracy, ...).

    An evaluation or prediction outside training (`do_eval` / `do_predict` after it, or without
    it) is counted batch by batch into `progress.jsonl` (`ProgressLog`); evaluations during
    training are not, as the training record already places them.

    Several eval datasets (`eval_on_each_dataset`) are counted as one pass, so the bar of a loss job
    never starts again from 0: the Trainer evaluates them one after another and tells a callback
    neither how many there are nor their sizes, so the file is begun once, the steps go on from one
    dataset to the next, the total grows by each dataset's batches as it begins, and the record that
    closes a dataset's share names it (`dataset`; the Trainer names it only in the metrics, at its end).
    That closing record is `finished` too: the last one in the file says whether all of it is done.
    """

    def __init__(self, progress_seconds: float = 1.0) -> None:
        self.start = 0.0
        self.start_step = 0
        self.start_tokens = 0
        self.training = False
        self.progress_seconds = progress_seconds
        self._reset_progress()

    def _reset_progress(self) -> None:
        self.progress: ProgressLog | None = None
        self.loader = None  # the loader `progress` counts: another one begins a new pass, or the next dataset
        self.next_dataset = False  # the last pass closed one dataset of several: the next loader adds to its count

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        # The Trainer passes no step number: batches are counted here; the loader's length is the total.
        if self.training or not state.is_world_process_zero:
            return
        if self.progress is None or eval_dataloader is not self.loader:
            self._begin_pass(args, eval_dataloader)
        self.progress.advance()

    def _begin_pass(self, args, loader) -> None:
        """A new loader: the next dataset of a pass over several, or a new pass (the file begun anew). A pass
        that raised before its end left its log open: it is dropped here, not counted on."""
        total = len(loader) if has_length(loader) else None
        progress = self.progress
        if progress is not None and self.next_dataset:
            progress.total = None if total is None or progress.total is None else progress.total + total
            progress.dataset = None  # named when it ends
        else:
            progress = ProgressLog(args.output_dir, None, total, self.progress_seconds).start()
        self.progress, self.loader, self.next_dataset = progress, loader, False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._close_progress("eval", evaluated_dataset(metrics or {}))

    def on_predict(self, args, state, control, **kwargs):
        self._close_progress("predict")

    def _close_progress(self, phase: str, dataset: str | None = None) -> None:
        """Write the pass's closing record (its name is known only at its end). The log is let go of first, so
        a write that raises leaves none open; one dataset of several keeps it for the next to go on counting."""
        progress = self.progress
        self._reset_progress()
        if progress is None:
            return
        progress.phase, progress.dataset = phase, dataset
        progress.finish()
        if dataset is not None:
            self.progress, self.next_dataset = progress, True

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        self._reset_progress()  # an evaluation before training that raised must not go on counting after it
        self.start = time.time()
        self.start_step = state.global_step
        self.start_tokens = state.num_input_tokens_seen or 0
        path = Path(args.output_dir) / LOG_FILE
        if not state.is_world_process_zero or not path.exists():
            return
        if state.global_step == 0:
            path.unlink()  # a fresh run starts a fresh log
            return
        # A resumed run keeps the records up to its checkpoint and logs the rest anew.
        kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line and json.loads(line).get("current_steps", 0) <= state.global_step]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        evaluated = any(k.startswith("eval_") and k.endswith("_loss") for k in logs or {})  # eval_<name>_loss too
        if not state.is_world_process_zero or not logs or not ("loss" in logs or evaluated):
            return  # the end-of-training summary is in train_results.json instead
        elapsed = time.time() - self.start
        done = state.global_step - self.start_step
        left = state.max_steps - state.global_step
        tokens = state.num_input_tokens_seen or 0
        record = {
            "current_steps": state.global_step,
            "total_steps": state.max_steps,
            "loss": logs.get("loss"),
            "eval_loss": logs.get("eval_loss"),
            "lr": logs.get("learning_rate"),
            "epoch": round(state.epoch or 0.0, 4),
            "percentage": round(100 * state.global_step / max(state.max_steps, 1), 2),
            "total_tokens": tokens,
            "throughput": round((tokens - self.start_tokens) / elapsed, 2) if elapsed > 0 else None,
            "elapsed_time": fmt_seconds(elapsed),
            "remaining_time": fmt_seconds(elapsed / done * left) if done > 0 else None,
        }
        # Stage metrics (rewards/*, accuracy, grad_norm, eval_*) follow the fixed fields.
        record.update({k: v for k, v in logs.items() if k not in ("loss", "eval_loss", "learning_rate", "epoch")
                       and isinstance(v, (int, float))})
        append_log_record(args.output_dir, {k: v for k, v in record.items() if v is not None})


def check_early_stopping(cfg) -> None:
    """`early_stopping_steps` counts evaluations during training: without them it could never act."""
    f, t = cfg.finetuning, cfg.training
    if f.early_stopping_steps is None:
        return
    if t.eval_strategy == "no":  # a str enum: equal to its value
        raise LatheError(
            f"{cfg.source}: `early_stopping_steps` stops on evaluations made during training, and this run makes "
            f"none: set `eval_strategy: steps` (with `eval_steps`) or `epoch`, with `eval_dataset` or `val_size`."
        )
    if cfg.data.eval_on_each_dataset and t.metric_for_best_model is None:
        raise LatheError(
            f"{cfg.source}: with `eval_on_each_dataset: true` there is no overall eval_loss for `early_stopping_steps` "
            f"to watch: set `metric_for_best_model: eval_<dataset>_loss` to name the one it follows."
        )


class LatheEarlyStoppingCallback(EarlyStoppingCallback):
    """transformers' early stopping, which also says why it stopped.

    It watches `metric_for_best_model` (lathe sets eval_loss when the config names none):
    after `early_stopping_patience` evaluations in a row without improvement it ends training,
    logs the step, the count and the best value, and records them in its state
    (trainer_state.json, under stateful_callbacks) and, through `stop_summary`, in the final metrics.
    """

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: float | None = 0.0,
                 best_value: float | None = None, best_step: int | None = None, stopped_at: int | None = None):
        super().__init__(early_stopping_patience, early_stopping_threshold)
        self.best_value = best_value
        self.best_step = best_step
        self.stopped_at = stopped_at

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        super().on_evaluate(args, state, control, metrics, **kwargs)
        name = args.metric_for_best_model
        name = name if name.startswith("eval_") else f"eval_{name}"
        value = metrics.get(name)
        if value is None:
            return
        if self.early_stopping_patience_counter == 0:  # improved (or first): the parent reset its count
            self.best_value, self.best_step = float(value), state.global_step
        if control.should_training_stop and self.stopped_at is None \
                and self.early_stopping_patience_counter >= self.early_stopping_patience:
            self.stopped_at = state.global_step
            if state.is_world_process_zero:
                logger.info("Stopped early at step %d: %s has not improved for %d evaluations (best %.6g at step %s)",
                            self.stopped_at, name, self.early_stopping_patience_counter, self.best_value, self.best_step)

    def on_train_end(self, args, state, control, **kwargs):
        state.stateful_callbacks[type(self).__name__] = self.state()  # the final trainer_state.json says it too

    def stop_summary(self) -> dict:
        """The final metrics' record of an early stop (empty when training ran to its end)."""
        if self.stopped_at is None:
            return {}
        return {"early_stopped_at_step": self.stopped_at, "early_stopping_best_step": self.best_step,
                "early_stopping_best_metric": self.best_value}

    def state(self) -> dict:
        out = super().state()
        out["attributes"].update(best_value=self.best_value, best_step=self.best_step, stopped_at=self.stopped_at)
        return out


def early_stopping_callbacks(cfg) -> list[TrainerCallback]:
    steps = cfg.finetuning.early_stopping_steps
    return [LatheEarlyStoppingCallback(early_stopping_patience=steps)] if steps is not None else []
