"""Canonical samples -> the token ids of the run's stage, counting (and dropping) samples with nothing to learn."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import LatheError
from ..registry import STAGES
from .packing import packing_enabled
from .processors import SAMPLE_COLUMNS
from .report import DataReport, count_table_tokens
from .table import arrow_table, encode_in_process
from .templates.tokenize import tokenizer_threads, tokenizer_threads_off
from .tokenized_cache import ShardStore

if TYPE_CHECKING:
    from datasets import Dataset

    from ..config import RunConfig

logger = logging.getLogger(__name__)


# Below this many samples the data stays in this process, whose Rust tokenizer already uses every core; above it
# the workers' costs (a fork each, a shard file per 10,000 samples: about a second in all) are under 3% of the
# work. benchmarks/tokenize_million.py on 2 shared cores: 2 processes took 0.64x the time of 1 for 200,000 and
# 1,000,000 rows (benchmarks/results/tokenize_million*.md); a clean measurement of the crossover is still to do.
AUTO_WORKERS_MIN_SAMPLES = 50_000
# Samples per shard of the sharded path: its tokens (~13 bytes each) are what a worker holds at once, and a
# killed run loses at most one shard per worker.
SHARD_ROWS = 10_000


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def preprocessing_workers(cfg: "RunConfig", n: int) -> int:
    """The effective `preprocessing_num_workers` for `n` samples: every step that spreads preprocessing over
    processes asks here.

    Unset: the cores available when `n` is large enough to pay for processes, else 1 (in this process). Never
    more than there are shards of `SHARD_ROWS` samples, since a worker takes a whole shard.
    """
    asked = cfg.data.preprocessing_num_workers
    if asked is None:
        asked = available_cores() if n >= AUTO_WORKERS_MIN_SAMPLES else 1
    return max(1, min(asked, -(-n // SHARD_ROWS)))


def workers(cfg: "RunConfig", n: int) -> int | None:
    """`num_proc` for a `datasets.map` over `n` rows: `preprocessing_workers`, or None for one (in process)."""
    processes = preprocessing_workers(cfg, n)
    return processes if processes > 1 else None


def sharded(cfg: "RunConfig", n: int) -> bool:
    """Whether `n` samples are tokenized shard by shard (`tokenize_in_shards`): when worker processes are
    wanted, or the data is too large to hold its tokens in memory at once. Processors that pack across
    samples (pt) see the whole data set in one process."""
    processor = STAGES[cfg.finetuning.stage].processor
    return processor.parallel and (preprocessing_workers(cfg, n) > 1 or n > SHARD_ROWS)


def stage_encoder(cfg: "RunConfig", tokenizer, template, media=None) -> tuple[Any, dict[str, Any]]:
    """The batch function that tokenizes for the run's stage, and its keyword arguments; with `media` (a
    `media.encode.MediaContext`) the samples' media placeholders are expanded first."""
    processor = STAGES[cfg.finetuning.stage].processor
    function, kwargs = processor.encode, processor.kwargs(cfg, tokenizer, template)
    if media is None:
        return function, kwargs
    from .media.encode import encode_with_media

    stage = STAGES[cfg.finetuning.stage]
    takes = ", ".join(name for name in STAGES if STAGES[name].media)
    refuse = None if stage.media else (f"`stage: {stage.name}` does not take images, video or audio yet; the data "
                                       f"has them. Stages that do: {takes}.")
    return encode_with_media, {"inner": function, "inner_kwargs": kwargs, "media": media, "refuse": refuse}


def tokenize_samples(samples: list[dict[str, Any]], cfg: "RunConfig", tokenizer, template, report: DataReport,
                     keep_meta: bool = False, media=None) -> "Dataset":
    """Samples -> input_ids / attention_mask / labels for the run's stage; drops (and counts) samples
    with nothing to learn.

    `keep_meta` keeps the `_truncated` column for previews, and adds `_index`: each row's position among
    `samples` (a packed stage's: its block's), which dropping samples would otherwise lose. In this process
    the batches are tokenized with every core of the Rust tokenizer (`table.encode_in_process`); large data and
    worker processes go through `tokenize_in_shards` instead.
    """
    processor = STAGES[cfg.finetuning.stage].processor
    function, kwargs = stage_encoder(cfg, tokenizer, template, media)
    with tokenizer_threads():
        dataset = encode_in_process(samples, SAMPLE_COLUMNS, function, kwargs, cfg.data.preprocessing_batch_size)
    meta = dataset.select_columns(["_drop", "_truncated"]).with_format("arrow")[:]  # not row by row
    report.dropped.update(Counter(r for r in meta["_drop"].to_pylist() if r))
    report.truncated += meta["_truncated"].to_pylist().count(True)
    if keep_meta:
        dataset = dataset.add_column("_index", list(range(len(dataset))))
    if report.dropped:
        dataset = dataset.filter(lambda drops: [not d for d in drops], input_columns="_drop", batched=True,
                                 desc="Dropping samples with nothing to learn")
    dataset = dataset.remove_columns(["_drop"] if keep_meta else ["_truncated", "_drop"])
    report.samples += len(dataset)
    if processor.packs and packing_enabled(cfg):  # packed while tokenizing
        report.packed_rows = len(dataset)
    count_table_tokens(dataset.with_format("arrow")[:], report)
    return dataset


# What a forked worker reads: set before the pool starts and inherited by fork, so neither the tokenizer
# nor the template is pickled (datasets.map pickles them, and every batch, there and back).
_JOB: dict[str, Any] = {}


def tokenize_in_shards(store: ShardStore, cfg: "RunConfig", tokenizer, template, report: DataReport,
                       media=None) -> None:
    """Tokenize the samples of `store` shard by shard, counting into `report`.

    Each shard (`SHARD_ROWS` contiguous samples, read from the store's samples file) is tokenized by
    lathe's in-process path, filtered of samples with nothing to learn and written to disk at once, so a
    process holds one shard's samples and tokens whatever the data's size. Shards an earlier, interrupted
    run finished are kept. With more than one worker the shards go to forked processes, each running the
    Rust tokenizer on one thread (its pool cannot be shared across a fork); alone, this process lends it
    every core.
    """
    from datasets.utils.tqdm import tqdm

    todo = [i for i in range(store.count) if not store.done(i)]
    if len(todo) < store.count:
        logger.info("data: resuming: %d of %d shards were tokenized by an earlier run", store.count - len(todo),
                    store.count)
    processes = min(preprocessing_workers(cfg, store.samples), max(len(todo), 1))
    if processes > 1 and "fork" not in multiprocessing.get_all_start_methods():
        logger.info("data: this platform cannot fork; tokenizing in one process")
        processes = 1
    function, kwargs = stage_encoder(cfg, tokenizer, template, media)
    _JOB.update(function=function, kwargs=kwargs, batch_size=cfg.data.preprocessing_batch_size, store=store)
    rows = sum(store.bounds(i)[1] - store.bounds(i)[0] for i in todo)
    desc = f"Tokenizing ({processes} process{'es' if processes > 1 else ''}, {store.count} shards)"
    try:
        with tqdm(total=rows, desc=desc, unit=" examples") as progress:
            for done in _run_shards(todo, processes):
                progress.update(done)
    finally:
        _JOB.clear()
    for index in range(store.count):
        counts = store.counts(index)
        report.dropped.update(counts["dropped"])
        for name in ("truncated", "samples", "tokens", "learned_tokens"):
            setattr(report, name, getattr(report, name) + counts[name])


def _run_shards(todo: list[int], processes: int) -> Iterator[int]:
    """Tokenize the shards `todo`, yielding each one's sample count as it is stored."""
    if processes == 1:
        with tokenizer_threads():
            for index in todo:
                yield _encode_shard(index)
        return
    # fork: the workers inherit the tokenizer and template. A killed worker breaks the pool instead of hanging it.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=worker_start) as pool:
        futures = [pool.submit(_encode_shard, index) for index in todo]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BrokenProcessPool as error:
            raise LatheError(
                "data: a tokenizing worker process died (killed, or out of memory); the shards it finished are kept, "
                "and running the same command again resumes from them. With little memory, lower "
                "`preprocessing_num_workers`."
            ) from error


def worker_start() -> None:
    """In each worker: one tokenizer thread (the workers share the cores), the collector kept off the objects
    inherited from the parent (a collection writes to every object it visits, which would copy their pages),
    and death with the parent (Linux), so a killed run leaves no worker behind."""
    tokenizer_threads_off()
    gc.freeze()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _encode_shard(index: int) -> int:
    """Tokenize shard `index` of the current job and store it with its counts; its sample count."""
    import pyarrow as pa

    job = _JOB
    store: ShardStore = job["store"]
    columns, size = store.sample_columns(index), job["batch_size"]
    n = len(columns["messages"])
    tables = [arrow_table(job["function"]({c: values[b:b + size] for c, values in columns.items()}, **job["kwargs"]))
              for b in range(0, n, size)]
    del columns
    # permissive: a batch whose lists are all empty (every sample dropped) joins the others' type
    table, counts = kept_and_counts(pa.concat_tables(tables, promote_options="permissive"))
    store.write(index, table, counts)
    return n


def kept_and_counts(table) -> tuple[Any, dict[str, Any]]:
    """A processor's output table without the samples it dropped and without its meta columns, and the
    report's counts of it (as `tokenize_samples` counts them)."""
    import pyarrow.compute as pc

    drops = table.column("_drop")
    dropped = Counter(r for r in drops.to_pylist() if r) if pc.any(pc.not_equal(drops, "")).as_py() else Counter()
    truncated = int(pc.sum(table.column("_truncated").cast("int64")).as_py() or 0)
    if dropped:
        table = table.filter(pc.equal(drops, ""))
    table = table.drop_columns(["_drop", "_truncated"])
    part = DataReport()
    count_table_tokens(table, part)
    counts = {"dropped": dict(dropped), "truncated": truncated, "samples": table.num_rows, "tokens": part.tokens,
              "learned_tokens": part.learned_tokens}
    return table, counts
