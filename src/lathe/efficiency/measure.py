"""One measured training run: the worker `lathe bench` starts once per method, in its own process.

    python -m lathe.efficiency.measure CONFIG [key=value ...] --result RESULT.json

Runs the same path as `lathe train` (load_config -> run_stage), then writes what it measured:
peak memory over the baseline, effective tokens/s, and the perplexity of the training samples
under the trained model (the LlamaFactory paper's Table 4 columns).

Why a process per method: peak memory is a property of a whole process. A second run in the
same process would inherit the first one's allocator pools and high-water mark.

Peak memory: on a GPU, `torch.cuda.max_memory_allocated` (what the tensors needed; the caching
allocator's reserve is not counted). On the CPU, the kernel's resident high-water mark
(VmHWM in /proc/self/status), reset after the imports through /proc/self/clear_refs, minus the
resident size at that moment: exact, with no sampling interval to miss a short peak. Where
/proc is not available, a thread samples the resident size every 5 ms instead.

Why the worker pins glibc's mmap threshold (`pin_malloc_threshold`): by default glibc raises
the threshold to the size of the largest block freed so far (up to 32 MiB), so after the first
step every activation tensor comes from the heap, and freed heap memory stays resident. On a
100M-parameter model that retained free memory was ~0.4 GB on top of ~0.1 GB of live
activations (docs/efficiency.md), and how much depends on the order of frees, not on the
method. Pinned, each large tensor is its own mapping, returned when freed, so the resident
peak follows the tensors' memory: the CPU counterpart of CUDA's max allocated, and the
quantity `lathe plan` estimates. `MALLOC_MMAP_THRESHOLD_=131072` does the same for `lathe train`.

What a memory limit must hold (`ResidentSplit`): the resident size counts file-backed pages (a
memory-mapped safetensors checkpoint, the shared libraries) beside anonymous ones (tensors, the
heap). File pages are clean and reclaimable: under a cgroup or container limit the kernel drops
them and reads them again, so only the anonymous part (and shared memory, which has no file to
go back to) must fit. A thread samples RssAnon / RssFile / RssShmem every 10 ms and keeps the
split at the highest resident size it saw (`peak_anon`, `peak_file`, `peak_shmem`, summing to
`sampled_peak`, which the exact VmHWM peak bounds from above) and the highest anonymous size on its
own (`max_anon`): all over the baseline's split (`baseline_anon`, ...), like `peak_memory`.
benchmarks/memory_limit.py checks them against the smallest cgroup limit a run survives.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)


M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


def pin_malloc_threshold(threshold: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold at its initial 128 KiB (see the module docstring); False where not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


SPLIT_FIELDS = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}


def resident_split() -> dict[str, int] | None:
    """This process's resident size and its anonymous / file-backed / shared-memory parts, in bytes.

    From /proc/self/status (cheap counters, unlike smaps_rollup, which walks every mapping);
    None where it lacks them (not Linux, or a kernel before 4.5).
    """
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                name = line.split(":", 1)[0]
                if name in SPLIT_FIELDS:
                    values[SPLIT_FIELDS[name]] = int(line.split()[1]) * 1024
    except OSError:
        return None
    return values if len(values) == len(SPLIT_FIELDS) else None


class ResidentSplit:
    """The resident set's anonymous / file / shmem split at its sampled peak, and the anonymous peak itself.

    Sampled by a thread every `interval` seconds (the kernel keeps no high-water mark per kind);
    see the module docstring for why the split matters. `result()` is {} where /proc lacks the fields.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.baseline: dict[str, int] | None = None
        self.at_peak: dict[str, int] | None = None
        self.max_anon = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _take(self) -> None:
        now = resident_split()
        if now is None:
            return
        if self.at_peak is None or now["rss"] > self.at_peak["rss"]:
            self.at_peak = now
        self.max_anon = max(self.max_anon, now["anon"])

    def start(self) -> None:
        self.baseline = resident_split()
        if self.baseline is None:
            return
        self._take()

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self._take()

        self._thread = threading.Thread(target=sample, name="resident-split", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._take()

    def result(self) -> dict[str, int]:
        """Bytes over the baseline: the split at the sampled peak, its sum, the anonymous peak; and the baseline."""
        self.stop()
        base, peak = self.baseline, self.at_peak
        if base is None or peak is None:
            return {}
        return {"peak_anon": peak["anon"] - base["anon"], "peak_file": peak["file"] - base["file"],
                "peak_shmem": peak["shmem"] - base["shmem"], "sampled_peak": peak["rss"] - base["rss"],
                "max_anon": self.max_anon - base["anon"], "baseline_anon": base["anon"],
                "baseline_file": base["file"], "baseline_shmem": base["shmem"]}


class PeakMemory:
    """Peak memory of this process above its level at `start()`, in bytes."""

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        self.baseline = 0
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        return "cuda max allocated" if self.cuda else "RSS over baseline"

    def start(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
            return
        if self._reset_hwm():
            self.baseline = _status_kib("VmRSS") * 1024
            return
        import psutil  # portable fallback: sample the resident size

        proc = psutil.Process()
        self.baseline = self._sampled = proc.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(0.005):
                self._sampled = max(self._sampled, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # 5: reset the peak resident set size (Linux >= 4.0)
        except OSError:
            return False
        return _status_kib("VmHWM") is not None

    def peak(self) -> int:
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() - self.baseline
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            return self._sampled - self.baseline
        return _status_kib("VmHWM") * 1024 - self.baseline


def _read_log(output_dir: Path) -> tuple[int, float | None, float | None]:
    """(tokens seen, training seconds, last logged loss) from the run's trainer_log.jsonl and train_results.json."""
    tokens, loss = 0, None
    log = output_dir / "trainer_log.jsonl"
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            tokens = record.get("total_tokens", tokens)
            loss = record.get("loss", loss)
    results = output_dir / "train_results.json"
    runtime = json.loads(results.read_text(encoding="utf-8")).get("train_runtime") if results.exists() else None
    return tokens, runtime, loss


def training_perplexity(config: str | None, overrides: list[str], output_dir: Path) -> float:
    """Perplexity of the configured training data under the model this run saved."""
    from ..config import load_config
    from ..evaluate.perplexity import run_perplexity

    saved = "adapter_name_or_path" if (output_dir / "adapter_config.json").exists() else "model_name_or_path"
    cfg = load_config(config, [*overrides, f"{saved}={output_dir}"], purpose="infer")
    return run_perplexity(cfg)["perplexity"]


def _import_run_modules(cfg) -> None:
    """Import what the run will import before the baseline is taken: module code is no part of a run's peak."""
    import importlib

    from ..registry import STAGES

    for name in ("datasets", "peft", "accelerate", "transformers", "transformers.trainer", "lathe.data.loader",
                 "lathe.model.load", "lathe.model.adapters", "lathe.train.optim", STAGES[cfg.finetuning.stage].run.__module__):
        importlib.import_module(name)
    if cfg.model.quantization_bit:
        importlib.import_module("lathe.model.quantize")


def measure(config: str | None, overrides: list[str], perplexity: bool = True) -> dict:
    """Train once as `lathe train` would and return the measured numbers."""
    from ..config import load_config
    from ..model.adapters import count_parameters
    from ..train import run_stage

    cfg = load_config(config, overrides)
    _import_run_modules(cfg)
    pinned = pin_malloc_threshold()
    meter, split = PeakMemory(), ResidentSplit()
    meter.start()
    split.start()
    start = time.perf_counter()
    try:
        result = run_stage(cfg)
    finally:
        split.stop()
    seconds = time.perf_counter() - start
    peak = meter.peak()
    out = Path(cfg.training.output_dir)
    tokens, runtime, loss = _read_log(out)
    trainable, total = count_parameters(result.model)
    record = {
        "peak_memory": peak, "memory_kind": meter.kind, "baseline_memory": meter.baseline, "malloc_pinned": pinned,
        "tokens": tokens, "train_runtime": runtime, "run_seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / runtime, 2) if runtime else None,
        "loss": loss, "train_loss": result.metrics.get("train_loss"),
        "trainable": trainable, "total_params": total,
        **split.result(),  # host memory split, also on a GPU run (where peak_memory is the device's)
    }
    del result
    if perplexity:
        ppl = training_perplexity(config, overrides, out)
        record["perplexity"] = ppl if math.isfinite(ppl) else None
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lathe.efficiency.measure", description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", help="training config (YAML/JSON); omit to give every key as key=value")
    parser.add_argument("overrides", nargs="*", help="key=value options")
    parser.add_argument("--result", required=True, help="JSON file to write the measurements to")
    parser.add_argument("--no-perplexity", action="store_true", help="skip scoring the training data after training")
    ns = parser.parse_args(argv)
    config, overrides = ns.config, list(ns.overrides)
    if config and "=" in config:
        config, overrides = None, [config, *overrides]
    from ..errors import LatheError
    from ..logs import setup_logging

    setup_logging()
    try:
        record = measure(config, overrides, perplexity=not ns.no_perplexity)
    except LatheError as e:
        print(f"lathe bench: error: {e}", file=sys.stderr)
        Path(ns.result).write_text(json.dumps({"error": str(e)}), encoding="utf-8")
        return 1
    Path(ns.result).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    from lathe.data.templates.tokenize import tokenizer_threads_off_by_default

    tokenizer_threads_off_by_default()
    sys.exit(main())
