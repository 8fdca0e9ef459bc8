"""Training stages, one module each, registered by their `stage:` name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..errors import LatheError

if TYPE_CHECKING:
    from ..config import RunConfig


def _sft(cfg: "RunConfig") -> dict[str, Any]:
    from .sft import run_sft  # imported on use: transformers' Trainer is slow to import

    return run_sft(cfg)


STAGES: dict[str, Callable[["RunConfig"], dict[str, Any]]] = {"sft": _sft}


def run_stage(cfg: "RunConfig") -> dict[str, Any]:
    """Run the configured stage after seeding everything the run touches."""
    from transformers import set_seed

    stage = cfg.finetuning.stage
    if stage not in STAGES:
        raise LatheError(f"stage `{stage}` is not registered; known: {', '.join(STAGES)}.")
    set_seed(cfg.training.seed)  # before the model loads, so adapter init is reproducible too
    return STAGES[stage](cfg)
