"""Large data sets: sharded tokenization in worker processes, resuming after a kill, and the worker default."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import datasets
import pytest

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.data import encode, loader
from lathe.data import tokenized_cache as cache
from lathe.data.encode import preprocessing_workers, tokenize_samples
from lathe.data.loader import prepare
from lathe.data.mixing import load_mixed_samples
from lathe.data.report import DataReport
from lathe.data.templates import resolve_template
from lathe.model.load import load_tokenizer

ROWS = 3000
SHARD = 500


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(encode, "SHARD_ROWS", SHARD)
    datasets.disable_progress_bars()


def write_rows(folder: Path, rows: int = ROWS) -> Path:
    """Distinct alpaca rows, some with an empty answer (skipped) and some too long (truncated)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "big.jsonl", "w") as f:
        for i in range(rows):
            output = "" if i % 997 == 0 else " ".join(f"w{i * 7 + k}" for k in range(3 + i % 40 if i % 501 else 200))
            f.write(json.dumps({"instruction": f"question {i}: how much is {i} + {i % 13}?", "input": "", "output": output})
                    + "\n")
    (folder / "dataset_info.json").write_text(json.dumps({"big": {"file_name": "big.jsonl"}}))
    return folder


def setup(cfg):
    tokenizer = load_tokenizer(cfg.model)
    template = resolve_template(cfg.data.template, tokenizer)
    template.fix_tokenizer(tokenizer)
    return tokenizer, template


def config(sft_config, data: Path, **overrides):
    return load_config(sft_config(dataset="big", dataset_dir=str(data), cutoff_len=64, **overrides))


def in_memory(cfg):
    """The data and report of the in-process path (one table in memory), to compare the sharded one with."""
    tokenizer, template = setup(cfg)
    report = DataReport()
    data = tokenize_samples(load_mixed_samples("big", cfg, report), cfg, tokenizer, template, report)
    return data, report


def table(data):
    return data.with_format("arrow")[:]


def test_worker_processes_give_the_in_process_data_and_report(sft_config, tmp_path):
    data = write_rows(tmp_path / "d")
    cfg = config(sft_config, data, preprocessing_num_workers=2)
    expected, expected_report = in_memory(cfg)
    assert expected_report.skipped and expected_report.truncated  # the data exercises both counts
    tokenizer, template = setup(cfg)
    got, report = prepare("big", cfg, tokenizer, template)
    assert table(got).equals(table(expected)) and got.features == expected.features
    assert report.to_dict() == expected_report.to_dict()
    # stored as datasets' own save_to_disk folder: one file per shard, renamed, never copied
    entry = next(p for p in cache.cache_dir().iterdir() if p.is_dir() and not p.name.endswith(cache.SHARDS_SUFFIX))
    assert len(list((entry / "data").glob("data-*.arrow"))) == ROWS // SHARD
    assert not list(cache.cache_dir().glob(f"*{cache.SHARDS_SUFFIX}"))  # the work folder is gone once done


def test_one_worker_shards_in_this_process(sft_config, tmp_path, monkeypatch):
    data = write_rows(tmp_path / "d", rows=1200)
    cfg = config(sft_config, data, preprocessing_num_workers=1)
    expected, _ = in_memory(cfg)
    monkeypatch.setattr(encode, "ProcessPoolExecutor", None)  # any pool would fail
    tokenizer, template = setup(cfg)
    got, report = prepare("big", cfg, tokenizer, template)
    assert table(got).equals(table(expected)) and report.samples == len(expected)


def test_an_interrupted_run_resumes_from_its_finished_shards(sft_config, tmp_path, monkeypatch):
    data = write_rows(tmp_path / "d")
    cfg = config(sft_config, data, preprocessing_num_workers=1)
    tokenizer, template = setup(cfg)
    real = encode._encode_shard
    done: list[int] = []

    def dies_after_three(index: int) -> int:
        if len(done) == 3:
            raise KeyboardInterrupt  # as a Ctrl-C or a kill would stop it: nothing after this shard is written
        done.append(index)
        return real(index)

    monkeypatch.setattr(encode, "_encode_shard", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare("big", cfg, tokenizer, template)
    assert done == [0, 1, 2]
    work = next(cache.cache_dir().glob(f"*{cache.SHARDS_SUFFIX}"))
    assert sorted(p.name for p in work.glob("shard-*.json")) == [f"shard-{i:06d}.json" for i in range(3)]

    resumed: list[int] = []
    monkeypatch.setattr(encode, "_encode_shard", lambda index: resumed.append(index) or real(index))
    got, report = prepare("big", cfg, tokenizer, template)
    assert resumed == [3, 4, 5]  # only what the first run had not finished
    expected, expected_report = in_memory(cfg)
    assert table(got).equals(table(expected)) and report.to_dict() == expected_report.to_dict()


def test_dropped_samples_are_counted_and_left_out_of_the_shard():
    import pyarrow as pa

    out = pa.table({"input_ids": [[1, 2], [3], [4, 5, 6]], "labels": [[-100, 2], [-100], [4, -100, 6]],
                    "_truncated": [False, True, True], "_drop": ["", "no learned token left", ""]})
    kept, counts = encode.kept_and_counts(out)
    assert kept.column_names == ["input_ids", "labels"] and kept.column("input_ids").to_pylist() == [[1, 2], [4, 5, 6]]
    assert counts == {"dropped": {"no learned token left": 1}, "truncated": 2, "samples": 2, "tokens": 5,
                      "learned_tokens": 3}


def test_a_changed_plan_starts_over():
    """Shards made with another shard size under the same key are never mixed in."""
    import pyarrow as pa

    store = cache.ShardStore("k", shard_rows=10)
    store.write_samples([[{"messages": [], "system": "", "tools": "", "chosen": [], "rejected": [], "kto_tag": None}] * 25],
                        DataReport())
    store.write(0, pa.table({"x": [1]}), {"samples": 1})
    again = cache.ShardStore("k", shard_rows=10)
    assert again.has_samples and again.samples == 25 and again.count == 3 and again.done(0)
    assert len(again.sample_columns(2)["messages"]) == 5
    other = cache.ShardStore("k", shard_rows=20)
    assert not other.has_samples and not other.done(0)


@pytest.mark.parametrize("dedup_method", [None, "exact"])
def test_large_json_lines_are_read_row_by_row(sft_config, tmp_path, monkeypatch, dedup_method):
    """Past LAZY_MIN_BYTES, a JSON Lines file is converted a chunk at a time into the store: the same
    samples, tokens and report as reading it whole."""
    from lathe.data import dedup

    data = write_rows(tmp_path / "d", rows=1500)
    with open(data / "big.jsonl", "a") as f:  # duplicates, and a row that lacks a key others have
        f.write(json.dumps({"instruction": "question 5: how much is 5 + 5?", "input": "", "output": "w35 w36 w37 w38 w39 "
                            "w40 w41 w42"}) + "\n")
        f.write(json.dumps({"instruction": "no input key", "output": "fine"}) + "\n")
    monkeypatch.setattr(dedup, "dedup_method", lambda cfg: dedup_method)
    cfg = config(sft_config, data, preprocessing_num_workers=1)
    tokenizer, template = setup(cfg)
    whole, whole_report = prepare("big", cfg, tokenizer, template)
    monkeypatch.setattr(loader, "LAZY_MIN_BYTES", 0)
    monkeypatch.setattr(loader, "CHUNK", 700)
    monkeypatch.setattr(loader, "load_mixed_samples", None)  # would fail if called
    lazy, lazy_report = prepare("big", load_config(sft_config(dataset="big", dataset_dir=str(data), cutoff_len=64,
                                                               overwrite_cache=True)), tokenizer, template)
    assert table(lazy).equals(table(whole))
    assert lazy_report.to_dict() == whole_report.to_dict()
    assert lazy_report.deduplicated == ({"big": 1} if dedup_method else {})


_REAL_SHARD = encode._encode_shard


def _slow_shard(index: int) -> int:
    """A shard that takes long enough for the test to kill a worker between shards (module level: pickled by name)."""
    time.sleep(0.3)
    return _REAL_SHARD(index)


def test_killing_a_worker_stops_the_run_and_a_rerun_resumes(sft_config, tmp_path, monkeypatch):
    """kill -9 of a worker process: the run stops with a message (no hang), finished shards survive it.

    The run stays in the main thread and a watcher thread kills the worker: a fork from another thread would
    drop the main thread's state in the child, and with it the objects libraries keep there (PyAV's video
    reformatter, left by the media tests, hangs the child in its destructor)."""
    import threading

    import psutil

    data = write_rows(tmp_path / "d")
    cfg = config(sft_config, data, preprocessing_num_workers=2)
    tokenizer, template = setup(cfg)
    monkeypatch.setattr(encode, "_encode_shard", _slow_shard)
    killed: list[int] = []
    stop = threading.Event()

    def kill_a_worker() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not stop.is_set():
            workers = psutil.Process().children()
            if list(cache.cache_dir().glob(f"*{cache.SHARDS_SUFFIX}/shard-*.json")) and workers:
                killed.append(workers[0].pid)
                os.kill(killed[0], signal.SIGKILL)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_a_worker)
    watcher.start()
    try:
        with pytest.raises(LatheError) as failure:
            prepare("big", cfg, tokenizer, template)
    finally:
        stop.set()
        watcher.join(60)
    assert killed
    assert "a tokenizing worker process died" in str(failure.value) and "resumes" in str(failure.value)
    finished = {int(p.stem.split("-")[1]) for p in cache.cache_dir().glob(f"*{cache.SHARDS_SUFFIX}/shard-*.json")}
    assert 0 < len(finished) < ROWS // SHARD

    redone: list[int] = []
    monkeypatch.setattr(encode, "_encode_shard", lambda index: redone.append(index) or _REAL_SHARD(index))
    one = config(sft_config, data, preprocessing_num_workers=1)  # the worker count is not part of the cache key
    got, _ = prepare("big", one, tokenizer, template)
    assert sorted(redone) == sorted(set(range(ROWS // SHARD)) - finished)
    expected, _ = in_memory(cfg)
    assert table(got).equals(table(expected))


def test_worker_default_follows_the_cores_and_the_data_size(sft_config, monkeypatch):
    monkeypatch.setattr(encode, "available_cores", lambda: 8)
    unset = load_config(sft_config())
    assert preprocessing_workers(unset, encode.AUTO_WORKERS_MIN_SAMPLES - 1) == 1
    assert preprocessing_workers(unset, encode.AUTO_WORKERS_MIN_SAMPLES) == 8
    assert preprocessing_workers(unset, 3 * SHARD) == 1  # small data: in this process
    three = load_config(sft_config(preprocessing_num_workers=3))
    assert preprocessing_workers(three, 100 * SHARD) == 3
    assert preprocessing_workers(three, 2 * SHARD) == 2  # no more workers than shards
    assert preprocessing_workers(three, 10) == 1


def test_small_data_keeps_the_in_memory_path(sft_config, monkeypatch):
    cfg = load_config(sft_config(preprocessing_num_workers=2))
    monkeypatch.setattr(encode, "tokenize_in_shards", None)  # would fail if called
    tokenizer, template = setup(cfg)
    data, report = prepare(cfg.data.dataset, cfg, tokenizer, template)
    assert len(data) == report.samples > 0


def test_streaming_from_tokenized_path(sft_config, tmp_path, monkeypatch):
    """`tokenized_path` + `streaming`: tokenized once (in shards), then training reads a stream of the shards."""
    data = write_rows(tmp_path / "d", rows=1200)
    stored = tmp_path / "tokenized"
    cfg = config(sft_config, data, preprocessing_num_workers=2, tokenized_path=str(stored), streaming=True,
                 buffer_size=64, max_steps=5)
    tokenizer, template = setup(cfg)
    bundle = loader.get_dataset(cfg, tokenizer, template)
    assert bundle.streaming and not hasattr(bundle.train, "__len__")
    expected, expected_report = in_memory(cfg)
    rows = list(bundle.train)
    assert sorted(tuple(r["input_ids"]) for r in rows) == sorted(tuple(r) for r in expected["input_ids"])
    assert [tuple(r["input_ids"]) for r in rows[:50]] != [tuple(r) for r in expected["input_ids"][:50]]  # shuffled
    assert bundle.report.to_dict() == expected_report.to_dict()

    monkeypatch.setattr(loader, "prepare", None)  # the second run only reads
    again = loader.get_dataset(cfg, tokenizer, template)
    assert sum(1 for _ in again.train) == len(expected)


@pytest.mark.parametrize(("stage", "name"), [("dpo", "lathe_pairs"), ("kto", "lathe_feedback")])
def test_other_stages_shard_alike(sft_config, monkeypatch, stage, name):
    """Pairwise and feedback processors tokenize samples independently too: the shards give the same data."""
    monkeypatch.setattr(encode, "SHARD_ROWS", 40)
    cfg = load_config(sft_config(stage=stage, dataset=name, cutoff_len=48, preprocessing_num_workers=2))
    tokenizer, template = setup(cfg)
    report = DataReport()
    expected = tokenize_samples(load_mixed_samples(name, cfg, report), cfg, tokenizer, template, report)
    got, got_report = prepare(name, cfg, tokenizer, template)
    assert table(got).equals(table(expected)) and got.features == expected.features
    assert got_report.to_dict() == report.to_dict()


def test_training_streams_shards_while_a_background_process_tokenizes(sft_config, tmp_path, monkeypatch):
    """`tokenize_in_background`: the stream hands out the first shard while later ones are still being tokenized,
    then every sample in shard order; `tokenized_path` ends complete, with the in-memory path's report."""
    data = write_rows(tmp_path / "d", rows=1200)  # 3 shards of 500
    stored = tmp_path / "tokenized"
    cfg = config(sft_config, data, tokenized_path=str(stored), streaming=True, buffer_size=1, max_steps=5,
                 tokenize_in_background=True)
    encode_shard = encode._encode_shard

    def slowly(index: int) -> int:  # (runs in the forked tokenizing process)
        time.sleep(1.0)
        return encode_shard(index)

    monkeypatch.setattr(encode, "_encode_shard", slowly)
    tokenizer, template = setup(cfg)
    bundle = loader.get_dataset(cfg, tokenizer, template)
    assert bundle.streaming and not (stored / cache.REPORT_FILE).exists()  # training may start: shard 0 is done
    rows = list(bundle.train)
    expected, expected_report = in_memory(cfg)
    assert [r["input_ids"] for r in rows] == [list(r) for r in expected["input_ids"]]  # buffer of 1: in order
    deadline = time.time() + 30
    while not (stored / cache.REPORT_FILE).exists() and time.time() < deadline:
        time.sleep(0.1)
    assert bundle.report.lines() == expected_report.lines()

    monkeypatch.setattr(loader, "prepare", None)  # the next run reads tokenized_path as any
    again = loader.get_dataset(cfg, tokenizer, template)
    assert sum(1 for _ in again.train) == len(expected)


def test_background_tokenizing_needs_a_stream_of_tokenized_path(sft_config, tmp_path):
    data = write_rows(tmp_path / "d", rows=10)
    with pytest.raises(LatheError, match="streaming: true"):
        config(sft_config, data, tokenize_in_background=True)
    with pytest.raises(LatheError, match="packing"):
        config(sft_config, data, tokenize_in_background=True, streaming=True, max_steps=2, stage="pt",
               tokenized_path=str(tmp_path / "t"))
