"""Checkpoints that are whole or absent, the one a run resumes from, and the checks that keep output safe.

The Hugging Face Trainer writes `checkpoint-N` in place (weights, optimizer, scheduler, RNG
states, `trainer_state.json` last) and `transformers.get_last_checkpoint` picks the highest
number by name alone, so a `kill -9` mid-save used to leave a folder that the next run
resumed from and crashed on, or loaded half-written weights from. lathe's trainers
(`AtomicCheckpoints`) write each checkpoint into `output_dir/.staging/` and rename it to
`checkpoint-N` only once the Trainer has written all of it; old checkpoints beyond
`save_total_limit` are deleted after that rename, so the only complete checkpoint is never
the one deleted. Resuming takes the newest checkpoint whose state file parses and names its
own step (`last_complete_checkpoint`) and removes leftovers of an interrupted save.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LatheError

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

STAGING = ".staging"  # where a checkpoint is written before it is renamed into place
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json",
                "adapter_model.bin", "pytorch_model.bin", "pytorch_model.bin.index.json", "value_head.safetensors")
# Options that make two runs "the same run" for resuming: a checkpoint of another model,
# stage or method cannot continue this one.
IDENTITY_KEYS = ("model_name_or_path", "stage", "finetuning_type")
SPACE_MARGIN = 1.2  # free space wanted per checkpoint, over its estimated size


def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def checkpoint_complete(path: Path) -> bool:
    """Whether `path` holds everything the Trainer writes, its state file last."""
    step = checkpoint_step(path)
    if step is None:
        return False
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(state, dict) or state.get("global_step") != step:
        return False
    return any((path / name).exists() for name in WEIGHT_FILES) or any(path.glob("global_step*"))


def checkpoints(out: Path) -> list[Path]:
    """The checkpoint-N folders of `out`, oldest step first."""
    if not out.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in out.iterdir()]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def last_complete_checkpoint(out: Path) -> str | None:
    complete = [p for p in checkpoints(out) if checkpoint_complete(p)]
    return str(complete[-1]) if complete else None


def remove_incomplete_checkpoints(out: Path) -> list[str]:
    """Delete half-written checkpoints (a crash mid-save) so they are never resumed or counted."""
    removed = []
    if (out / STAGING).exists():
        shutil.rmtree(out / STAGING, ignore_errors=True)
        removed.append(STAGING)
    for path in checkpoints(out):
        if not checkpoint_complete(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    if removed:
        logger.warning("Removed incomplete checkpoint(s) left by an interrupted save: %s", ", ".join(removed))
    return removed


def check_same_run(cfg: "RunConfig", out: Path, saved_config: str) -> None:
    """Refuse to resume or overwrite a run of another model, stage or method in the same output_dir."""
    path = out / saved_config
    if not path.is_file():
        return
    try:
        import yaml

        saved: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return
    now = cfg.to_dict()
    differs = [k for k in IDENTITY_KEYS if k in saved and str(saved[k]) != str(now.get(k))]
    if differs:
        details = "; ".join(f"{k}: {saved[k]!r} there, {now.get(k)!r} now" for k in differs)
        raise LatheError(
            f"output_dir {out} holds another run ({details}). Choose another output_dir, or set "
            f"`overwrite_output_dir: true` to discard that run."
        )


def check_writable(out: Path, needed_bytes: int | None = None) -> None:
    """Find an unwritable or full output_dir before training, not at the first checkpoint."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".lathe-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise LatheError(f"output_dir {out} is not writable ({e.strerror or e}): choose another folder.") from None
    if needed_bytes:
        free = shutil.disk_usage(out).free
        if free < needed_bytes * SPACE_MARGIN:
            raise LatheError(
                f"output_dir {out} has {free / 2**30:.2f} GiB free, but one checkpoint of this run needs about "
                f"{needed_bytes / 2**30:.2f} GiB: free some space or choose another output_dir."
            )


def checkpoint_bytes(model, save_only_model: bool) -> int:
    """Size of one checkpoint: the saved weights (the adapter, or the whole model) plus AdamW's two fp32 states."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    adapter_only = hasattr(model, "peft_config")
    weights = trainable * 4 if adapter_only else sum(p.numel() * p.element_size() for p in params)
    return int(weights + (0 if save_only_model else trainable * 8))


def is_disk_full(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(out: Path) -> LatheError:
    last = last_complete_checkpoint(out)
    kept = f"the last complete checkpoint, {Path(last).name}, is kept" if last else "no complete checkpoint was saved"
    return LatheError(
        f"The disk of output_dir {out} is full: {kept}. Free some space and run the same command again to resume."
    )


class AtomicCheckpoints:
    """Trainer mixin: each checkpoint is written under `.staging/` and renamed into place when whole.

    The Trainer builds the checkpoint path from `_get_output_dir`, so pointing that at the
    staging folder for the length of `_save_checkpoint` makes every file of the checkpoint
    (model, optimizer, RNG, DeepSpeed shards from every rank) land there; the main process
    then renames the finished folder, which a crash cannot leave half done, and deletes old
    checkpoints beyond `save_total_limit` afterwards.
    """

    _lathe_staging: str | None = None

    def _get_output_dir(self, trial):
        return self._lathe_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = Path(super()._get_output_dir(trial))
        staging = run_dir / STAGING
        name = f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._lathe_staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._lathe_staging = None
        self.accelerator.wait_for_everyone()  # every rank's files are written
        best = self.state.best_model_checkpoint
        staged_best = bool(best) and Path(best).parent == staging
        if staged_best:
            self.state.best_model_checkpoint = str(run_dir / Path(best).name)
        if self.args.should_save:
            if staged_best:  # the copy of the state inside the checkpoint names the final path too
                self.state.save_to_json(str(staging / name / STATE_FILE))
            final = run_dir / name
            if final.exists():  # the same step saved again (a resumed run): swap, never half-replace
                old = staging / f"old-{name}"
                os.replace(final, old)
                os.replace(staging / name, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging / name, final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()
