"""Quantization backends beyond bnb (hqq, torchao, eetq) and checkpoints saved already quantized."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.load import load_model, load_tokenizer
from lathe.train import run_stage


def _lora_only(model):
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    return trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("method, bits, layer", [
    ("hqq", 4, "HqqLoraLinear"),
    ("hqq", 2, "HqqLoraLinear"),
    ("torchao", 8, "TorchaoLoraLinear"),
])
def test_backend_trains_lora_on_quantized_weights(sft_config, method, bits, layer):
    pytest.importorskip(method)
    cfg = load_config(sft_config(quantization_bit=bits, quantization_method=method, max_steps=2, lora_target="q_proj,v_proj"))
    result = run_stage(cfg)
    assert layer in {type(m).__name__ for m in result.model.modules()}
    assert result.metrics["train_loss"] > 0 and _lora_only(result.model)


def test_backend_refusals(sft_config):
    with pytest.raises(LatheError, match="hqq"):
        load_config(sft_config(quantization_bit=3))  # 3 bits: hqq only
    cfg = load_config(sft_config(quantization_bit=4, quantization_method="eetq"))
    with pytest.raises(LatheError, match="8 bits"):
        load_model(cfg, load_tokenizer(cfg.model))
    if not torch.cuda.is_available():
        cfg = load_config(sft_config(quantization_bit=8, quantization_method="eetq"))
        with pytest.raises(LatheError, match="CUDA"):
            load_model(cfg, load_tokenizer(cfg.model))
    cfg = load_config(sft_config(quantization_bit=4, quantization_method="gptq"))
    with pytest.raises(LatheError, match="on the fly"):
        load_model(cfg, load_tokenizer(cfg.model))


def _fake_quantized(tiny_llama, tmp_path):
    folder = tmp_path / "gptq_model"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("extra, needle", [
    ({"quantization_bit": 4}, "already quantized"),
    ({"finetuning_type": "full"}, "cannot be trained directly"),
    ({"finetuning_type": "freeze"}, "cannot be trained directly"),
])
def test_prequantized_checkpoint_refusals(sft_config, tiny_llama, tmp_path, extra, needle):
    cfg = load_config(sft_config(model_name_or_path=str(_fake_quantized(tiny_llama, tmp_path)), **extra))
    with pytest.raises(LatheError, match=needle):
        load_model(cfg, load_tokenizer(cfg.model))


def test_bnb_prequantized_checkpoint_trains_lora(sft_config, tiny_llama, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    saved = tmp_path / "nf4"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    model.save_pretrained(saved)
    load_tokenizer(load_config(sft_config()).model).save_pretrained(saved)
    assert json.loads((saved / "config.json").read_text())["quantization_config"]["quant_method"] == "bitsandbytes"

    result = run_stage(load_config(sft_config(model_name_or_path=str(saved), max_steps=3)))  # no quantization_bit
    assert "Linear4bit" in {type(m).__name__ for m in result.model.modules()}
    assert result.metrics["train_loss"] > 0 and _lora_only(result.model)
