"""lathe plan: exact parameter counts from a meta-device model, formula terms by hand."""

from __future__ import annotations

import pytest

from lathe.cli import main
from lathe.config import load_config
from lathe.efficiency.plan import (
    activation_bytes,
    estimate,
    largest_batch,
    meta_model,
    model_shape,
    parse_memory,
)
from lathe.model.memory import logits_bytes
from lathe.model.adapters import apply_method, count_parameters
from lathe.model.load import load_model, load_tokenizer


@pytest.fixture
def shape_and_cfg(sft_config):
    cfg = load_config(sft_config(lora_rank=8))
    return model_shape(meta_model(cfg)), cfg


def test_counts_are_exact(shape_and_cfg):
    shape, cfg = shape_and_cfg
    real = load_model(cfg, load_tokenizer(cfg.model))
    assert shape.total == sum(p.numel() for p in real.parameters())
    # hidden 64, 4 heads of 16, 2 KV heads (k/v out 32), MLP 256: rank 8 x (in + out) per projection
    per_layer = 8 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 256) * 2 + (256 + 64))
    assert estimate(shape, "lora", batch=1, seq=8, lora_rank=8).trainable == 2 * per_layer
    trainable, _ = count_parameters(apply_method(real, cfg))
    assert trainable == 2 * per_layer  # the same number peft trains


def test_terms_by_hand(shape_and_cfg):
    shape, _ = shape_and_cfg
    e = estimate(shape, "full", batch=2, seq=16, dtype_bytes=4, checkpointing=False)
    assert e.weights == shape.total * 4 and e.gradients == shape.total * 4 and e.optimizer == shape.total * 8
    assert e.static / shape.total == 16  # the classic 16 bytes per parameter of fp32 AdamW
    assert e.logits == 2 * 16 * shape.vocab * 8
    # 2 layers of hidden 64, KV width 32, MLP 256: (8 x 64 + 6 x 32 + 4 x 256) values per token, fp32
    layer = 32 * (8 * 64 + 6 * 32 + 4 * 256) * 4
    assert activation_bytes(shape, 2, 16, 4, False) == 2 * layer
    assert activation_bytes(shape, 2, 16, 4, False, scores=True) == 2 * (layer + 32 * 5 * 4 * 16 * 4 // 2)
    assert activation_bytes(shape, 2, 16, 4, False, tiled=True) == 2 * 32 * (8 * 64 + 6 * 32) * 4
    kept = 32 * 64 * 4  # a checkpointed layer keeps its input
    assert activation_bytes(shape, 2, 16, 4, True) == 2 * kept + layer
    assert activation_bytes(shape, 2, 16, 4, 1) == max(layer + kept, kept + layer)
    q4 = estimate(shape, "qlora", batch=1, seq=8)
    q8 = estimate(shape, "qlora8", batch=1, seq=8)
    lora = estimate(shape, "lora", batch=1, seq=8)
    assert q4.weights < q8.weights < lora.weights
    frozen = estimate(shape, "freeze", batch=1, seq=8, freeze_layers=1)
    assert frozen.trainable == shape.layer_params[-1]
    # the backward pass stops below the first layer that trains: one layer's activations, not two
    last = estimate(shape, "freeze", batch=1, seq=8, freeze_layers=1, checkpointing=False)
    assert last.activations * 2 == estimate(shape, "freeze", batch=1, seq=8, freeze_layers=-1,
                                            checkpointing=False).activations
    # without gradient accumulation the gradients replace the activations at the peak instead of adding to them
    assert e.total == e.weights + e.optimizer + max(e.gradients, e.activations + e.logits) + e.overhead
    summed = estimate(shape, "full", batch=2, seq=16, dtype_bytes=4, checkpointing=False, accumulates=True)
    assert summed.total == summed.static + summed.activations + summed.logits + summed.overhead
    z3 = estimate(shape, "full", batch=1, seq=8, devices=4, shard="zero3")
    assert z3.weights == shape.total * 4 // 4 and z3.optimizer == shape.total * 8 // 4
    assert logits_bytes(shape, 1, 1) == shape.vocab * 8


def test_largest_batch_fits(shape_and_cfg):
    shape, _ = shape_and_cfg
    memory = 128 * 1024**2
    b = largest_batch(shape, "lora", memory, seq=128)
    assert estimate(shape, "lora", batch=b, seq=128).total <= memory < estimate(shape, "lora", batch=b + 1, seq=128).total


def test_parse_memory():
    assert parse_memory("24GiB") == 24 * 1024**3
    assert parse_memory("80GB") == 80 * 10**9
    assert parse_memory("512MiB") == 512 * 1024**2
    with pytest.raises(Exception, match="24GiB"):
        parse_memory("lots")


def test_plan_cli(sft_config, capsys):
    assert main(["plan", str(sft_config()), "--device-memory", "1GiB"]) == 0
    out = capsys.readouterr().out
    for method in ("full", "freeze", "galore", "lora", "qlora", "qlora8"):
        assert f"\n{method} " in out
    assert "fits" in out and "B/param" in out


def test_plan_reads_the_real_sample_lengths(sft_config, capsys):
    """Samples shorter than cutoff_len make a smaller step than the cutoff: the plan reads the data for the
    longest one (as training then reads it, cached); --cutoff keeps the worst case."""
    from lathe.data.lengths import longest_sample, rows_per_sample
    from lathe.efficiency.plan import data_lengths
    from lathe.train.base import read_data

    cfg = load_config(sft_config(cutoff_len=4096))
    lengths = data_lengths(cfg)
    train = read_data(cfg).data.train
    longest = max(len(row["input_ids"]) for row in train)
    assert lengths.seq == longest_sample(train) == longest < 4096 and lengths.rows == rows_per_sample(train) == 1
    assert f"the longest of {len(train):,} samples is {longest:,} tokens (cutoff_len 4,096)" in lengths.note
    assert main(["plan", str(sft_config(cutoff_len=4096))]) == 0
    assert f"x {longest:,} tokens" in capsys.readouterr().out
    assert main(["plan", str(sft_config(cutoff_len=4096)), "--cutoff"]) == 0
    assert "x 4,096 tokens" in capsys.readouterr().out
    assert data_lengths(load_config(sft_config(dataset_dir="/nonexistent"))).note.startswith(
        "every sample counted as cutoff_len (the data could not be read here")


def test_pairwise_data_counts_two_sequences_per_sample(sft_config):
    from lathe.efficiency.plan import data_lengths

    lengths = data_lengths(load_config(sft_config(stage="dpo", dataset="lathe_pairs", cutoff_len=4096)))
    assert lengths.rows == 2 and "chosen and rejected in one batch" in lengths.note
