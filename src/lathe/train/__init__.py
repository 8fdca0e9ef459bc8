"""Training stages, one module each, registered by their `stage:` name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..errors import LatheError

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass
class StageResult:
    """What a stage leaves behind in memory: its metrics and the trained model."""

    metrics: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    tokenizer: Any = None
    extras: dict[str, Any] = field(default_factory=dict)  # stage-specific objects (e.g. the reference model)


def _sft(cfg: "RunConfig") -> "StageResult":
    from .sft import run_sft  # imported on use: transformers' Trainer is slow to import

    return run_sft(cfg)


def _pt(cfg: "RunConfig") -> "StageResult":
    from .pt import run_pt

    return run_pt(cfg)


def _dpo(cfg: "RunConfig") -> "StageResult":
    from .dpo import run_dpo

    return run_dpo(cfg)


def _rm(cfg: "RunConfig") -> "StageResult":
    from .rm import run_rm

    return run_rm(cfg)


def _kto(cfg: "RunConfig") -> "StageResult":
    from .kto import run_kto

    return run_kto(cfg)


def _ppo(cfg: "RunConfig") -> "StageResult":
    from .ppo import run_ppo

    return run_ppo(cfg)


STAGES: dict[str, Callable[["RunConfig"], StageResult]] = {
    "pt": _pt, "sft": _sft, "rm": _rm, "dpo": _dpo, "kto": _kto, "ppo": _ppo,
}


def run_stage(cfg: "RunConfig") -> StageResult:
    """Run the configured stage after seeding everything the run touches."""
    from transformers import set_seed

    stage = cfg.finetuning.stage
    if stage not in STAGES:
        raise LatheError(f"stage `{stage}` is not registered; known: {', '.join(STAGES)}.")
    set_seed(cfg.training.seed)  # before the model loads, so adapter init is reproducible too
    return STAGES[stage](cfg)
