"""Finetuning methods (`finetuning_type`): each decides which parameters train.

A method is one `Method` descriptor (method.py) in its own module, registered by name in
`lathe.registry.METHODS`; importing this package registers the built-in ones. Adding a method
touches one file here plus its import below.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from ...registry import METHODS
from ..precision import after_method, before_method
# Each registers its method; the order here is the order `--help` and the Board list them.
from . import full, freeze, lora, oft  # noqa: F401, I001

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ...config import RunConfig

logger = logging.getLogger(__name__)


def apply_method(model: "PreTrainedModel", cfg: "RunConfig", new_token_rows: bool = False):
    """Apply the configured finetuning method, set the precision of what trains, log the counts."""
    method = METHODS[cfg.finetuning.finetuning_type]
    before_method(model, cfg)
    model = method.apply(model, cfg, new_token_rows)
    from ..multimodal import freeze_parts, is_multimodal

    if is_multimodal(model.config):
        freeze_parts(model, cfg)
    after_method(model, cfg)
    trainable, total = count_parameters(model)
    logger.info(
        "%s: %s trainable of %s parameters (%.4f%%)", method.name, f"{trainable:,}", f"{total:,}",
        100 * trainable / max(total, 1)
    )
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


__all__ = ["apply_method", "count_parameters"]
