"""Pre-training stage: plain text packed into blocks, loss falls, perplexity reported."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lathe.config import load_config
from lathe.train import run_stage
from tests.conftest import shared_path


def test_pt_packs_learns_and_reports_perplexity(sft_config):
    cfg = load_config(sft_config(
        stage="pt", dataset="lathe_docs", template=None, cutoff_len=64, max_steps=20, learning_rate=5e-3,
        finetuning_type="full", do_eval=True, val_size=0.1, eval_strategy="no",
    ))
    result = run_stage(cfg)
    out = Path(cfg.training.output_dir)
    losses = [json.loads(line)["loss"] for line in (out / "trainer_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert sum(losses[-3:]) < 0.93 * sum(losses[:3])
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_perplexity"] == math.exp(metrics["eval_loss"])
    assert result.metrics["eval_perplexity"] > 1


def test_pt_blocks_hold_every_token_once(sft_config):
    from lathe.data.loader import get_dataset
    from lathe.data.templates import resolve_template
    from lathe.model.load import load_tokenizer

    cfg = load_config(sft_config(stage="pt", dataset="lathe_docs", template=None, cutoff_len=50))
    tokenizer = load_tokenizer(cfg.model)
    bundle = get_dataset(cfg, tokenizer, resolve_template(None, tokenizer))
    blocks = bundle.train
    assert all(len(ids) <= 50 for ids in blocks["input_ids"])
    assert sum(len(ids) == 50 for ids in blocks["input_ids"]) >= len(blocks) - 1  # only the last is short
    assert blocks[0]["labels"] == blocks[0]["input_ids"] and blocks[0]["position_ids"][0] == 0
    eos = tokenizer.eos_token_id
    lines = [line for line in (Path(__file__).resolve().parents[2] / "data" / "lathe_docs.txt").read_text().splitlines() if line.strip()]
    assert sum(ids.count(eos) for ids in blocks["input_ids"]) == len(lines)  # one eos per document


def test_pt_on_shared_wiki_and_c4(sft_config):
    data_dir = shared_path("data")
    cfg = load_config(sft_config(stage="pt", dataset="wiki_demo,c4_demo", dataset_dir=str(data_dir), template=None,
                                 cutoff_len=128, max_steps=3, max_samples=20))
    assert run_stage(cfg).metrics["train_loss"] > 0


def test_sft_on_plain_text_is_refused_with_the_reason(sft_config):
    import pytest

    from lathe.errors import LatheError

    cfg = load_config(sft_config(dataset="lathe_docs"))
    with pytest.raises(LatheError, match="stage: pt"):
        run_stage(cfg)


def test_whitespace_only_texts_are_counted_not_lost(tmp_path, sft_config):
    from lathe.data.loader import get_dataset
    from lathe.data.templates import resolve_template
    from lathe.model.load import load_tokenizer

    (tmp_path / "docs.txt").write_text("a first document\n   \nthe second one\n\t\n", encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"docs": {"file_name": "docs.txt", "columns": {"prompt": "text"}}}))
    for packing in (True, False):
        cfg = load_config(sft_config(stage="pt", dataset="docs", dataset_dir=str(tmp_path), template=None,
                                     cutoff_len=64, packing=packing))
        tokenizer = load_tokenizer(cfg.model)
        bundle = get_dataset(cfg, tokenizer, resolve_template(None, tokenizer))
        assert bundle.report.dropped == {"blank text (whitespace only)": 2}
        assert sum(ids.count(tokenizer.eos_token_id) for ids in bundle.train["input_ids"]) == 2
