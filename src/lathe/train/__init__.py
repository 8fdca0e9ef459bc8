"""Training stages, one module each, registered by their `stage:` name."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import LatheError
from ..heap import frozen

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass
class StageResult:
    """What a stage leaves behind in memory: its metrics and the trained model."""

    metrics: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    tokenizer: Any = None
    extras: dict[str, Any] = field(default_factory=dict)  # stage-specific objects (e.g. the reference model)


# stage name -> "module:function", imported on use (transformers' Trainer is slow to import).
STAGES: dict[str, str] = {
    "pt": "lathe.train.pt:run_pt",
    "sft": "lathe.train.sft:run_sft",
    "rm": "lathe.train.rm:run_rm",
    "dpo": "lathe.train.dpo:run_dpo",
    "kto": "lathe.train.kto:run_kto",
    "ppo": "lathe.train.ppo:run_ppo",
}


def run_stage(cfg: "RunConfig") -> StageResult:
    """Run the configured stage after seeding everything the run touches."""
    from transformers import set_seed

    stage = cfg.finetuning.stage
    if stage not in STAGES:
        raise LatheError(f"stage `{stage}` is not registered; known: {', '.join(STAGES)}.")
    set_seed(cfg.training.seed)  # before the model loads, so adapter init is reproducible too
    module, function = STAGES[stage].split(":")
    run = getattr(importlib.import_module(module), function)
    with frozen():  # the libraries are imported now; collections skip their objects (see heap.py)
        return run(cfg)
