"""Efficient-method options: each trains on a tiny model and does what it is for."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.adapters import apply_method
from lathe.model.load import load_model, load_tokenizer
from lathe.train import run_stage


def prompt_ids(tokenizer):
    return torch.tensor([tokenizer("<|im_start|>user\nWho are you?<|im_end|>\n")["input_ids"]])


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


def test_neftune_noise_only_while_training(sft_config, tmp_path):
    def first_loss(output_dir: str) -> float:
        return json.loads(Path(output_dir, "trainer_log.jsonl").read_text().splitlines()[0])["loss"]

    plain = load_config(sft_config(max_steps=2, output_dir=str(tmp_path / "plain")))
    run_stage(plain)
    noisy = load_config(sft_config(neftune_noise_alpha=5.0, max_steps=2, output_dir=str(tmp_path / "noisy")))
    result = run_stage(noisy)
    # the same seed, batches and weights: only the noise on the embeddings changes the first step's loss
    assert first_loss(noisy.training.output_dir) != first_loss(plain.training.output_dir)
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


def _mapped_files(tensor: torch.Tensor) -> set[str]:
    """The files whose mapping holds this tensor's first byte (/proc/self/maps)."""
    address = tensor.data_ptr()
    files = set()
    for line in open("/proc/self/maps"):
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end and len(fields) > 5:
            files.add(fields[5])
    return files


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps")
def test_quantized_load_keeps_full_precision_tensors_file_backed(sft_config, tiny_llama):
    """After quantizing, the embeddings, norms and head leave transformers' mapping of the whole checkpoint for a
    copy-on-write mapping of their own bytes: reclaimable under a memory limit, private once written."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is in the dev extras; absent here")
    cfg = load_config(sft_config(quantization_bit=4))
    model = load_model(cfg, load_tokenizer(cfg.model))
    embedding = model.get_input_embeddings().weight
    assert str(tiny_llama / "model.safetensors") in _mapped_files(embedding)
    plain = load_model(load_config(sft_config()), load_tokenizer(cfg.model))
    torch.testing.assert_close(embedding, plain.get_input_embeddings().weight, rtol=0, atol=0)
    norm = model.model.norm.weight
    with torch.no_grad():
        norm.add_(1.0)  # a write lands in a private copy, never in the checkpoint
    from safetensors.torch import load_file

    assert torch.equal(load_file(tiny_llama / "model.safetensors")["model.norm.weight"], plain.model.norm.weight)
