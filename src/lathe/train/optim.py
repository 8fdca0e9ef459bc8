"""Optimizers that need more than a Trainer `optim` string, chosen from the finetuning options.

LoRA+ (Hayou et al. 2024): the B matrices learn `loraplus_lr_ratio` times faster than A, and
LoRA on embeddings gets its own small rate; transformers' optimizer names cannot say that,
so the parameter groups are built here and handed to the Trainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..config import RunConfig


def loraplus_groups(model: torch.nn.Module, lr: float, ratio: float, embedding_lr: float, weight_decay: float):
    groups = {"a": [], "b": [], "b_no_decay": [], "embedding": [], "other": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_embedding" in name:
            groups["embedding"].append(p)
        elif "lora_B" in name:
            groups["b" if p.ndim > 1 else "b_no_decay"].append(p)
        elif "lora_A" in name:
            groups["a"].append(p)
        else:
            groups["other"].append(p)
    return [
        {"params": groups["a"], "lr": lr, "weight_decay": weight_decay},
        {"params": groups["b"], "lr": lr * ratio, "weight_decay": weight_decay},
        {"params": groups["b_no_decay"], "lr": lr * ratio, "weight_decay": 0.0},
        {"params": groups["embedding"], "lr": embedding_lr, "weight_decay": weight_decay},
        {"params": groups["other"], "lr": lr, "weight_decay": weight_decay},
    ]


def custom_optimizer(model: torch.nn.Module, cfg: "RunConfig") -> torch.optim.Optimizer | None:
    """The optimizer for the configured method, or None to let the Trainer build its own."""
    f, t = cfg.finetuning, cfg.training
    if f.finetuning_type == "lora" and f.loraplus_lr_ratio:
        groups = [g for g in loraplus_groups(model, t.learning_rate, f.loraplus_lr_ratio, f.loraplus_lr_embedding,
                                             t.weight_decay) if g["params"]]
        return torch.optim.AdamW(groups, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon)
    return None
