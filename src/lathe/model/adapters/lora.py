"""LoRA through peft: low-rank updates on the chosen linear layers, the base frozen."""

from __future__ import annotations

import torch

from ...errors import LatheError
from .common import embedding_module_names, split_names


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of every linear layer except the output head: what `lora_target: all` means."""
    skip = set(embedding_module_names(model))
    names = {name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return sorted(names - skip)


def apply_lora(model, cfg, new_token_rows: bool = False):
    from peft import LoraConfig, TaskType, get_peft_model

    f = cfg.finetuning
    available = linear_module_names(model)
    targets = split_names(f.lora_target)
    if targets == ["all"]:
        targets = available
    else:
        missing = [t for t in targets if t not in available]
        if missing:
            raise LatheError(
                f"`lora_target`: {', '.join(missing)} is not a linear layer of this model; "
                f"choose from: {', '.join(available)} (or `all`)."
            )
    to_save = split_names(f.additional_target)
    if new_token_rows:
        to_save += [e for e in embedding_module_names(model) if e not in to_save]
    all_modules = {name.split(".")[-1] for name, _ in model.named_modules()}
    missing = [m for m in to_save if m not in all_modules]
    if missing:
        raise LatheError(f"`additional_target`: no module named {', '.join(missing)} in the model.")

    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=f.lora_rank,
        lora_alpha=f.lora_alpha or 2 * f.lora_rank,
        lora_dropout=f.lora_dropout,
        target_modules=targets,
        modules_to_save=to_save or None,
        use_rslora=f.use_rslora,
        use_dora=f.use_dora,
    )
    return get_peft_model(model, config)
