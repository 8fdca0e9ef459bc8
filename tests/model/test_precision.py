"""upcast_layernorm / upcast_lmhead_output / pure_bf16: which tensors are fp32 and which bf16."""

from __future__ import annotations

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.adapters import apply_method
from lathe.model.load import load_model, load_tokenizer


def _model(sft_config, **extra):
    cfg = load_config(sft_config(**extra))
    tokenizer = load_tokenizer(cfg.model)
    model = apply_method(load_model(cfg, tokenizer), cfg)
    return model, torch.tensor([tokenizer("hello there")["input_ids"]])


def test_default_half_model_trains_fp32_adapters(sft_config):
    model, _ = _model(sft_config, dtype="bfloat16")
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    assert dtypes == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}


def test_upcast_layernorm_and_lmhead_output(sft_config):
    model, ids = _model(sft_config, dtype="bfloat16", upcast_layernorm=True, upcast_lmhead_output=True)
    norms = {n: p.dtype for n, p in model.named_parameters() if "norm" in n}
    assert norms and set(norms.values()) == {torch.float32}
    assert model.get_output_embeddings().weight.dtype == torch.bfloat16  # only its output is upcast
    with torch.no_grad():
        assert model(input_ids=ids).logits.dtype == torch.float32
    plain, ids = _model(sft_config, dtype="bfloat16")
    with torch.no_grad():
        assert plain(input_ids=ids).logits.dtype == torch.bfloat16


def test_pure_bf16_trains_without_fp32_master_weights(sft_config, monkeypatch):
    from transformers import Trainer

    from lathe.train import run_stage

    seen = {}
    real = Trainer.create_optimizer

    def spy(self, *a, **k):
        seen["opt"] = real(self, *a, **k)
        return seen["opt"]

    monkeypatch.setattr(Trainer, "create_optimizer", spy)
    result = run_stage(load_config(sft_config(finetuning_type="full", pure_bf16=True, max_steps=2,
                                              per_device_train_batch_size=2, cutoff_len=32)))
    assert result.metrics["train_loss"] > 0
    assert {p.dtype for p in result.model.parameters()} == {torch.bfloat16}
    inner = getattr(seen["opt"], "optimizer", seen["opt"])
    states = [t for st in inner.state.values() for t in st.values() if torch.is_tensor(t) and t.ndim > 0]
    assert states and {t.dtype for t in states} == {torch.bfloat16}  # Adam moments in bf16 too


def test_pure_bf16_refusals(sft_config):
    with pytest.raises(LatheError, match="pure_bf16"):
        load_config(sft_config(pure_bf16=True, fp16=True))
