"""Checkpoints of lathe's own training loops (grpo, rloo, ppo): resumable after kill -9.

The stages that run on the Hugging Face Trainer get their checkpoints from it (`checkpoints.py`).
A hand-written loop has none, so this module writes the same layout, by the same rule: each
`checkpoint-N` is written under `output_dir/.staging/` and renamed into place when whole, its
`trainer_state.json` (naming `global_step: N`) last. `last_complete_checkpoint` and
`prepare_output_dir` therefore pick one to resume from (`resume_from_checkpoint`, or an output_dir
that holds checkpoints) with no rule of their own, and `save_total_limit` rotates them.

A checkpoint holds what continuing exactly needs: the weights (the adapter, or the whole model,
with `save_pretrained`, so a checkpoint is also a model to load), `optimizer.pt`, `scheduler.pt`,
`rng_state.pth` (python `random`, numpy, torch's CPU generator and every CUDA device's, and the
loop's own `torch.Generator`, its position in the data) and `loop_state.pt` (the stage's own
numbers). A run resumed from step k then draws the same prompts and samples the same tokens for
steps k+1.. as one that was never stopped. Under torchrun, rank 0 writes the checkpoint and each other
process adds its own random states (`rng_state_<rank>.pth`, as the Trainer names them); the output folder
is then one that every process sees (one machine, or a shared file system). `save_only_model: true` keeps the weights alone, as the
Trainer does: such a checkpoint is refused for resuming, by name.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import LatheError
from .callbacks import LOG_FILE
from .checkpoints import STAGING, STATE_FILE
from .loop_ranks import Ranks

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE, LOOP_FILE = "optimizer.pt", "scheduler.pt", "rng_state.pth", "loop_state.pt"


def reward_metrics(rewards: list[float], runtime: float) -> dict[str, float]:
    """What a hand-written RL loop reports at its end: the first, last and mean step reward of this
    run (the steps before a resume included, as `rewards` carries them over), and its runtime."""
    if not rewards:
        return {"train_runtime": runtime}
    return {"train_reward_first": rewards[0], "train_reward_last": rewards[-1],
            "train_reward_mean": sum(rewards) / len(rewards), "train_runtime": runtime}


def check_loop_saving(cfg: "RunConfig") -> None:
    """The save strategies a hand-written loop carries out: `steps`, `epoch` and `no`."""
    strategy = str(getattr(cfg.training.save_strategy, "value", cfg.training.save_strategy))
    if strategy not in ("steps", "epoch", "no"):
        raise LatheError(f"{cfg.source}: `save_strategy: {strategy}` needs an evaluation metric; "
                         f"`stage: {cfg.finetuning.stage}` runs its own loop and saves by `steps` or `epoch` "
                         f"(or `no`). Choose one of them.")


def save_interval(cfg: "RunConfig", total_steps: int, steps_per_epoch: int) -> int | None:
    """Steps between two checkpoints (None: never), as the Trainer reads `save_strategy` / `save_steps`
    (a `save_steps` below 1 is a share of the total steps)."""
    t = cfg.training
    strategy = str(getattr(t.save_strategy, "value", t.save_strategy))
    if strategy == "no":
        return None
    if strategy == "epoch":
        return max(1, steps_per_epoch)
    steps = t.save_steps
    return max(1, math.ceil(total_steps * steps)) if 0 < steps < 1 else max(1, int(steps))


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state(),
              "generator": generator.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["cpu"])
    generator.set_state(states["generator"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def rank_rng_file(rank: int) -> str:
    return RNG_FILE if rank == 0 else f"rng_state_{rank}.pth"


def save_loop_checkpoint(cfg: "RunConfig", step: int, total_steps: int, model, tokenizer, optimizer, scheduler,
                         generator: torch.Generator, extra: dict[str, Any] | None = None, ranks: Ranks = Ranks()
                         ) -> Path:
    """Write `output_dir/checkpoint-<step>` whole or not at all; delete those beyond `save_total_limit`.

    Every process calls it (the others add their random states to rank 0's folder before it is renamed)."""
    t = cfg.training
    out = Path(t.output_dir)
    name = f"checkpoint-{step}"
    folder = out / STAGING / name
    if ranks.main:
        _write_checkpoint(cfg, folder, model, tokenizer, optimizer, scheduler, generator, extra)
    ranks.barrier()
    if not ranks.main and not t.save_only_model:
        torch.save(rng_states(generator), folder / rank_rng_file(ranks.rank))
    ranks.barrier()
    if ranks.main:
        _publish_checkpoint(cfg, folder, step, total_steps)
    ranks.barrier()  # no process goes on (and may save again) before the checkpoint is in place
    return out / name


def _write_checkpoint(cfg: "RunConfig", folder: Path, model, tokenizer, optimizer, scheduler,
                      generator: torch.Generator, extra: dict[str, Any] | None) -> None:
    t = cfg.training
    shutil.rmtree(folder.parent, ignore_errors=True)
    if hasattr(model, "peft_config"):
        model.save_pretrained(folder, selected_adapters=["default"])  # the policy, not a reward adapter beside it
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if not t.save_only_model:
        torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
        torch.save(scheduler.state_dict(), folder / SCHEDULER_FILE)
        torch.save(rng_states(generator), folder / RNG_FILE)
        torch.save(extra or {}, folder / LOOP_FILE)


def _publish_checkpoint(cfg: "RunConfig", folder: Path, step: int, total_steps: int) -> None:
    """The state file last (the folder is then whole), the rename into place, the rotation."""
    from transformers.trainer_utils import rotate_checkpoints

    t = cfg.training
    out, name, staging = Path(t.output_dir), folder.name, folder.parent
    state = {"global_step": step, "max_steps": total_steps, "stage": cfg.finetuning.stage,
             "save_only_model": bool(t.save_only_model)}
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
    final = out / name
    if final.exists():  # the same step saved again (a resumed run): swap, never half-replace
        old = staging / f"old-{name}"
        os.replace(final, old)
        os.replace(folder, final)
    else:
        os.replace(folder, final)
    shutil.rmtree(staging, ignore_errors=True)
    rotate_checkpoints(output_dir=str(out), save_total_limit=t.save_total_limit, use_mtime=False)


def _load_weights(model, folder: Path) -> None:
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        path = folder / "adapter_model.safetensors"
        if not path.is_file():
            raise LatheError(f"{folder} holds no adapter_model.safetensors: it is not a checkpoint of this "
                             f"adapter run. Choose another checkpoint, or set `overwrite_output_dir: true`.")
        result = set_peft_model_state_dict(model, load_file(str(path)), adapter_name="default")
        if result.unexpected_keys:
            raise LatheError(f"{path} does not match this run's adapter: unexpected {result.unexpected_keys[:3]}.")
        return
    if (folder / "model.safetensors.index.json").is_file():
        index = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
    elif (folder / "model.safetensors").is_file():
        state = load_file(str(folder / "model.safetensors"))
    else:
        raise LatheError(f"{folder} holds no model.safetensors: it is not a checkpoint of this full-weight run.")
    params = model.state_dict()
    loaded_ptrs = {params[k].data_ptr() for k in state if k in params}
    missing = [k for k in params if k not in state and params[k].data_ptr() not in loaded_ptrs]  # tied: shared
    unexpected = [k for k in state if k not in params]
    if missing or unexpected:
        raise LatheError(f"{folder} does not match this run's model: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}. Choose another checkpoint, or set `overwrite_output_dir: true`.")
    model.load_state_dict(state, strict=False)


def restore_loop_checkpoint(path: str | Path, model, optimizer, scheduler, generator: torch.Generator,
                            rank: int = 0) -> tuple[int, dict[str, Any]]:
    """Load a checkpoint written by `save_loop_checkpoint` into the run's objects; (its step, the stage's state).

    Called after everything is built, so that the random states it sets are the last word. A process
    whose rank the checkpoint has no random states for (it was written by fewer processes) takes the
    data's position from rank 0's and keeps its own token stream; that is logged, since its samples
    then differ from an uninterrupted run's.
    """
    folder = Path(path)
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise LatheError(f"{folder} holds no readable {STATE_FILE}: it is not a whole checkpoint.") from None
    missing = [name for name in (OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE, LOOP_FILE) if not (folder / name).is_file()]
    if missing:
        why = ("it was saved with `save_only_model: true`" if state.get("save_only_model")
               else "it was not written by lathe's own grpo/rloo/ppo loop")
        raise LatheError(f"{folder} lacks {', '.join(missing)}: {why}, so the run cannot continue from it. "
                         f"Set `overwrite_output_dir: true` to start again, or load its weights as a model.")
    _load_weights(model, folder)
    optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / SCHEDULER_FILE, weights_only=False))
    extra = torch.load(folder / LOOP_FILE, weights_only=False)  # our own files: numpy / python states inside
    own = folder / rank_rng_file(rank)
    if own.is_file():
        set_rng_states(torch.load(own, weights_only=False), generator)
    else:
        generator.set_state(torch.load(folder / RNG_FILE, weights_only=False)["generator"])
        logger.warning("%s has no random states of process %d (it was saved by fewer processes): this process "
                       "samples other tokens than an uninterrupted run would.", folder, rank)
    return int(state["global_step"]), extra


def trim_logs(out: str | Path, step: int, files: dict[str, str] | None = None) -> None:
    """Keep the log records up to `step` (a run killed after its checkpoint logged a few more): the resumed
    run logs the rest anew. `files`: file name -> the record key holding its step."""
    for name, key in (files or {LOG_FILE: "current_steps"}).items():
        path = Path(out) / name
        if not path.is_file():
            continue
        kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line and json.loads(line).get(key, 0) <= step]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
