"""Freeze tuning on a model whose layers differ (hybrid attention): `all` means every part of the chosen layers."""

from __future__ import annotations

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.adapters.freeze import apply_freeze


class Layer(torch.nn.Module):
    def __init__(self, mixer: str) -> None:
        super().__init__()
        self.mlp = torch.nn.Linear(2, 2)
        setattr(self, mixer, torch.nn.Linear(2, 2))


class Hybrid(torch.nn.Module):
    """Layers alternate softmax and linear attention, as in Qwen3-Next or Jamba."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(Layer(mixer) for mixer in ("self_attn", "linear_attn") * 2)


def trained(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_all_trains_every_part_of_the_chosen_layers(sft_config):
    cfg = load_config(sft_config(finetuning_type="freeze", freeze_trainable_layers=1))
    model = apply_freeze(Hybrid(), cfg)
    assert trained(model) == {"layers.3.mlp.weight", "layers.3.mlp.bias", "layers.3.linear_attn.weight",
                              "layers.3.linear_attn.bias"}


def test_a_module_of_any_layer_can_be_named(sft_config):
    cfg = load_config(sft_config(finetuning_type="freeze", freeze_trainable_layers=2, freeze_trainable_modules="linear_attn"))
    assert trained(apply_freeze(Hybrid(), cfg)) == {"layers.3.linear_attn.weight", "layers.3.linear_attn.bias"}
    cfg = load_config(sft_config(finetuning_type="freeze", freeze_trainable_modules="cross_attn"))
    with pytest.raises(LatheError, match="cross_attn.*linear_attn, mlp, self_attn"):
        apply_freeze(Hybrid(), cfg)
