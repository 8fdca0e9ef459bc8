"""BAdam ratio mode, Adam-mini and Muon: full-parameter optimizers that replace AdamW."""

from __future__ import annotations

import pytest
import torch

from lathe.config import load_config
from lathe.train import run_stage


def _optimizer_of_run(sft_config, monkeypatch, **extra):
    from transformers import Trainer

    seen = {}
    real = Trainer.create_optimizer

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        seen["opt"] = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps it
        return out

    monkeypatch.setattr(Trainer, "create_optimizer", spy)
    result = run_stage(load_config(sft_config(finetuning_type="full", max_steps=3, learning_rate=1e-3, **extra)))
    return result, seen["opt"]


def test_badam_ratio_mode_updates_a_share_of_each_matrix(sft_config, tiny_llama, monkeypatch):
    pytest.importorskip("badam")
    from transformers import AutoModelForCausalLM

    result, opt = _optimizer_of_run(sft_config, monkeypatch, use_badam=True, badam_mode="ratio",
                                    badam_update_ratio=0.1, badam_mask_mode="adjacent", max_grad_norm=0)
    assert type(opt).__name__ == "BlockOptimizerRatio"
    before = dict(AutoModelForCausalLM.from_pretrained(tiny_llama).named_parameters())
    w = "model.layers.0.mlp.down_proj.weight"
    changed = (dict(result.model.named_parameters())[w].detach() != before[w]).float().mean().item()
    assert 0 < changed <= 0.35  # a few steps of 10% shares: most entries untouched


def test_adam_mini_trains(sft_config, monkeypatch):
    pytest.importorskip("adam_mini")
    result, opt = _optimizer_of_run(sft_config, monkeypatch, use_adam_mini=True)
    assert type(opt).__name__ == "Adam_mini"
    assert result.metrics["train_loss"] > 0


def test_muon_for_matrices_adamw_for_the_rest(sft_config, monkeypatch):
    result, opt = _optimizer_of_run(sft_config, monkeypatch, use_muon=True)
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    head = result.model.get_output_embeddings().weight
    assert any(p is head for g in adamw.param_groups for p in g["params"])
    assert result.metrics["train_loss"] > 0 and len(muon.state) > 0  # Muon stepped its matrices
