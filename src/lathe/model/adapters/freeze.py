"""Freeze tuning: train only some decoder layers (and optionally some extra modules).

`freeze_trainable_layers: N` trains the last N layers, `-N` the first N;
`freeze_trainable_modules` narrows that to named sub-modules of those layers
(e.g. `mlp,self_attn`); `freeze_extra_modules` adds modules outside the layers
(e.g. `embed_tokens,norm`). Names that match nothing are an error, not a silent no-op.
"""

from __future__ import annotations

from ...errors import LatheError
from .common import decoder_layers, embedding_module_names, layer_index, split_names


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

    layer_modules = {name.split(".")[0] for name, _ in layers[0].named_children()}
    modules = split_names(f.freeze_trainable_modules)
    if modules != ["all"]:
        missing = [m for m in modules if m not in layer_modules]
        if missing:
            raise LatheError(
                f"`freeze_trainable_modules`: {', '.join(missing)} not found in a layer; "
                f"its modules are: {', '.join(sorted(layer_modules))}."
            )
    extra = split_names(f.freeze_extra_modules)
    if new_token_rows:
        extra += [e for e in embedding_module_names(model) if e not in extra]
    top_level = {name.split(".")[-1] for name, _ in model.named_modules()}
    missing = [e for e in extra if e not in top_level]
    if missing:
        raise LatheError(f"`freeze_extra_modules`: no module named {', '.join(missing)} in the model.")

    for name, p in model.named_parameters():
        idx = layer_index(name, prefix)
        if idx is not None:
            rest = name[len(prefix) + len(str(idx)) + 2 :]
            train = idx in chosen and (modules == ["all"] or rest.split(".")[0] in modules)
        else:
            train = any(f".{e}." in f".{name}" for e in extra)
        p.requires_grad_(train)
    return model
