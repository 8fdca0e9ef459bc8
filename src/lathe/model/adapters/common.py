"""Module lookups shared by the methods that pick parts of a model to train."""

from __future__ import annotations

import re

import torch

from ...errors import LatheError


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The repeated block list (e.g. `model.layers`): the longest ModuleList in the model."""
    best: tuple[str, torch.nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None:
        raise LatheError(f"{type(model).__name__} has no list of layers; freeze tuning cannot pick layers from it.")
    return best


def embedding_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of the input embedding and the output head (e.g. embed_tokens, lm_head)."""
    names = []
    lookup = {id(m): n for n, m in model.named_modules()}
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None and id(module) in lookup:
            names.append(lookup[id(module)].split(".")[-1])
    return list(dict.fromkeys(names))


def base_model(model):
    """The transformers model inside a peft wrapper (the model itself when there is none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def split_names(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def layer_index(param_name: str, layers_prefix: str) -> int | None:
    m = re.match(re.escape(layers_prefix) + r"\.(\d+)\.", param_name)
    return int(m.group(1)) if m else None


def resolve_targets(key: str, value: str | None, available: list[str], allow_all: bool = True) -> list[str]:
    """The module names an option picks: a comma list of `available` names, or (`allow_all`) `all` of them.

    A name the model does not have is an error naming the option and the choices, never a silent no-op.
    """
    wanted = split_names(value)
    if allow_all and wanted == ["all"]:
        return list(available)
    missing = [name for name in wanted if name not in available]
    if missing:
        raise LatheError(f"`{key}`: {', '.join(missing)} not found in this model; choose from: "
                         f"{', '.join(available)}" + (" (or `all`)." if allow_all else "."))
    return wanted


def check_no_additional_target(cfg, instead: str | None = None) -> None:
    """`additional_target` is peft's `modules_to_save`, trained in full beside an adapter (lora, oft).

    It is shared by the adapter methods, so it cannot be one method's own option; the methods
    without an adapter refuse it here rather than ignore it (`instead`: their own option for it).
    """
    f = cfg.finetuning
    if f.additional_target:
        raise LatheError(f"{cfg.source}: `additional_target` trains modules beside a LoRA or OFT adapter; "
                         f"`finetuning_type: {f.finetuning_type}` has none. Remove it"
                         + (f", or name the modules in `{instead}`." if instead else "."))
