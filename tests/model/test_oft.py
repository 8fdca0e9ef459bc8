"""OFT (`finetuning_type: oft`): orthogonal rotations through peft, trained, saved, merged on export."""

from __future__ import annotations

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.adapters import apply_method
from lathe.model.load import load_model, load_tokenizer
from lathe.train import run_stage


def test_oft_trainable_counts(sft_config):
    cfg = load_config(sft_config(finetuning_type="oft", oft_block_size=16, oft_target="q_proj,v_proj"))
    tokenizer = load_tokenizer(cfg.model)
    base = load_model(cfg, tokenizer)
    ids = torch.tensor([tokenizer("hello there")["input_ids"]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
    model = apply_method(base, cfg)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".oft_R." in n and ("q_proj" in n or "v_proj" in n) for n in trainable)
    # 2 layers x 2 modules x (64 / 16) blocks x 16*15/2 skew-symmetric entries per block
    assert sum(trainable.values()) == 2 * 2 * 4 * (16 * 15 // 2)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)  # the rotation starts at identity


def test_oft_trains_saves_and_merges_on_export(sft_config, tmp_path):
    from lathe.export.merge import run_export

    out = tmp_path / "oft"
    result = run_stage(load_config(sft_config(finetuning_type="oft", max_steps=4, learning_rate=1e-2, output_dir=str(out))))
    assert result.metrics["train_loss"] > 0
    assert '"peft_type": "OFT"' in (out / "adapter_config.json").read_text()
    ids = torch.tensor([result.tokenizer("who are you")["input_ids"]])
    with torch.no_grad():
        trained = result.model.eval()(input_ids=ids).logits
    cfg = load_config(sft_config(adapter_name_or_path=str(out), export_dir=str(tmp_path / "merged"), do_train=False),
                      purpose="infer")
    run_export(cfg)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, trained, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("extra, needle", [
    ({"oft_block_size": 24}, "does not divide"),
    ({"oft_target": "nope"}, "oft_target"),
])
def test_oft_refusals(sft_config, extra, needle):
    cfg = load_config(sft_config(finetuning_type="oft", **extra))
    with pytest.raises(LatheError, match=needle):
        apply_method(load_model(cfg, load_tokenizer(cfg.model)), cfg)


def test_oft_keys_need_oft(sft_config):
    with pytest.raises(LatheError, match="oft_rank"):
        load_config(sft_config(oft_rank=4))
