"""Full finetuning: every parameter trains."""

from __future__ import annotations

from ...registry import METHODS
from .common import check_no_additional_target
from .method import Method


def apply_full(model, cfg, new_token_rows: bool = False):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


FULL = METHODS.register(Method(
    name="full", help="every parameter", apply=apply_full, check=check_no_additional_target,
    planned_trainable=lambda shape, f: shape.total - shape.frozen,
))
