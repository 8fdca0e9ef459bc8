"""Training callbacks: the machine-readable log that the CLI, the Board and plots read."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

LOG_FILE = "trainer_log.jsonl"


def fmt_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def append_log_record(output_dir: str | Path, record: dict) -> None:
    """One line of trainer_log.jsonl (also written by loops that are not a Trainer, e.g. PPO)."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(output_dir) / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class JsonlLogCallback(TrainerCallback):
    """Appends one JSON line per logging step to `output_dir/trainer_log.jsonl` (main process only).

    Fields: current_steps, total_steps, loss, lr, epoch, percentage, total_tokens (non-padding
    tokens seen), throughput (tokens/s since the start of this run), elapsed_time and
    remaining_time (h:mm:ss), plus eval_loss on evaluation steps and every other number the
    stage logs (grad_norm, rewards/margins, accuracy, ...).
    """

    def __init__(self) -> None:
        self.start = 0.0
        self.start_step = 0
        self.start_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
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
        if not state.is_world_process_zero or not logs or not ({"loss", "eval_loss"} & set(logs)):
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
