"""Training stages, one module each, each declaring its `Stage` (stage.py) under its `stage:` name.

Importing this package registers the built-in stages in `lathe.registry.STAGES`; adding a
stage is one module here plus its import below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..heap import frozen
from ..hub import use_token
from ..registry import STAGES
# Each registers its stage; the order here is the order `--help` and the Board list them.
from . import pt, sft, rm, ppo, dpo, kto, grpo  # noqa: F401, I001
from .stage import StageResult

if TYPE_CHECKING:
    from ..config import RunConfig


def run_stage(cfg: "RunConfig") -> StageResult:
    """Run the configured stage after seeding everything the run touches."""
    from transformers import set_seed

    use_token(cfg.hub_token)  # the run's hub pushes find it there; the Trainer's arguments never carry it
    set_seed(cfg.training.seed)  # before the model loads, so adapter init is reproducible too
    with frozen():  # the libraries are imported now; collections skip their objects (see heap.py)
        return STAGES[cfg.finetuning.stage].run(cfg)


__all__ = ["StageResult", "run_stage"]
