"""pissa_convert: the trained PiSSA adapter is saved as plain LoRA that fits the original base."""

from __future__ import annotations

import json

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.adapters.lora import load_adapters
from lathe.model.load import load_model, load_tokenizer
from lathe.train import run_stage


def test_converted_adapter_on_the_original_base_gives_the_trained_outputs(sft_config, tmp_path):
    out = tmp_path / "pissa"
    cfg = load_config(sft_config(pissa_init=True, pissa_iter=-1, pissa_convert=True, lora_rank=4, max_steps=4,
                                 learning_rate=1e-2, output_dir=str(out)))
    result = run_stage(cfg)
    ids = torch.tensor([result.tokenizer("<|im_start|>user\nWho are you?<|im_end|>\n")["input_ids"]])
    with torch.no_grad():
        trained = result.model.eval()(input_ids=ids).logits
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True  # plain LoRA of twice the rank
    assert not (out / "pissa_init").exists()

    plain = load_config(sft_config(do_train=False))  # the original base, untouched by PiSSA
    base = load_model(plain, load_tokenizer(plain.model))
    with torch.no_grad():
        original = base(input_ids=ids).logits
        model = load_adapters(base, [str(out)], trainable_last=False)
        converted = model(input_ids=ids).logits
    assert not torch.allclose(original, trained, atol=1e-3)  # training moved the outputs
    torch.testing.assert_close(converted, trained, atol=1e-4, rtol=1e-4)


def test_pissa_convert_needs_pissa(sft_config):
    with pytest.raises(LatheError, match="pissa_init"):
        load_config(sft_config(pissa_convert=True))
