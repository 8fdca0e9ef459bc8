"""`moe_aux_loss_coef`: the router's load-balancing loss joins the training loss of MoE models."""

from __future__ import annotations

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.load import load_model, load_tokenizer
from lathe.testing.tiny import build_tiny_model
from lathe.train import run_stage


@pytest.fixture(scope="module")
def moe_models(demo_tokenizer_dir):
    return {arch: build_tiny_model(arch, demo_tokenizer_dir) for arch in ("mixtral", "qwen2_moe", "qwen3_moe")}


def _loss(cfg, batch):
    model = load_model(cfg, load_tokenizer(cfg.model))
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
    return model, out


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_loss_gains_coef_times_aux_loss(sft_config, moe_models, arch):
    path = str(moe_models[arch])
    batch = {"input_ids": torch.tensor([[5, 17, 33, 42, 8, 91, 12, 60]]), "attention_mask": torch.ones(1, 8, dtype=torch.long)}
    plain_model, plain = _loss(load_config(sft_config(model_name_or_path=path)), batch)
    assert not plain_model.config.output_router_logits and plain.aux_loss is None
    model, with_aux = _loss(load_config(sft_config(model_name_or_path=path, moe_aux_loss_coef=0.5)), batch)
    assert model.config.output_router_logits and model.config.router_aux_loss_coef == 0.5
    assert with_aux.aux_loss > 0
    torch.testing.assert_close(with_aux.loss, plain.loss + 0.5 * with_aux.aux_loss)


def test_trains_with_router_loss(sft_config, moe_models):
    cfg = load_config(sft_config(model_name_or_path=str(moe_models["qwen3_moe"]), moe_aux_loss_coef=0.01,
                                 max_steps=2, lora_target="q_proj,v_proj"))
    result = run_stage(cfg)
    assert result.model.config.output_router_logits and result.metrics["train_loss"] > 0


def test_refused_without_router_or_model_loss(sft_config, tiny_llama, moe_models):
    cfg = load_config(sft_config(moe_aux_loss_coef=0.01))  # llama: no experts
    with pytest.raises(LatheError, match="not a MoE model"):
        load_model(cfg, load_tokenizer(cfg.model))
    with pytest.raises(LatheError, match="stage: dpo"):  # refused when the config loads
        load_config(sft_config(model_name_or_path=str(moe_models["mixtral"]), moe_aux_loss_coef=0.01, stage="dpo",
                               dataset="lathe_pairs"))
    with pytest.raises(LatheError, match="use_dft_loss"):  # DFT computes its loss from the logits: no router loss
        load_config(sft_config(model_name_or_path=str(moe_models["mixtral"]), moe_aux_loss_coef=0.01, use_dft_loss=True))
