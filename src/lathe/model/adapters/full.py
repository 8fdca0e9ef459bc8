"""Full finetuning: every parameter trains."""

from __future__ import annotations


def apply_full(model, cfg, new_token_rows: bool = False):
    for p in model.parameters():
        p.requires_grad_(True)
    return model
