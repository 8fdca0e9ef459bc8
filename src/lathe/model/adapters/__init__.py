"""Finetuning methods: each decides which parameters train, registered by its config name.

A method is `apply(model, cfg, new_token_rows) -> model`; `new_token_rows` says the
tokenizer grew, so the embedding and output rows must train too. Adding a method touches one
file here and this registry.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import torch

from ...errors import LatheError
from ..precision import after_method, before_method
from .freeze import apply_freeze
from .full import apply_full
from .lora import apply_lora
from .oft import apply_oft

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ...config import RunConfig

logger = logging.getLogger(__name__)

ADAPTERS: dict[str, Callable[..., "PreTrainedModel"]] = {
    "full": apply_full,
    "freeze": apply_freeze,
    "lora": apply_lora,
    "oft": apply_oft,
}


def apply_method(model: "PreTrainedModel", cfg: "RunConfig", new_token_rows: bool = False):
    """Apply the configured finetuning method, set the precision of what trains, log the counts."""
    name = cfg.finetuning.finetuning_type
    if name not in ADAPTERS:
        raise LatheError(f"finetuning_type `{name}` is not registered; known: {', '.join(ADAPTERS)}.")
    before_method(model, cfg)
    model = ADAPTERS[name](model, cfg, new_token_rows)
    after_method(model, cfg)
    trainable, total = count_parameters(model)
    logger.info(
        "%s: %s trainable of %s parameters (%.4f%%)", name, f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1)
    )
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


__all__ = ["ADAPTERS", "apply_method", "count_parameters"]
