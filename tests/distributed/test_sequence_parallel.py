"""`sequence_parallel_size`: one sequence over several processes (DeepSpeed's Ulysses attention), on CPU over gloo.

The proof: 2 processes each holding half of every sequence log the same losses, step by step,
as 1 process holding all of it, and end with the same weights (1e-5), for LoRA and full
fine-tuning. The optimizer is plain SGD, so the weights' change is the sum of the steps' (clipped)
gradients times the learning rate: equal weights are equal gradients. Both runs use the same
DeepSpeed engine (ZeRO-0), so the only difference is the sequence being cut.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lathe.errors import LatheError
from tests.conftest import DATA, ROOT

pytest.importorskip("deepspeed", reason="sequence parallelism runs through DeepSpeed (pip install lathe[deepspeed])")

Z0, Z3 = ROOT / "examples/deepspeed/ds_z0_config.json", ROOT / "examples/deepspeed/ds_z3_config.json"




def lathe_train(config: Path, *overrides: str, processes: int):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(processes)}
    return subprocess.run([sys.executable, "-m", "lathe", "train", str(config), *overrides],
                          capture_output=True, text=True, env=env, timeout=300)


def logged(output_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def weights(output_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (output_dir / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(output_dir / name)


@pytest.fixture
def sp_config(tmp_path, tiny_llama):
    def make(**overrides) -> Path:
        raw = {
            "model_name_or_path": str(tiny_llama), "dataset": "lathe_identity", "dataset_dir": str(DATA),
            "template": "chatml", "cutoff_len": 64, "do_train": True, "max_steps": 3, "logging_steps": 1,
            "learning_rate": 0.5, "optim": "sgd", "disable_shuffling": True, "disable_tqdm": True, "seed": 1,
            "per_device_train_batch_size": 1, "overwrite_output_dir": True, "save_strategy": "no",
            "flash_attn": "sdpa", "padding_free": False, "deepspeed": str(Z0), "plot_loss": False,
            "output_dir": str(tmp_path / "unused"), **overrides,
        }
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in raw.items() if v is not None}))  # None: the default
        return path

    return make


@pytest.mark.parametrize("method, extra", [
    ("lora", {}),
    pytest.param("full", {}, marks=pytest.mark.slow),  # ~70 s on 2 cores: the default suite runs lora
    # several samples in one row, kept apart by lathe's varlen sdpa from the positions DeepSpeed gathers
    pytest.param("lora", {"neat_packing": True, "cutoff_len": 128}, marks=pytest.mark.slow),
    # pt: text packed into cutoff_len rows
    pytest.param("lora", {"stage": "pt", "dataset": "lathe_docs", "template": None}, marks=pytest.mark.slow),
    # two padded rows per batch
    pytest.param("lora", {"per_device_train_batch_size": 2}, marks=pytest.mark.slow),
    # ZeRO-3 partitions the weights over the processes that share each sequence
    pytest.param("full", {"deepspeed": str(Z3)}, marks=pytest.mark.slow),
], ids=["lora", "full", "lora-neat-packing", "pt-packed", "lora-batch-2", "full-zero3"])
def test_two_processes_holding_half_a_sequence_equal_one_holding_all(sp_config, tmp_path, method, extra):
    config = sp_config(finetuning_type=method, **extra)
    two, one = tmp_path / "two", tmp_path / "one"
    proc = lathe_train(config, "sequence_parallel_size=2", f"output_dir={two}", processes=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # lathe's varlen sdpa (what it loads for a plain causal decoder) is what DeepSpeed wraps
    assert "sequence parallel: each sequence over 2 processes (DeepSpeed Ulysses, lathe_sdpa attention)" in proc.stderr
    proc = lathe_train(config, f"output_dir={one}", f"deepspeed={Z0}", processes=1)  # one process: nothing to shard
    assert proc.returncode == 0, proc.stderr[-4000:]
    got, want = logged(two), logged(one)
    assert [r["current_steps"] for r in got] == [1, 2, 3]  # one writer; the same samples, one per step
    for a, b in zip(got, want):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    a, b = weights(two), weights(one)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.slow  # four processes on two cores: about two minutes
def test_sequence_parallel_composes_with_data_parallel(sp_config, tmp_path):
    """4 processes in 2 groups of 2 (each group cuts its sequences in two; the groups take different
    samples) equal 2 data-parallel processes holding whole sequences: the same losses and weights.

    DeepSpeed's loader gathers a group's samples and runs them one after the other, so the groups
    see the samples in another order than plain data parallelism; with every sample the same, the
    order cannot matter and any mis-scaled gradient (averaged over 4 instead of 2 groups, or summed
    over a group twice) shows in the weights."""
    row = {"instruction": "Name the tool that fine-tunes language models.", "input": "", "output": "lathe, of course."}
    (tmp_path / "same.json").write_text(json.dumps([row] * 16))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"same": {"file_name": "same.json"}}))
    config = sp_config(finetuning_type="lora", max_steps=2, dataset="same", dataset_dir=str(tmp_path))
    four, two = tmp_path / "four", tmp_path / "two"
    proc = lathe_train(config, "sequence_parallel_size=2", f"output_dir={four}", processes=4)
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = lathe_train(config, f"output_dir={two}", processes=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got, want = logged(four), logged(two)
    assert [r["current_steps"] for r in got] == [1, 2]
    for a, b in zip(got, want, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    a, b = weights(four), weights(two)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.slow  # about a minute: two torchrun launches with a 152k-vocabulary model
def test_each_process_runs_its_slice_of_the_output_layer_in_chunks(sp_config, tmp_path, demo_tokenizer_dir):
    """With Qwen's vocabulary a 128-token slice's logits pass the chunking threshold: each process's
    slice goes through the chunked output layer, and the losses and weights still equal one process's."""
    from lathe.testing.tiny import build_tiny_model

    model = build_tiny_model("llama", demo_tokenizer_dir, hidden_size=32, num_heads=4, num_kv_heads=2,
                             vocab_size=151936)
    config = sp_config(model_name_or_path=str(model), finetuning_type="lora", stage="pt", dataset="lathe_docs",
                       template=None, cutoff_len=256, max_steps=2)
    two, one = tmp_path / "two", tmp_path / "one"
    proc = lathe_train(config, "sequence_parallel_size=2", f"output_dir={two}", processes=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "chunked logits: on" in proc.stderr
    proc = lathe_train(config, f"output_dir={one}", f"deepspeed={Z0}", processes=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for a, b in zip(logged(two), logged(one), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    a, b = weights(two), weights(one)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-5, msg=name)


# ---------------------------------------------------------------- refused up front, with the key named


def _load(tmp_path, tiny_llama, *extra: str):
    from lathe.config import load_config

    return load_config(None, [f"model_name_or_path={tiny_llama}", "dataset=lathe_identity",
                              f"output_dir={tmp_path}", *extra])


@pytest.mark.parametrize("extra, message", [
    ([], "add `deepspeed: examples/deepspeed/ds_z0_config.json`"),
    ([f"deepspeed={Z0}", "stage=dpo", "finetuning_type=lora"], "`stage: dpo` computes its own"),
    ([f"deepspeed={Z0}", "use_dft_loss=true"], "`use_dft_loss`"),
    ([f"deepspeed={Z0}", "label_smoothing_factor=0.1"], "label_smoothing_factor"),
    ([f"deepspeed={Z0}", "padding_free=true", "per_device_train_batch_size=2"], "set it to 1"),
    ([f"deepspeed={Z0}", "stage=pt", "per_device_train_batch_size=2"], "the default of `stage: pt`"),
    ([f"deepspeed={Z0}", "flash_attn=disabled"], "eager attention"),
    ([f"deepspeed={Z0}", "shift_attn=true"], "`shift_attn`"),
])
def test_what_cannot_be_exact_is_refused(tmp_path, tiny_llama, extra, message):
    from lathe.distributed.sequence_parallel import check_sequence_parallel

    cfg = _load(tmp_path, tiny_llama, "sequence_parallel_size=2", *extra)
    with pytest.raises(LatheError, match=re.escape(message)):
        check_sequence_parallel(cfg)


def test_processes_and_heads_must_divide(tmp_path, tiny_llama):
    from transformers import AutoConfig

    from lathe.distributed.sequence_parallel import check_model, check_sequence_parallel

    cfg = _load(tmp_path, tiny_llama, "sequence_parallel_size=2", f"deepspeed={Z0}")
    check_sequence_parallel(cfg, world_size=4)  # 2 groups of 2: data parallel over the groups
    with pytest.raises(LatheError, match="the run has 3"):
        check_sequence_parallel(cfg, world_size=3)

    class Model:
        config = AutoConfig.from_pretrained(tiny_llama)  # 4 heads, 2 key/value heads

    Model.config._attn_implementation = "sdpa"
    assert check_model(cfg, Model()) == "sdpa"
    with pytest.raises(LatheError, match="has 4; use a divisor"):
        check_model(_load(tmp_path, tiny_llama, "sequence_parallel_size=3", f"deepspeed={Z0}"), Model())
    Model.config._attn_implementation = "eager"
    with pytest.raises(LatheError, match="eager attention"):
        check_model(cfg, Model())


# ---------------------------------------------------------------- the collator DeepSpeed's cutting needs


def test_collator_pads_to_the_group_and_adds_positions():
    from lathe.distributed.sequence_parallel import SequenceParallelCollator

    def inner(features):
        return {"input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]), "labels": torch.tensor([[-100, 6, 7], [-100, 9, -100]]),
                "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}

    batch = SequenceParallelCollator(inner, size=2, pad_id=0, kept_apart=0)([])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 9, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [-100, 9, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]


def test_collator_pads_every_batch_to_one_length_over_gloo():
    """gloo's all-gather (DeepSpeed's loader gathers the group's batches) takes equal sizes only."""
    from lathe.distributed.sequence_parallel import SequenceParallelCollator

    batch = SequenceParallelCollator(lambda f: {"input_ids": torch.tensor([[5, 6, 7]])}, size=2, pad_id=0,
                                     kept_apart=0, fixed_length=7)([])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0, 0, 0, 0]]  # cutoff_len, rounded up to the group
    assert batch["position_ids"].tolist() == [list(range(8))]
    with pytest.raises(LatheError, match="longer than `cutoff_len`"):
        SequenceParallelCollator(lambda f: {"input_ids": torch.ones(1, 9, dtype=torch.long)}, size=2, pad_id=0,
                                 kept_apart=0, fixed_length=7)([])


def test_padding_free_batches_of_several_samples_are_refused(tmp_path, tiny_llama):
    from transformers import DataCollatorWithFlattening

    from lathe.distributed.sequence_parallel import check_collator

    cfg = _load(tmp_path, tiny_llama)
    check_collator(cfg, DataCollatorWithFlattening(), 1)
    with pytest.raises(LatheError, match="set it to 1"):
        check_collator(cfg, DataCollatorWithFlattening(), 2)


@pytest.mark.parametrize("batch, message", [
    ({"input_ids": torch.tensor([[1, 2, 3, 4]]), "position_ids": torch.tensor([[0, 1, 0, 1]])}, "several samples"),
    ({"input_ids": torch.tensor([[1, 2]]), "attention_mask": torch.tensor([[0, 1]])}, "padded on the left"),
])
def test_collator_refuses_rows_the_unmasked_attention_would_mix(batch, message):
    from lathe.distributed.sequence_parallel import SequenceParallelCollator

    with pytest.raises(LatheError, match=message):
        SequenceParallelCollator(lambda f: dict(batch), size=2, pad_id=0, kept_apart=0)([])
    if "position_ids" in batch:  # FlashAttention keeps flattened samples apart by their positions
        SequenceParallelCollator(lambda f: dict(batch), size=2, pad_id=0, kept_apart=None)([])
