"""The worker's split of resident memory into anonymous and file-backed pages (issue 20).

A memory-mapped file's pages must count as file, a heap buffer's as anonymous, and a real
`lathe bench` run's record must carry the split beside its exact peak.
"""

from __future__ import annotations

import mmap
import sys
import time

import pytest

from lathe.efficiency import measure
from lathe.efficiency.bench import run_method, table

MiB = 1024**2
SIZE = 64 * MiB

linux_proc = pytest.mark.skipif(measure.resident_split() is None, reason="needs /proc/self/status with RssAnon")


@linux_proc
def test_split_adds_up_to_the_resident_size():
    now = measure.resident_split()
    assert now["anon"] + now["file"] + now["shmem"] == now["rss"] > 0


def _hold(split: measure.ResidentSplit) -> None:
    time.sleep(20 * split.interval)  # long enough for the sampler to see it


@linux_proc
def test_mapped_file_pages_count_as_file_and_heap_as_anon(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\1" * SIZE)
    split = measure.ResidentSplit()
    split.start()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert sum(mapped[i] for i in range(0, SIZE, mmap.PAGESIZE)) == SIZE // mmap.PAGESIZE  # fault every page in
        _hold(split)
        at_mapped = dict(split.at_peak)
    heap = bytearray(b"\2" * SIZE)  # anonymous, written
    _hold(split)
    r = split.result()
    del heap
    mapped_over_base = {k: at_mapped[k] - split.baseline[k] for k in ("anon", "file")}
    assert mapped_over_base["file"] > 0.9 * SIZE and mapped_over_base["anon"] < 0.25 * SIZE
    assert r["max_anon"] > 0.9 * SIZE
    assert r["peak_anon"] + r["peak_file"] + r["peak_shmem"] == r["sampled_peak"]
    assert split._thread is None  # result() stopped the sampler


def test_no_proc_gives_no_fields(monkeypatch):
    monkeypatch.setattr(measure, "resident_split", lambda: None)
    split = measure.ResidentSplit()
    split.start()
    assert split.result() == {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and the split need Linux /proc")
def test_worker_record_carries_the_split(sft_config, tmp_path):
    record = run_method("lora", str(sft_config(per_device_train_batch_size=2)), [], 2, tmp_path, perplexity=False)
    assert "error" not in record, record
    for key in ("peak_anon", "peak_file", "peak_shmem", "sampled_peak", "max_anon", "baseline_anon", "baseline_file"):
        assert isinstance(record[key], int), key
    assert record["peak_anon"] + record["peak_file"] + record["peak_shmem"] == record["sampled_peak"]
    # The exact high-water mark bounds the sampled peak from above (VmHWM and VmRSS move by whole pages).
    assert record["sampled_peak"] <= record["peak_memory"] + MiB
    assert record["max_anon"] >= record["peak_anon"]
    assert record["baseline_anon"] > 0 and record["baseline_file"] > 0
    md = table({"lora": record}, {}, 2)
    row = next(line for line in md.splitlines() if line.startswith("| lora "))
    anon, _ = row.split("|")[4].split("/")
    assert float(anon.replace(",", "")) == round(record["peak_anon"] / MiB)
    assert "anonymous part is what a memory limit must hold" in md


def test_table_without_split_fields():
    """Records from before the split (or from a system without /proc) still tabulate."""
    old = {"trainable": 10, "peak_memory": 5 * MiB, "memory_kind": "RSS over baseline", "tokens_per_second": 1.0,
           "train_loss": 1.0, "perplexity": 2.0}
    row = next(line for line in table({"lora": old, "full": {"error": "x"}}, {"lora": 8 * MiB}, 2).splitlines()
               if line.startswith("| lora "))
    assert [c.strip() for c in row.split("|")[2:6]] == ["10", "5", "-", "8"]
