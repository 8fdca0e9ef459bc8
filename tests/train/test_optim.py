"""train/optim.py: LoRA+ groups, and the optimizers that replace AdamW (GaLore, APOLLO, BAdam, Adam-mini, Muon)."""

from __future__ import annotations

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.load import load_tokenizer
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


def test_loraplus_param_groups(sft_config, monkeypatch):
    from lathe.train import optim

    cfg = load_config(sft_config(loraplus_lr_ratio=16.0, learning_rate=1e-3, max_steps=2))
    captured = {}
    real = optim.optimizer_setup

    def spy(model, cfg, args):
        captured["opt"], args = real(model, cfg, args)
        return captured["opt"], args

    monkeypatch.setattr(optim, "optimizer_setup", spy)
    run_stage(cfg)
    lrs = sorted({g["initial_lr"] if "initial_lr" in g else g["lr"] for g in captured["opt"].param_groups})
    assert lrs == [pytest.approx(1e-3), pytest.approx(16e-3)]
    b_group = [g for g in captured["opt"].param_groups if g.get("initial_lr", g["lr"]) == pytest.approx(16e-3)][0]
    assert b_group["params"] and all(p.shape[1] == 8 for p in b_group["params"])  # lora_B: [out, rank]


@pytest.mark.parametrize("extra, kind", [
    ({"use_galore": True, "galore_rank": 4, "galore_update_interval": 2}, "galore_torch"),
    ({"use_apollo": True, "apollo_rank": 4, "apollo_update_interval": 2}, "apollo_torch"),
    ({"use_badam": True, "badam_switch_interval": 2}, "badam"),
])
def test_memory_efficient_full_optimizers(sft_config, extra, kind, monkeypatch):
    pytest.importorskip(kind)
    cfg = load_config(sft_config(finetuning_type="full", max_steps=4, learning_rate=1e-3, **extra))
    result = run_stage(cfg)
    assert result.metrics["train_loss"] > 0
    from transformers import Trainer

    seen = {}
    real = Trainer.create_optimizer

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        inner = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps it
        seen["kind"] = type(inner).__module__
        return out

    monkeypatch.setattr(Trainer, "create_optimizer", spy)
    run_stage(load_config(sft_config(finetuning_type="full", max_steps=1, **extra)))
    assert seen["kind"].startswith(kind)


@pytest.mark.parametrize("extra, needle", [
    ({"use_galore": True, "use_apollo": True, "finetuning_type": "full"}, "use one"),
    ({"use_galore": True}, "lora"),
    ({"use_badam": True, "finetuning_type": "full", "badam_mode": "ratio", "badam_update_ratio": 0, "max_grad_norm": 0}, "badam_update_ratio"),
    ({"use_muon": True, "use_adam_mini": True, "finetuning_type": "full"}, "use one"),
    ({"use_muon": True}, "lora"),
    ({"use_badam": True, "finetuning_type": "full", "badam_mode": "ratio"}, "max_grad_norm"),
    ({"use_badam": True, "finetuning_type": "full", "badam_mode": "ratio", "max_grad_norm": 0,
      "badam_switch_mode": "descending"}, "badam_switch_mode"),
    ({"use_galore": True, "galore_layerwise": True, "finetuning_type": "full", "gradient_accumulation_steps": 2}, "gradient_accumulation_steps"),
])
def test_optimizer_refusals(sft_config, extra, needle):
    with pytest.raises(LatheError, match=needle):
        load_config(sft_config(**extra))


@pytest.mark.parametrize("extra, kind", [
    ({"use_galore": True, "galore_rank": 4}, "galore_torch"),
    ({"use_galore": True, "galore_rank": 4, "galore_layerwise": True}, "galore_torch"),
    ({"use_apollo": True, "apollo_rank": 4}, "apollo_torch"),
])
def test_low_rank_optimizers_get_adam_settings_and_weight_decay(sft_config, extra, kind):
    """transformers builds GaLore's optimizer with the learning rate alone; lathe adds what the config says."""
    pytest.importorskip(kind)
    from lathe.config.training import editable_copy
    from lathe.model.load import load_model
    from lathe.train.optim import optimizer_setup

    cfg = load_config(sft_config(finetuning_type="full", adam_beta2=0.95, adam_epsilon=1e-7, weight_decay=0.1, **extra))
    model = load_model(cfg, load_tokenizer(cfg.model))
    optimizer, args = optimizer_setup(model, cfg, editable_copy(cfg.training))
    assert args.optim.value.startswith(kind.split("_")[0])  # the Trainer's settings are returned, the config untouched
    assert cfg.training.optim != args.optim
    inner = getattr(optimizer, "optimizer_dict", None)
    groups = [g for o in inner.values() for g in o.param_groups] if inner else optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(g["betas"] == (0.9, 0.95) and g["eps"] == 1e-7 for g in groups)
    decay = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert decay["model.layers.0.self_attn.q_proj.weight"] == 0.1 and decay["model.norm.weight"] == 0.0
    assert any("rank" in g for g in groups)  # the projected matrices keep the method's own arguments


@pytest.mark.parametrize("layerwise", [False, True])
def test_apollo_scale_front_reaches_the_optimizer(sft_config, layerwise):
    """transformers never passes `scale_front` to APOLLOAdamW; lathe sets it on every optimizer it builds."""
    pytest.importorskip("apollo_torch")
    from lathe.config.training import editable_copy
    from lathe.model.load import load_model
    from lathe.train.optim import optimizer_setup

    for front in (False, True):
        cfg = load_config(sft_config(finetuning_type="full", use_apollo=True, apollo_rank=4, apollo_scale_front=front,
                                     apollo_layerwise=layerwise))
        model = load_model(cfg, load_tokenizer(cfg.model))
        optimizer, _ = optimizer_setup(model, cfg, editable_copy(cfg.training))
        inner = list(optimizer.optimizer_dict.values()) if layerwise else [optimizer]
        assert {o.scale_front for o in inner} == {front}


@pytest.mark.parametrize("mode", ["ascending", None])
def test_badam_switch_mode_null_is_badams_default(sft_config, monkeypatch, mode):
    """`badam_switch_mode: null` (LLaMA-Factory's Board writes it) leaves the order to BAdam: descending."""
    pytest.importorskip("badam")
    _, opt = _optimizer_of_run(sft_config, monkeypatch, use_badam=True, badam_switch_mode=mode)
    assert opt.switch_mode == ("ascending" if mode else "descending")
