"""`dedup: exact | minhash`: duplicates removed before tokenization, counted per dataset in the data report."""

from __future__ import annotations

import json
import random

import datasets
import pytest

from lathe.config import load_config
from lathe.data import dedup
from lathe.data.dedup import exact_keep, minhash_keep
from lathe.data.loader import prepare
from lathe.data.templates import resolve_template
from lathe.model.load import load_tokenizer

WORDS = [f"word{i}" for i in range(3000)]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    datasets.disable_progress_bars()


def sample(answer: str, question: str = "q", system: str = "") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "system": system, "tools": ""}


def test_exact_keeps_the_first_of_identical_conversations():
    samples = [sample("a"), sample("b"), sample("a"), sample("a", system="s"), sample("a", question="q2"), sample("b")]
    assert exact_keep(samples) == [True, True, False, True, True, False]


def text(rng: random.Random, n: int = 200) -> list[str]:
    return [rng.choice(WORDS) for _ in range(n)]


def test_minhash_removes_near_duplicates_and_keeps_the_rest():
    rng = random.Random(0)
    base = text(rng)
    one_word = list(base)
    one_word[100] = "changed"  # 5 of ~200 shingles differ: Jaccard ~0.95
    fifth = list(base)
    for i in range(0, 200, 5):
        fifth[i] = f"other{i}"  # every shingle differs
    samples = [sample(" ".join(base)), sample(" ".join(one_word)), sample(" ".join(fifth)),
               *(sample(" ".join(text(rng))) for _ in range(50)), sample(" ".join(base))]
    keep = minhash_keep(samples)
    assert keep[:3] == [True, False, True] and all(keep[3:-1]) and keep[-1] is False
    assert minhash_keep(samples) == keep  # fixed seeds: the same answer every run


def test_minhash_short_texts_compare_whole():
    samples = [sample("yes"), sample("yes"), sample("no"), sample("")]
    assert minhash_keep(samples) == [True, False, True, True]


def write(folder, name, rows):
    (folder / f"{name}.json").write_text(json.dumps(rows))


def test_loader_reports_removed_rows_per_dataset(sft_config, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    rows = [{"instruction": f"q{i % 7}", "output": f"a{i % 7}"} for i in range(20)]  # 7 distinct
    write(data, "one", rows)
    write(data, "two", rows[:5])  # the same as rows of `one`: each dataset is deduplicated on its own
    (data / "dataset_info.json").write_text(json.dumps({"one": {"file_name": "one.json"}, "two": {"file_name": "two.json"}}))
    cfg = load_config(sft_config(dataset="one,two", dataset_dir=str(data)))
    tokenizer = load_tokenizer(cfg.model)
    template = resolve_template(cfg.data.template, tokenizer)
    template.fix_tokenizer(tokenizer)
    plain, plain_report = prepare("one,two", cfg, tokenizer, template)
    exact = load_config(sft_config(dataset="one,two", dataset_dir=str(data), dedup="exact"))
    data_, report = prepare("one,two", exact, tokenizer, template)  # a new cache key: not the plain entry
    assert len(plain) == 25 and len(data_) == 12
    assert report.deduplicated == {"one": 13, "two": 0} and report.kept == {"one": 7, "two": 5}
    assert "  13 duplicate row(s) removed (dedup: exact)" in report.lines()
    assert "one: 7 of 20 rows kept" in report.lines()
    assert not plain_report.deduplicated


def test_unknown_method_is_refused():
    from lathe.data.report import DataReport
    from lathe.errors import LatheError

    with pytest.raises(LatheError, match="exact, minhash"):
        dedup.deduplicate([sample("a")], "fuzzy", "d", DataReport())
