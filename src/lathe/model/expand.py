"""LLaMA Pro block expansion (`lathe expand`): add identity-initialised decoder blocks.

After every `layers / num_expand` original blocks a copy of the previous block is inserted
with its output projections (attention `o_proj`, MLP `down_proj`) zeroed: the residual
stream passes it unchanged, so the expanded model computes exactly what the original did,
and `use_llama_pro` then trains only the new blocks (new knowledge, old skills kept).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from ..errors import LatheError
from .adapters.common import decoder_layers

logger = logging.getLogger(__name__)

ZEROED = ("o_proj", "down_proj", "out_proj", "dense_4h_to_h", "c_proj", "fc2", "w2")


def expanded_indices(num_layers: int, num_expand: int) -> list[int]:
    """Positions of the new blocks in the expanded stack (what `use_llama_pro` trains)."""
    stride = (num_layers + num_expand) // num_expand
    return [stride * (k + 1) - 1 for k in range(num_expand)]


def zero_outputs(block: torch.nn.Module) -> int:
    zeroed = 0
    for name, module in block.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in ZEROED:
            torch.nn.init.zeros_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
            zeroed += 1
    if zeroed == 0:
        raise LatheError("LLaMA Pro: no output projection (o_proj / down_proj) found in a decoder block of this model.")
    return zeroed


def expand_model(model_path: str, num_expand: int, out: str) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(model_path).is_dir():
        raise LatheError(f"Model folder not found: {model_path}.")
    if Path(out).exists() and any(Path(out).iterdir()):
        raise LatheError(f"{out} is not empty; choose a new folder.")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto")
    prefix, layers = decoder_layers(model)
    n = len(layers)
    if num_expand <= 0 or n % num_expand:
        raise LatheError(f"--num-expand must divide the {n} layers evenly (got {num_expand}).")
    group = n // num_expand
    new_layers = torch.nn.ModuleList()
    for i, layer in enumerate(layers):
        new_layers.append(layer)
        if (i + 1) % group == 0:
            block = copy.deepcopy(layer)
            zero_outputs(block)
            new_layers.append(block)
    for index, layer in enumerate(new_layers):  # attention modules know their position (KV cache)
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    parent = model.get_submodule(prefix.rsplit(".", 1)[0]) if "." in prefix else model
    setattr(parent, prefix.rsplit(".", 1)[-1], new_layers)
    model.config.num_hidden_layers = len(new_layers)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[0]] * len(new_layers)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_path).save_pretrained(out)
    logger.info("LLaMA Pro: %d -> %d layers; new blocks at %s", n, len(new_layers), expanded_indices(n, num_expand))
    return Path(out)
