"""Efficient-method options: each trains on a tiny model and does what it is for."""

from __future__ import annotations

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.adapters import apply_method
from lathe.model.load import load_model, load_tokenizer
from lathe.train import run_stage


def prompt_ids(tokenizer):
    return torch.tensor([tokenizer("<|im_start|>user\nWho are you?<|im_end|>\n")["input_ids"]])


def test_loraplus_param_groups(sft_config, monkeypatch):
    from lathe.train import optim

    cfg = load_config(sft_config(loraplus_lr_ratio=16.0, learning_rate=1e-3, max_steps=2))
    captured = {}
    real = optim.custom_optimizer

    def spy(model, cfg):
        captured["opt"] = real(model, cfg)
        return captured["opt"]

    monkeypatch.setattr(optim, "custom_optimizer", spy)
    run_stage(cfg)
    lrs = sorted({g["initial_lr"] if "initial_lr" in g else g["lr"] for g in captured["opt"].param_groups})
    assert lrs == [pytest.approx(1e-3), pytest.approx(16e-3)]
    b_group = [g for g in captured["opt"].param_groups if g.get("initial_lr", g["lr"]) == pytest.approx(16e-3)][0]
    assert b_group["params"] and all(p.shape[1] == 8 for p in b_group["params"])  # lora_B: [out, rank]


def test_pissa_starts_at_the_base_outputs(sft_config):
    cfg = load_config(sft_config(pissa_init=True, pissa_iter=-1, lora_rank=4))
    tokenizer = load_tokenizer(cfg.model)
    base = load_model(cfg, tokenizer)
    ids = prompt_ids(tokenizer)
    with torch.no_grad():
        before = base(input_ids=ids).logits
    model = apply_method(base, cfg)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    assert "pissa" in str(model.peft_config["default"].init_lora_weights)


def test_dora_trains_a_magnitude_vector(sft_config):
    cfg = load_config(sft_config(use_dora=True))
    tokenizer = load_tokenizer(cfg.model)
    model = apply_method(load_model(cfg, tokenizer), cfg)
    assert any("lora_magnitude_vector" in n and p.requires_grad for n, p in model.named_parameters())


def test_create_new_adapter_merges_then_starts_fresh(sft_config, tmp_path):
    first = load_config(sft_config(max_steps=2, output_dir=str(tmp_path / "a"), learning_rate=1e-2))
    run_stage(first)
    cfg = load_config(sft_config(adapter_name_or_path=str(tmp_path / "a"), create_new_adapter=True,
                                 output_dir=str(tmp_path / "b")))
    tokenizer = load_tokenizer(cfg.model)
    model = apply_method(load_model(cfg, tokenizer), cfg)
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert b and all(float(p.abs().sum()) == 0 for p in b)  # a fresh adapter starts at zero
    resumed = load_config(sft_config(adapter_name_or_path=str(tmp_path / "a"), output_dir=str(tmp_path / "c")))
    model = apply_method(load_model(resumed, load_tokenizer(resumed.model)), resumed)
    assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)  # continued


def test_rope_scaling_factor_from_cutoff(sft_config):
    cfg = load_config(sft_config(rope_scaling="linear", cutoff_len=5000))
    model = load_model(cfg, load_tokenizer(cfg.model))
    assert model.config.rope_parameters["rope_type"] == "linear"
    assert model.config.rope_parameters["factor"] == 3.0  # ceil(5000 / 2048)
    assert model.config.max_position_embeddings == 3 * 2048


def test_train_from_scratch_ignores_the_weights(sft_config):
    cfg = load_config(sft_config(train_from_scratch=True, finetuning_type="full", seed=7))
    tokenizer = load_tokenizer(cfg.model)
    scratch = load_model(cfg, tokenizer)
    pretrained = load_model(load_config(sft_config(finetuning_type="full")), tokenizer)
    assert not torch.equal(scratch.lm_head.weight, pretrained.lm_head.weight)


def test_neftune_noise_only_while_training(sft_config):
    result = run_stage(load_config(sft_config(neftune_noise_alpha=5.0, max_steps=2)))
    model = result.model.eval()
    ids = prompt_ids(result.tokenizer)
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
    torch.testing.assert_close(a, b)  # no noise at inference


@pytest.mark.parametrize("extra, needle", [
    ({"use_dora": True, "pissa_init": True}, "pick one"),
    ({"finetuning_type": "full", "loraplus_lr_ratio": 4.0}, "loraplus_lr_ratio"),
    ({"create_new_adapter": True}, "adapter_name_or_path"),
    ({"enable_liger_kernel": True}, "liger"),
    ({"rope_scaling": "cubic"}, "rope_scaling"),
])
def test_invalid_method_combinations(sft_config, extra, needle):
    if "enable_liger_kernel" in extra and torch.cuda.is_available():
        pytest.skip("a GPU is present: liger may be usable")
    with pytest.raises(LatheError, match=needle):
        load_config(sft_config(**extra))


@pytest.mark.parametrize("bits, layer", [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_qlora_trains_on_quantized_weights(sft_config, bits, layer):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is in the dev extras; absent here")
    cfg = load_config(sft_config(quantization_bit=bits, max_steps=3, learning_rate=5e-3))
    result = run_stage(cfg)
    kinds = {type(m).__name__ for m in result.model.modules()}
    assert layer in kinds
    assert result.metrics["train_loss"] > 0
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_quantization_refusals(sft_config):
    with pytest.raises(LatheError, match="finetuning_type: lora"):
        load_config(sft_config(quantization_bit=4, finetuning_type="full"))
    with pytest.raises(LatheError, match="4 or 8"):
        load_config(sft_config(quantization_bit=5))
    cfg = load_config(sft_config(quantization_bit=4, quantization_method="awq"))
    with pytest.raises(LatheError, match="on the fly"):
        load_model(cfg, load_tokenizer(cfg.model))


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
    ({"use_galore": True, "galore_layerwise": True, "finetuning_type": "full", "gradient_accumulation_steps": 2}, "gradient_accumulation_steps"),
])
def test_optimizer_refusals(sft_config, extra, needle):
    with pytest.raises(LatheError, match=needle):
        load_config(sft_config(**extra))


def test_llama_pro_expansion_keeps_outputs_and_trains_only_new_blocks(sft_config, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lathe.cli import main

    out = tmp_path / "pro"
    assert main(["expand", "--model", str(tiny_llama), "--num-expand", "2", "--out", str(out)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = prompt_ids(tokenizer)
    with torch.no_grad():
        before = AutoModelForCausalLM.from_pretrained(tiny_llama)(input_ids=ids).logits
        expanded = AutoModelForCausalLM.from_pretrained(out)
        after = expanded(input_ids=ids).logits
    assert expanded.config.num_hidden_layers == 4
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)

    cfg = load_config(sft_config(model_name_or_path=str(out), finetuning_type="freeze", use_llama_pro=True,
                                 freeze_trainable_layers=2, max_steps=2))
    result = run_stage(cfg)
    trainable = {n.split(".layers.")[1].split(".")[0] for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable == {"1", "3"}  # the two inserted blocks, one after each original pair


def test_llama_pro_refusals(sft_config, tiny_llama, tmp_path):
    from lathe.model.expand import expand_model

    with pytest.raises(LatheError, match="divide"):
        expand_model(str(tiny_llama), 3, str(tmp_path / "x"))
    with pytest.raises(LatheError, match="freeze"):
        load_config(sft_config(use_llama_pro=True))  # lora run


@pytest.mark.parametrize("extra, kind", [
    ({"use_galore": True, "galore_rank": 4}, "galore_torch"),
    ({"use_galore": True, "galore_rank": 4, "galore_layerwise": True}, "galore_torch"),
    ({"use_apollo": True, "apollo_rank": 4}, "apollo_torch"),
])
def test_low_rank_optimizers_get_adam_settings_and_weight_decay(sft_config, extra, kind):
    """transformers builds GaLore's optimizer with the learning rate alone; lathe adds what the config says."""
    pytest.importorskip(kind)
    from lathe.model.load import load_model
    from lathe.train.optim import custom_optimizer

    cfg = load_config(sft_config(finetuning_type="full", adam_beta2=0.95, adam_epsilon=1e-7, weight_decay=0.1, **extra))
    model = load_model(cfg, load_tokenizer(cfg.model))
    optimizer = custom_optimizer(model, cfg)
    inner = getattr(optimizer, "optimizer_dict", None)
    groups = [g for o in inner.values() for g in o.param_groups] if inner else optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(g["betas"] == (0.9, 0.95) and g["eps"] == 1e-7 for g in groups)
    decay = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert decay["model.layers.0.self_attn.q_proj.weight"] == 0.1 and decay["model.norm.weight"] == 0.0
    assert any("rank" in g for g in groups)  # the projected matrices keep the method's own arguments
