"""OFT through peft: each chosen linear layer's weight is turned by a learned orthogonal matrix.

Orthogonal finetuning (Qiu et al. 2023) keeps the angles between a layer's neurons, which is
said to preserve pretrained knowledge better than an additive update. The rotation is block
diagonal: `oft_block_size` rows per block (or `oft_rank` blocks; peft takes one of the two).
Continuing (`adapter_name_or_path`) and merging work as for LoRA: peft reads the adapter kind
from adapter_config.json.
"""

from __future__ import annotations

from ...errors import LatheError
from ...registry import METHODS
from .common import resolve_targets, split_names
from .lora import adapter_location, linear_module_names, load_adapters, modules_to_save
from .method import Method


def apply_oft(model, cfg, new_token_rows: bool = False):
    from peft import OFTConfig, get_peft_model

    f = cfg.finetuning
    adapters = split_names(cfg.model.adapter_name_or_path)
    if adapters and not f.create_new_adapter:
        return with_module_dropout(load_adapters(model, adapters, trainable_last=True, **adapter_location(cfg.model)))
    if adapters:
        model = load_adapters(model, adapters, trainable_last=False, **adapter_location(cfg.model))
    targets = resolve_targets("oft_target", f.oft_target, linear_module_names(model))
    to_save = modules_to_save(model, f.additional_target, new_token_rows)
    block = 0 if f.oft_rank else f.oft_block_size  # peft takes the number of blocks or their size, not both
    for name, module in model.named_modules():
        short = name.split(".")[-1]
        if short in targets and block and module.in_features % block:
            raise LatheError(f"`oft_block_size: {block}` does not divide the {module.in_features} inputs of `{short}`; "
                             f"choose a divisor, or set `oft_rank` (the number of blocks) instead.")
    config = OFTConfig(
        task_type="CAUSAL_LM", r=f.oft_rank, oft_block_size=block, target_modules=targets,
        module_dropout=f.module_dropout, modules_to_save=to_save or None,
    )
    return with_module_dropout(get_peft_model(model, config))


def with_module_dropout(model):
    """The model with its OFT layers' `module_dropout` in force: peft builds that dropout and never applies it."""
    from peft.tuners.oft.layer import MultiplicativeDropoutLayer

    from ..patches import apply
    from ..patches.oft_module_dropout import link

    if any(isinstance(m, MultiplicativeDropoutLayer) for m in model.modules()) and apply("oft_module_dropout"):
        link(model)
    return model


def _check(cfg) -> None:
    f = cfg.finetuning
    if not f.oft_rank and not f.oft_block_size:
        raise LatheError(f"{cfg.source}: OFT needs `oft_rank` (blocks) or `oft_block_size` (rows per block) above 0.")


OFT = METHODS.register(Method(
    name="oft", help="orthogonal rotations", apply=apply_oft, check=_check, adapter=True, quantized_base=True,
    options=("oft_rank", "oft_block_size", "oft_target", "module_dropout"),
))
