"""Freeze tuning: train only some decoder layers (and optionally some extra modules).

`freeze_trainable_layers: N` trains the last N layers, `-N` the first N;
`freeze_trainable_modules` narrows that to named sub-modules of those layers
(e.g. `mlp,self_attn`); `freeze_extra_modules` adds modules outside the layers
(e.g. `embed_tokens,norm`). Names that match nothing are an error, not a silent no-op.
"""

from __future__ import annotations

from ...errors import LatheError
from ...registry import METHODS
from .common import (check_no_additional_target, decoder_layers, embedding_module_names, layer_index, resolve_targets,
                     split_names)
from .method import Method


def apply_freeze(model, cfg, new_token_rows: bool = False):
    f = cfg.finetuning
    prefix, layers = decoder_layers(model)
    n = len(layers)
    k = f.freeze_trainable_layers
    if abs(k) > n:
        raise LatheError(f"`freeze_trainable_layers: {k}` but the model has only {n} layers.")
    if f.use_llama_pro:  # the blocks `lathe expand` inserted: one after every group of originals
        if n % k:
            raise LatheError(f"`use_llama_pro`: {n} layers cannot hold {k} evenly expanded blocks; is this the expanded model?")
        from ..expand import expanded_indices

        chosen = set(expanded_indices(n - k, k))
    else:
        chosen = set(range(n - k, n)) if k > 0 else set(range(-k))

    # the layers' sub-modules (hybrid models differ from layer to layer) and the parameters they hold directly
    layer_modules = sorted({name.split(".")[0] for layer in layers for name, _ in layer.named_children()}
                           | {name for layer in layers for name, _ in layer.named_parameters(recurse=False)})
    modules = set(resolve_targets("freeze_trainable_modules", f.freeze_trainable_modules, layer_modules))
    extra = split_names(f.freeze_extra_modules)
    if new_token_rows:
        extra += [e for e in embedding_module_names(model) if e not in extra]
    top_level = sorted({name.split(".")[-1] for name, _ in model.named_modules()} - {""})
    extra = resolve_targets("freeze_extra_modules", ",".join(extra), top_level, allow_all=False)

    for name, p in model.named_parameters():
        idx = layer_index(name, prefix)
        if idx is not None:
            rest = name[len(prefix) + len(str(idx)) + 2 :]
            train = idx in chosen and rest.split(".")[0] in modules
        else:
            train = any(f".{e}." in f".{name}" for e in extra)
        p.requires_grad_(train)
    return model


def _check(cfg) -> None:
    f = cfg.finetuning
    check_no_additional_target(cfg, instead="freeze_extra_modules")
    if f.use_llama_pro and f.freeze_trainable_layers <= 0:
        raise LatheError(f"{cfg.source}: `use_llama_pro` needs `freeze_trainable_layers` = the number of blocks added (> 0).")


FREEZE = METHODS.register(Method(
    name="freeze", help="some layers", apply=apply_freeze, check=_check,
    planned_trainable=lambda shape, f: sum(shape.layer_params[-abs(f.freeze_trainable_layers):]),
    # the last k layers train (k > 0): the backward pass stops below them; the first k (k < 0): it goes through all
    planned_backward_layers=lambda shape, f: min(shape.layers, f.freeze_trainable_layers) if f.freeze_trainable_layers > 0
    else shape.layers,
    options=("freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules", "use_llama_pro"),
))
