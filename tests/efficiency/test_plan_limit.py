"""`lathe plan`'s `limit` on a CPU: the smallest memory limit a run completes under (issue 20).

Which weights stay file-backed (views into the memory-mapped safetensors, dropped and re-read
under a limit) per method and dtype, how the plan reads the checkpoint's dtype, that a GPU plan
shows no limit, and the figure against the limits benchmarks/memory_limit.py measured at
TinyLlama-1.1B's shape (computed from a config and a safetensors header: no weights, no training).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from lathe.config import load_config
from lathe.efficiency.file_backed import Checkpoint, checkpoint_of, file_backed, working_set
from lathe.efficiency.plan import (data_lengths, estimate, plan, plan_kwargs, plan_limits, planned_shape,
                                   short_of_memory, smallest_limit)
from lathe.efficiency.variants import variant
from lathe.model.memory import size

from tests.conftest import DATA

MiB = 1024**2
FP32_HERE = Checkpoint(torch.float32, True, "")
BF16_HERE = Checkpoint(torch.bfloat16, True, "")
FP32_HUB = Checkpoint(torch.float32, False, "")


def write_header(folder: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file whose data region is a hole: the header is real, the bytes cost no disk."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = {"F32": 4, "BF16": 2, "F16": 2}[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


@pytest.fixture
def shape(sft_config):
    return planned_shape(load_config(sft_config()))


def mapped(shape, name, checkpoint, compute=torch.float32, **kwargs):
    e = estimate(shape, name, batch=1, seq=8, freeze_layers=1)
    return file_backed(shape, variant(name), trainable=e.trainable, compute=compute, checkpoint=checkpoint, **kwargs)


def test_which_weights_stay_file_backed(shape):
    # fp32 checkpoint computed in fp32: every frozen weight stays a view into the mapping
    assert mapped(shape, "lora", FP32_HERE) == shape.total * 4  # the whole base; the adapters are new tensors
    assert mapped(shape, "full", FP32_HERE) == 0  # the first optimizer step writes (copies) every page
    assert mapped(shape, "freeze", FP32_HERE) == (shape.total - shape.layer_params[-1]) * 4  # all but the last layer
    # a quantized base: the embeddings, head and norms only, and only from a local folder
    assert mapped(shape, "qlora", FP32_HERE) == mapped(shape, "qlora8", FP32_HERE) == (
        shape.total - shape.linear_params) * 4 > 0
    assert mapped(shape, "qlora", FP32_HUB) == 0  # release_checkpoint_mapping copies them without a folder
    # a bf16 checkpoint computed in fp32: transformers converts every weight into a copy
    for name in ("lora", "qlora", "full", "freeze"):
        assert mapped(shape, name, BF16_HERE) == 0, name
    # bf16 computed in bf16: views again, except a quantized base's rest (peft casts it to fp32)
    assert mapped(shape, "lora", BF16_HERE, torch.bfloat16) == shape.total * 2
    assert mapped(shape, "freeze", BF16_HERE, torch.bfloat16) == (shape.total - shape.layer_params[-1]) * 2
    assert mapped(shape, "qlora", BF16_HERE, torch.bfloat16) == 0
    # weights ZeRO-3 partitions are copies; a checkpoint counted resident maps nothing
    assert mapped(shape, "lora", FP32_HERE, devices=2, shard="zero3") == 0
    assert mapped(shape, "lora", FP32_HERE, devices=2, shard="zero2") == shape.total * 4
    assert mapped(shape, "lora", Checkpoint(None, True, "")) == 0


def test_working_set_is_one_layer_of_what_is_mapped(shape):
    lora = mapped(shape, "lora", FP32_HERE)
    assert working_set(shape, variant("lora"), compute=torch.float32, mapped=lora) == max(shape.layer_params) * 4
    norms = (sum(shape.layer_params) - shape.linear_params) // shape.layers
    assert working_set(shape, variant("qlora"), compute=torch.float32, mapped=1 << 30) == norms * 4
    assert working_set(shape, variant("full"), compute=torch.float32, mapped=0) == 0


def test_the_limit_is_the_starved_total_less_the_mapped_weights(sft_config):
    cfg = load_config(sft_config())
    shape = planned_shape(cfg)
    kwargs = short_of_memory(cfg, plan_kwargs(cfg))
    assert kwargs["checkpointing"] is True  # unset in the config: a run short of memory checkpoints every layer
    e = estimate(shape, "lora", batch=4, **kwargs)
    limit = smallest_limit(shape, "lora", FP32_HERE, torch.float32, batch=4, **kwargs)
    assert limit == e.total - shape.total * 4 + max(shape.layer_params) * 4
    full = estimate(shape, "full", batch=4, **kwargs).total
    assert smallest_limit(shape, "full", FP32_HERE, torch.float32, batch=4, **kwargs) == full
    assert smallest_limit(shape, "lora", BF16_HERE, torch.float32, batch=4, **kwargs) == e.total
    decided = load_config(sft_config(disable_gradient_checkpointing=True))
    assert short_of_memory(decided, plan_kwargs(decided))["checkpointing"] is False  # the config decides


def test_checkpoint_of_reads_the_safetensors_header(tiny_llama, tmp_path):
    config = SimpleNamespace(dtype="float32")
    here = checkpoint_of(str(tiny_llama), config)
    assert (here.dtype, here.local) == (torch.float32, True) and "float32 safetensors" in here.note
    bf16 = tmp_path / "bf16"
    bf16.mkdir()
    write_header(bf16, {"embed.weight": ("BF16", [1000, 64]), "norm.weight": ("F32", [64])})
    assert checkpoint_of(str(bf16), config).dtype == torch.bfloat16  # most bytes, whatever the config says
    pickles = tmp_path / "pickles"
    pickles.mkdir()
    (pickles / "pytorch_model.bin").write_bytes(b"\0")
    assert checkpoint_of(str(pickles), config).dtype is None  # not memory-mapped safetensors: resident
    hub = checkpoint_of("org/model", SimpleNamespace(dtype="bfloat16"))
    assert (hub.dtype, hub.local) == (torch.bfloat16, False) and "hub id: assumed bfloat16 safetensors" in hub.note
    unnamed = checkpoint_of("org/model", SimpleNamespace())
    assert unnamed.dtype == torch.float32 and "none named" in unnamed.note
    assert checkpoint_of(str(tiny_llama), config, from_scratch=True).dtype is None
    quantized = SimpleNamespace(dtype="float16", quantization_config={"quant_method": "gptq"})
    assert checkpoint_of("org/model-gptq", quantized).dtype is None


def test_only_a_cpu_plan_shows_the_limit(sft_config):
    cfg = load_config(sft_config())
    lengths = data_lengths(cfg)
    cpu = plan(cfg, None, lengths=lengths, cpu=True)
    header = next(line for line in cpu.splitlines() if line.startswith("method"))
    assert header.split() == ["method", "trainable", "weights", "grads", "optim", "activ.", "logits", "total", "limit",
                              "B/param"]
    limit = plan_limits(cfg, ["lora"], lengths)["lora"]
    row = next(line for line in cpu.splitlines() if line.startswith("lora "))
    assert row.split()[8] == size(limit)
    assert "checkpoint: float32 safetensors in" in cpu and "its frozen weights stay memory-mapped" in cpu
    assert "limit (CPU)" in cpu
    gpu = plan(cfg, None, lengths=lengths, cpu=False)
    assert "limit" not in gpu and "checkpoint:" not in gpu
    assert next(line for line in gpu.splitlines() if line.startswith("lora ")).split()[8] == row.split()[9]  # B/param


# Measured by benchmarks/memory_limit.py (docs/benchmarks.md): a random llama of TinyLlama-1.1B's shape, fp32
# safetensors, SFT on lathe_identity (chatml, cutoff 256, batch 2), 2 steps; the smallest cgroup v1 limit each
# method completes under, and the anonymous part of the worker's baseline (what of the baseline a limit holds).
TINYLLAMA = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False)
MEASURED_LIMIT = {"lora": 768 * MiB, "qlora": 1152 * MiB}
BASELINE_ANON = 374 * MiB


@pytest.fixture
def tinyllama_config(demo_tokenizer_dir, tmp_path):
    """TinyLlama's shape as a folder: config.json, the demo tokenizer and an fp32 safetensors header (no weights)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path / "tinyllama"
    shutil.copytree(demo_tokenizer_dir, folder)
    config = LlamaConfig(**TINYLLAMA)
    config.save_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    write_header(folder, {n: ("F32", list(p.shape)) for n, p in model.state_dict().items()})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "model_name_or_path": str(folder), "stage": "sft", "dataset": "lathe_identity", "dataset_dir": str(DATA),
        "template": "chatml", "cutoff_len": 256, "per_device_train_batch_size": 2, "output_dir": str(tmp_path / "out"),
    }))
    return path


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_tinyllama_limit_within_20_percent_of_the_measured(tinyllama_config, method):
    overrides = ["quantization_bit=4"] if method == "qlora" else []
    cfg = load_config(str(tinyllama_config), overrides)
    limit = plan_limits(cfg, [method], data_lengths(cfg))[method]
    assert 0.8 <= (BASELINE_ANON + limit) / MEASURED_LIMIT[method] <= 1.2
