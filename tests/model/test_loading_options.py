"""Loading options from LLaMA-Factory: quanto, mxfp4/fp8 checkpoints, fa3, MoD, adapter_folder, device maps."""

from __future__ import annotations

import json
import shutil
from unittest import mock

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.load import device_map_kwargs, load_model, load_tokenizer, resolve_attention
from lathe.train import run_stage

BLOCK = 32  # fp8 scale block of the hand-made checkpoint (64-wide tiny model: 2 x 2 blocks per matrix)


def _load(cfg):
    return load_model(cfg, load_tokenizer(cfg.model))


# 4-bit (about 30 s: quanto packs its weights on the CPU) in the slow suite; 8-bit keeps the path in CI
@pytest.mark.parametrize("bits, storage", [pytest.param(4, "WeightQBitsTensor", marks=pytest.mark.slow),
                                           (8, "WeightQBytesTensor")])
def test_quanto_quantizes_linears_and_lora_trains(sft_config, bits, storage):
    pytest.importorskip("optimum.quanto")
    cfg = load_config(sft_config(quantization_bit=bits, quantization_method="quanto", max_steps=2,
                                 lora_target="q_proj,v_proj"))
    result = run_stage(cfg)
    base = result.model.get_base_model().model.layers[0]
    q_proj = base.self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == "QLinear" and type(q_proj.base_layer.weight).__name__ == storage
    assert type(base.mlp.up_proj.weight).__name__ == storage  # not a LoRA target, still quantized
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert result.metrics["train_loss"] > 0


def _fp8_checkpoint(tiny_llama, folder):
    """The tiny llama saved as a fine-grained FP8 checkpoint: e4m3 weights, one fp32 scale per 32 x 32 block."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_llama, folder)
    state = load_file(folder / "model.safetensors")
    saved = {}
    for name, weight in state.items():
        if name.endswith("proj.weight"):
            rows, cols = weight.shape
            blocks = weight.reshape(rows // BLOCK, BLOCK, cols // BLOCK, BLOCK)
            scale = blocks.abs().amax(dim=(1, 3)) / 448.0  # 448: the largest e4m3 value
            saved[name] = (blocks / scale[:, None, :, None]).reshape(rows, cols).to(torch.float8_e4m3fn)
            saved[name.replace("weight", "weight_scale_inv")] = scale
        else:
            saved[name] = weight
    save_file(saved, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [BLOCK, BLOCK]}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, saved


def test_fp8_checkpoint_loads_dequantized_and_trains_fully(sft_config, tiny_llama, tmp_path):
    folder, saved = _fp8_checkpoint(tiny_llama, tmp_path / "fp8")
    cfg = load_config(sft_config(model_name_or_path=str(folder), quantization_method="fp8", finetuning_type="full",
                                 max_steps=2))
    result = run_stage(cfg)  # full training: the weights are plain tensors again
    assert result.metrics["train_loss"] > 0
    model = _load(load_config(sft_config(model_name_or_path=str(folder), do_train=False)))
    weight = model.model.layers[0].self_attn.q_proj.weight
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear and weight.dtype == torch.float32
    name = "model.layers.0.self_attn.q_proj.weight"
    blocks = saved[name].float().reshape(2, BLOCK, 2, BLOCK) * saved[name.replace("weight", "weight_scale_inv")][:, None, :, None]
    torch.testing.assert_close(weight, blocks.reshape(64, 64), rtol=0, atol=0)  # value x its block's scale


def test_checkpoint_format_must_match(sft_config):
    cfg = load_config(sft_config(quantization_method="mxfp4"))
    with pytest.raises(LatheError, match="no quantization_config"):
        _load(cfg)
    cfg = load_config(sft_config(quantization_method="fp8", quantization_bit=8))
    with pytest.raises(LatheError, match="on the fly"):
        _load(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without Hopper")
def test_fa3_refused_naming_package_and_gpu():
    with pytest.raises(LatheError, match="flash-attn 3 package.*Hopper"):
        resolve_attention("fa3")


def test_mixture_of_depths_refused_with_reason(sft_config):
    for mode in ("convert", "load"):  # refused by name when the config loads
        with pytest.raises(LatheError, match="`mixture_of_depths`.*mixture-of-depth 1.2.0.*transformers 4"):
            load_config(sft_config(mixture_of_depths=mode))


def test_adapter_folder_is_the_subfolder_of_each_adapter(sft_config, tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lathe.model.adapters import apply_method

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                                LoraConfig(target_modules=["q_proj"], r=2, init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "repo" / "run1")
    expected = peft_model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    cfg = load_config(sft_config(adapter_name_or_path=str(tmp_path / "repo"), adapter_folder="run1"))
    model = apply_method(_load(cfg), cfg)
    loaded = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert torch.equal(loaded, expected) and loaded.requires_grad
    cfg = load_config(sft_config(adapter_name_or_path=str(tmp_path / "repo")))
    with pytest.raises(LatheError, match="no adapter_config.json"):
        apply_method(_load(cfg), cfg)


def test_quantization_device_map(sft_config, tiny_llama, tmp_path):
    with pytest.raises(LatheError, match="training cannot use it"):
        device_map_kwargs(load_config(sft_config(quantization_device_map="auto")))
    with pytest.raises(LatheError, match="needs `quantization_device_map: auto`"):
        device_map_kwargs(load_config(sft_config(offload_folder=str(tmp_path / "off"))))
    cfg = load_config(sft_config(do_train=False, quantization_device_map="auto", offload_folder=str(tmp_path / "off")))
    assert device_map_kwargs(cfg) == {"device_map": "auto", "offload_folder": str(tmp_path / "off")}
    ids = torch.tensor([[5, 17, 33, 42]])
    plain = _load(load_config(sft_config(do_train=False)))
    import transformers.integrations.accelerate as hf_accelerate

    with mock.patch.object(hf_accelerate, "get_max_memory", lambda max_memory=None: {"cpu": 100_000}):
        spread = _load(cfg)  # no room on the CPU: accelerate puts the weights on disk
    assert set(spread.hf_device_map.values()) == {"disk"}
    with torch.no_grad():
        torch.testing.assert_close(spread(ids).logits, plain(ids).logits)


def test_mxfp4_checkpoint_loads_dequantized(sft_config, demo_tokenizer_dir, tmp_path):
    """Every packed byte 0x21 holds the fp4 codes 1 (+0.5, low nibble) and 2 (+1.0); exponent byte 128 is x2."""
    from safetensors.torch import load_file, save_file

    from lathe.testing.tiny import build_tiny_model

    folder = tmp_path / "mxfp4"
    shutil.copytree(build_tiny_model("gpt_oss", demo_tokenizer_dir), folder)
    state = load_file(folder / "model.safetensors")
    for name in [n for n in state if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        experts, inputs, outputs = state.pop(name).shape  # saved as [experts, out, in / 32, 16] bytes
        state[name + "_blocks"] = torch.full((experts, outputs, inputs // 32, 16), 0x21, dtype=torch.uint8)
        state[name + "_scales"] = torch.full((experts, outputs, inputs // 32), 128, dtype=torch.uint8)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (folder / "config.json").write_text(json.dumps(config))
    model = _load(load_config(sft_config(model_name_or_path=str(folder), quantization_method="mxfp4",
                                         finetuning_type="full")))
    weight = model.model.layers[0].mlp.experts.gate_up_proj  # [experts, in, out]
    assert weight.dtype == torch.float32 and weight.requires_grad
    assert torch.all(weight[:, 0::2] == 1.0) and torch.all(weight[:, 1::2] == 2.0)  # 0.5 x 2, 1.0 x 2
