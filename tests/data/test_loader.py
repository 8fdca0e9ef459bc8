"""The data path: cache hits, packing equivalence, mixing, tokenized_path."""

from __future__ import annotations

import json
import time

import pytest
import torch

from lathe.config import load_config
from lathe.data import loader
from lathe.data.loader import get_dataset, prepare
from lathe.data.mixing import load_mixed_samples
from lathe.data.report import DataReport
from lathe.data.packing import FlatteningCollator, greedy_bins, pack_dataset
from lathe.data.templates import resolve_template
from lathe.model.load import load_tokenizer


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def setup(cfg):
    tokenizer = load_tokenizer(cfg.model)
    template = resolve_template(cfg.data.template, tokenizer)
    template.fix_tokenizer(tokenizer)
    return tokenizer, template


def counting_tokenizer(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = loader.tokenize_samples

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(loader, "tokenize_samples", counted)
    return calls


def test_second_run_reads_the_cache(sft_config, monkeypatch):
    cfg = load_config(sft_config(dataset="lathe_identity,lathe_numbers"))
    tokenizer, template = setup(cfg)
    calls = counting_tokenizer(monkeypatch)
    start = time.perf_counter()
    first, report = prepare(cfg.data.dataset, cfg, tokenizer, template)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    second, report2 = prepare(cfg.data.dataset, cfg, tokenizer, template)
    warm = time.perf_counter() - start
    assert calls == [1]  # preprocessing ran once
    assert first["input_ids"] == second["input_ids"] and first["labels"] == second["labels"]
    assert report2.to_dict() == report.to_dict()
    assert warm < cold


@pytest.mark.parametrize("change", [{"cutoff_len": 64}, {"train_on_prompt": True}, {"template": "default"}])
def test_cache_key_follows_the_options(sft_config, monkeypatch, change):
    calls = counting_tokenizer(monkeypatch)
    for overrides in ({}, change):
        cfg = load_config(sft_config(**overrides))
        tokenizer, template = setup(cfg)
        prepare(cfg.data.dataset, cfg, tokenizer, template)
    assert calls == [1, 1]


def test_cache_key_follows_the_data_and_overwrite_cache(sft_config, tmp_path, monkeypatch):
    data = tmp_path / "d"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"t": {"file_name": "t.json"}}))
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(4)]
    (data / "t.json").write_text(json.dumps(rows))
    calls = counting_tokenizer(monkeypatch)
    cfg = load_config(sft_config(dataset="t", dataset_dir=str(data)))
    tokenizer, template = setup(cfg)
    prepare("t", cfg, tokenizer, template)
    prepare("t", cfg, tokenizer, template)
    assert len(calls) == 1
    (data / "t.json").write_text(json.dumps(rows + [{"instruction": "new", "output": "row"}]))
    dataset, _ = prepare("t", cfg, tokenizer, template)
    assert len(calls) == 2 and len(dataset) == 5
    cfg = load_config(sft_config(dataset="t", dataset_dir=str(data), overwrite_cache=True))
    prepare("t", cfg, tokenizer, template)
    assert len(calls) == 3


def test_tokenized_path_is_written_then_read(sft_config, tmp_path, monkeypatch):
    stored = tmp_path / "tokenized"
    cfg = load_config(sft_config(tokenized_path=str(stored)))
    tokenizer, template = setup(cfg)
    first = get_dataset(cfg, tokenizer, template)
    assert (stored / "report.json").exists()
    calls = counting_tokenizer(monkeypatch)
    cfg = load_config(sft_config(tokenized_path=str(stored), dataset="no_such_dataset_is_read"))
    second = get_dataset(cfg, tokenizer, template)
    assert calls == []
    assert first.train["input_ids"] == second.train["input_ids"]


def test_greedy_bins():
    bins = greedy_bins([5, 3, 8, 2, 7, 1], capacity=10)
    assert sorted(i for b in bins for i in b) == list(range(6))
    assert all(sum([5, 3, 8, 2, 7, 1][i] for i in b) <= 10 for b in bins)
    assert len(bins) == 3  # 26 tokens need at least 3 bins of 10


def _loss(model, batch):
    with torch.no_grad():
        return model(**batch, use_cache=False).loss.item()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_neat_packing_loss_equals_unpacked_loss(sft_config, attn):
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

    cfg = load_config(sft_config(dataset="lathe_identity,lathe_numbers", cutoff_len=96))
    tokenizer, template = setup(cfg)
    dataset, _ = prepare(cfg.data.dataset, cfg, tokenizer, template)
    samples = dataset.select(range(12))
    model = AutoModelForCausalLM.from_pretrained(cfg.model.model_name_or_path, attn_implementation=attn).eval()

    padded = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)([dict(s) for s in samples])
    packed_rows = pack_dataset(samples.remove_columns(["attention_mask"]), capacity=96, neat=True)
    assert len(packed_rows) < len(samples)
    packed = FlatteningCollator()([dict(r) for r in packed_rows])
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    assert _loss(model, packed) == pytest.approx(_loss(model, padded), abs=1e-4)

    loose = FlatteningCollator()([dict(r) for r in pack_dataset(
        samples.remove_columns(["attention_mask"]), capacity=96, neat=False)])
    assert abs(_loss(model, loose) - _loss(model, padded)) > 1e-4  # plain packing lets samples see each other


def test_neat_packing_trains(sft_config):
    from lathe.train import run_stage

    cfg = load_config(sft_config(neat_packing=True, dataset="lathe_identity,lathe_numbers", max_steps=6,
                                 per_device_train_batch_size=2))
    result = run_stage(cfg)
    with open(f"{cfg.training.output_dir}/trainer_log.jsonl") as f:
        log = [json.loads(line) for line in f]
    assert len(log) == 6 and log[-1]["loss"] < log[0]["loss"]
    assert result.metrics["train_loss"] > 0


@pytest.mark.parametrize("strategy, expect", [("concat", 357), ("interleave_under", None), ("interleave_over", None)])
def test_mix_strategies(sft_config, strategy, expect):
    extra = {"interleave_probs": "0.5,0.5"} if strategy != "concat" else {}
    cfg = load_config(sft_config(dataset="lathe_identity,lathe_numbers", mix_strategy=strategy, **extra))
    samples = load_mixed_samples(cfg.data.dataset, cfg, DataReport())
    if expect:
        assert len(samples) == expect
    elif strategy == "interleave_under":
        assert len(samples) < 2 * 57 + 10  # stops once the small identity set (57 rows) runs out
    else:
        assert len(samples) > 2 * 300 - 10  # oversamples identity until the 300 number rows are used up


def test_interleave_probs_validation(sft_config):
    from lathe.errors import LatheError

    with pytest.raises(LatheError, match="one probability per dataset"):
        load_config(sft_config(dataset="lathe_identity,lathe_numbers", mix_strategy="interleave_under",
                               interleave_probs="1.0"))
    with pytest.raises(LatheError, match="interleave_probs"):
        load_config(sft_config(interleave_probs="1.0"))


def test_streaming_trains_and_counts_as_it_reads(sft_config, tmp_path, caplog):
    from lathe.train import run_stage

    data = tmp_path / "d"
    data.mkdir()
    rows = [{"instruction": f"Say {i}", "output": f"{i}"} for i in range(40)] + [{"instruction": "no output"}] * 3
    (data / "s.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (data / "dataset_info.json").write_text(json.dumps({"s": {"file_name": "s.jsonl"}}))
    cfg = load_config(sft_config(dataset="s", dataset_dir=str(data), streaming=True, buffer_size=8, max_steps=12,
                                 per_device_train_batch_size=4))
    tokenizer, template = setup(cfg)
    bundle = get_dataset(cfg, tokenizer, template)
    assert bundle.streaming and not hasattr(bundle.train, "__len__")
    caplog.set_level("INFO", logger="lathe")
    result = run_stage(cfg)
    assert result.metrics["train_loss"] > 0
    text = caplog.text
    assert "skipped 3 of 43 rows" in text  # counted while the stream was read


def test_streaming_needs_max_steps(sft_config):
    from lathe.errors import LatheError

    with pytest.raises(LatheError, match="max_steps"):
        load_config(sft_config(streaming=True, max_steps=-1))
    with pytest.raises(LatheError, match="packing"):
        load_config(sft_config(streaming=True, packing=True))


def test_template_options_reach_the_template(sft_config):
    from lathe.data.loader import run_template
    from lathe.errors import LatheError

    cfg = load_config(sft_config(template="qwen3", enable_thinking=False, default_system="Be brief."))
    tokenizer = load_tokenizer(cfg.model)
    template = run_template(cfg, tokenizer)
    text = template.render_prompt(tokenizer, [{"role": "user", "content": "hi"}])
    assert "Be brief." in text and "<think>\n\n</think>" in text
    with pytest.raises(LatheError, match="tool"):
        run_template(load_config(sft_config(tool_format="no_such_format")), tokenizer)
