"""padding_free: the same batches flattened into one row train exactly like padded batches, minus the padding."""

from __future__ import annotations

import json

import pytest

from lathe.cli import main
from lathe.config import load_config


def _log(config_path) -> list[dict]:
    out = load_config(str(config_path)).training.output_dir
    return [json.loads(line) for line in open(f"{out}/trainer_log.jsonl")]


def test_padding_free_matches_padded(sft_config, tmp_path):
    padded = sft_config(max_steps=3, output_dir=str(tmp_path / "padded"))
    assert main(["train", str(padded)]) == 0
    padded_log = _log(padded)
    flat = sft_config(max_steps=3, padding_free=True, output_dir=str(tmp_path / "flat"))
    assert main(["train", str(flat)]) == 0
    flat_log = _log(flat)
    for a, b in zip(padded_log, flat_log):  # same samples per step, same loss (to float noise)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    # every token of the flattened batches is a real token, eos included
    assert flat_log[-1]["total_tokens"] >= padded_log[-1]["total_tokens"]


def test_padding_free_is_sft_only(sft_config):
    with pytest.raises(Exception, match="padding_free"):
        load_config(str(sft_config(stage="pt", dataset="lathe_docs", padding_free=True)))


def test_padding_free_refuses_shift_attn(sft_config):
    with pytest.raises(Exception, match="padding_free"):
        load_config(str(sft_config(padding_free=True, shift_attn=True)))
