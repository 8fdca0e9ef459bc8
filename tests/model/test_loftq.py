"""LoftQ (`loftq_init`): the adapter starts at the quantization error, through peft with a CPU patch."""

from __future__ import annotations

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.adapters import apply_method
from lathe.model.load import load_model, load_tokenizer

pytest.importorskip("bitsandbytes", reason="bitsandbytes is in the dev extras; absent here")


def test_loftq_brings_quantized_outputs_closer_to_the_base(sft_config, tiny_demo_model):
    common = dict(model_name_or_path=str(tiny_demo_model), lora_rank=16)
    full_cfg = load_config(sft_config(**common))
    tokenizer = load_tokenizer(full_cfg.model)
    ids = torch.tensor([tokenizer("<|im_start|>user\nWho are you? Tell me more.<|im_end|>\n")["input_ids"]])
    with torch.no_grad():
        reference = load_model(full_cfg, tokenizer)(input_ids=ids).logits
        cfg = load_config(sft_config(quantization_bit=4, loftq_init=True, **common))
        model = apply_method(load_model(cfg, tokenizer), cfg)
        with_loftq = model(input_ids=ids).logits
        with model.disable_adapter():
            quantized = model(input_ids=ids).logits
    plain_error = (quantized - reference).pow(2).mean()
    loftq_error = (with_loftq - reference).pow(2).mean()
    print(f"logit MSE to the fp32 base: 4-bit {float(plain_error):.3g}, 4-bit + LoftQ {float(loftq_error):.3g}")
    assert loftq_error < 0.7 * plain_error, (float(loftq_error), float(plain_error))
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert b and all(float(p.detach().abs().sum()) > 0 for p in b)  # not the zero start of plain LoRA
    assert all(p.requires_grad for p in b)


@pytest.mark.parametrize("extra, needle", [
    ({"loftq_init": True}, "quantization_bit: 4"),
    ({"loftq_init": True, "quantization_bit": 8}, "quantization_bit: 4"),
    ({"loftq_init": True, "quantization_bit": 4, "use_dora": True}, "use_dora"),
])
def test_loftq_refusals(sft_config, extra, needle):
    with pytest.raises(LatheError, match=needle):
        load_config(sft_config(**extra))


def test_patch_registry_logs_and_keys_by_version(caplog):
    from lathe.model import patches

    with caplog.at_level("INFO", logger="lathe.model.patches"):
        patches._applied.discard("loftq_cpu")
        applied = patches.apply("loftq_cpu")
    import importlib.metadata

    from packaging.specifiers import SpecifierSet

    needed = importlib.metadata.version("peft") in SpecifierSet(patches.PATCHES["loftq_cpu"].versions)
    if torch.cuda.is_available() or not needed:  # peft 0.22 computes LoftQ on the CPU itself
        assert not applied
    else:
        assert applied and "patch loftq_cpu applied to peft" in caplog.text
