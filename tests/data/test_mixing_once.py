"""`mix_strategy: interleave_once`: interleave until every dataset is used up, each sample exactly once."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lathe.config import load_config
from lathe.data.mixing import load_mixed_samples
from lathe.data.report import DataReport


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def two_datasets(tmp_path):
    """`small` (3 rows a0..a2) and `large` (5 rows b0..b4), alpaca files in their own dataset_dir."""
    folder = tmp_path / "data"
    folder.mkdir()
    info = {}
    for name, prefix, count in (("small", "a", 3), ("large", "b", 5)):
        rows = [{"instruction": f"{prefix}{i}", "input": "", "output": f"answer {prefix}{i}"} for i in range(count)]
        (folder / f"{name}.json").write_text(json.dumps(rows))
        info[name] = {"file_name": f"{name}.json"}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder


def prompts(samples) -> list[str]:
    return [s["messages"][0]["content"] for s in samples]


def mixed(sft_config, folder, strategy, **extra) -> list[str]:
    cfg = load_config(sft_config(dataset="small,large", dataset_dir=str(folder), mix_strategy=strategy, **extra))
    return prompts(load_mixed_samples(cfg.data.dataset, cfg, DataReport()))


EVERY = ["a0", "a1", "a2", "b0", "b1", "b2", "b3", "b4"]


def test_round_robin_takes_each_sample_once(sft_config, two_datasets):
    # Round robin while both last, then the rest of the longer one: no sample repeated, none left out.
    assert mixed(sft_config, two_datasets, "interleave_once") == ["a0", "b0", "a1", "b1", "a2", "b2", "b3", "b4"]
    # interleave_over repeats the shorter dataset instead (a0, a1 come back), interleave_under stops early.
    assert mixed(sft_config, two_datasets, "interleave_over") == [
        "a0", "b0", "a1", "b1", "a2", "b2", "a0", "b3", "a1", "b4"]
    assert mixed(sft_config, two_datasets, "interleave_under") == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_with_probabilities_every_sample_appears_exactly_once(sft_config, two_datasets):
    order = mixed(sft_config, two_datasets, "interleave_once", interleave_probs="0.8,0.2")
    assert Counter(order) == Counter(EVERY)
    # Within each dataset the order is kept; the sampling decides only which comes next.
    assert [p for p in order if p[0] == "a"] == ["a0", "a1", "a2"]
    assert [p for p in order if p[0] == "b"] == ["b0", "b1", "b2", "b3", "b4"]
    # With replacement, the same probabilities repeat samples.
    over = mixed(sft_config, two_datasets, "interleave_over", interleave_probs="0.8,0.2")
    assert max(Counter(over).values()) > 1


def test_streamed_mix_takes_each_sample_once(sft_config, two_datasets):
    from lathe.data.streaming import stream_samples
    from lathe.data.templates import resolve_template
    from lathe.model.load import load_tokenizer

    cfg = load_config(sft_config(dataset="small,large", dataset_dir=str(two_datasets), mix_strategy="interleave_once",
                                 streaming=True, max_steps=2, interleave_probs="0.5,0.5"))
    tokenizer = load_tokenizer(cfg.model)
    template = resolve_template(cfg.data.template, tokenizer)
    template.fix_tokenizer(tokenizer)
    stream = stream_samples(cfg.data.dataset, cfg, tokenizer, template, DataReport())
    answers = [tokenizer.decode([t for t in row["labels"] if t >= 0], skip_special_tokens=True).strip()
               for row in stream]
    assert Counter(answers) == Counter(f"answer {p}" for p in EVERY)
