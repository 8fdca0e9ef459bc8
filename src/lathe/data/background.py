"""Training before the data is all tokenized (`tokenize_in_background`, with `streaming` and an empty
`tokenized_path`).

Tokenizing millions of rows takes a long time. With this option, training does not wait for all of it.
The samples are read into the cache's shard store first, as `loader.prepare` reads them. Then a forked
process tokenizes them shard by shard (`encode.tokenize_in_shards`: resumable, memory-bounded). Training
streams the shards in order, waiting for each one to be done. When the last shard is done, the
background process makes `tokenized_path` a complete folder: it links the shards in, so nothing is
copied. Later runs read that folder as any `tokenized_path`.

The shards are read in their order (shuffled through `buffer_size`), never in an order chosen by
timing. So a run killed and started again sees the same stream: the Trainer skips the batches it had
trained on, and the background process tokenizes only the shards that are not done yet. One training
process only: under torchrun, every rank would start its own tokenizer on the same files.
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing
import os
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import LatheError
from ..process import inside_launcher, running
from . import encode
from . import tokenized_cache as cache
from .dataset_info import get_dataset_attrs
from .report import DataReport

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

FAILED_FILE = "background-failed.txt"  # in the shard store: the background process's traceback
POLL_SECONDS = 0.2  # how often the stream looks for the next shard


def stream_while_tokenizing(cfg: "RunConfig", tokenizer, template, stored: Path):
    """(stream, report): a stream of the shards of `cfg.data.dataset` as a background process tokenizes them.

    The report holds the reading's counts; the tokenization's replace them once `tokenized_path` is complete.
    """
    d = cfg.data
    if inside_launcher() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LatheError("`tokenize_in_background` runs with one training process: under torchrun every process "
                         "would tokenize the same files. Tokenize first (leave the option out), then train over "
                         "several processes from `tokenized_path`.")
    attrs = get_dataset_attrs(d.dataset, d.dataset_dir, d.media_dir)
    key = cache.dataset_key(d.dataset, attrs, cfg, tokenizer, template, cfg.finetuning.stage)
    if d.overwrite_cache:
        cache.ShardStore(key, encode.SHARD_ROWS).remove()
    store = cache.ShardStore(key, encode.SHARD_ROWS)
    (store.folder / FAILED_FILE).unlink(missing_ok=True)
    from .loader import read_into_store

    report = read_into_store(d.dataset, attrs, cfg, store)
    if store.samples == 0:
        raise LatheError(f"data: {d.dataset} has no samples to tokenize:\n  " + "\n  ".join(report.lines()))
    # the training process keeps the cores it needs: one tokenizing process unless asked for more
    tokenizing = replace(cfg, data=replace(d, preprocessing_num_workers=d.preprocessing_num_workers or 1))
    process = multiprocessing.get_context("fork").Process(
        target=_tokenize, args=(store, tokenizing, tokenizer, template, report.to_dict(), stored), daemon=False)
    process.start()
    logger.info("data: %s samples in %d shards; training starts on the first shard while process %d tokenizes the "
                "rest into tokenized_path %s", f"{store.samples:,}", store.count, process.pid, stored)
    shards = {"folder": str(store.folder), "stored": str(stored), "count": store.count, "pid": process.pid}
    atexit.register(_stop, process, shards)
    wait_for(0, shards["folder"], shards["stored"], process.pid)
    from datasets import IterableDataset

    features = _open_shard(0, shards["folder"], shards["stored"], store.count).features
    stream = IterableDataset.from_generator(read_shards, features=features, gen_kwargs=shards)
    stream = stream.shuffle(seed=cfg.training.seed, buffer_size=d.buffer_size)
    return stream, BackgroundReport.from_dict({**report.to_dict(), "stored": str(stored)})


@dataclass
class BackgroundReport(DataReport):
    """The run's data report: the reading's counts now, the tokenization's once `tokenized_path` is complete."""

    stored: str = ""

    def lines(self) -> list[str]:
        done = Path(self.stored) / cache.REPORT_FILE
        if done.is_file():
            return DataReport.from_dict(json.loads(done.read_text(encoding="utf-8"))).lines()
        return super().lines() + ["tokenizing still runs in the background: the tokenized counts join tokenized_path's "
                                  "report when it ends"]


def _tokenize(store: cache.ShardStore, cfg: "RunConfig", tokenizer, template, reading: dict[str, Any],
              stored: Path) -> None:
    """The background process: every shard not done, then `tokenized_path` from the shards (linked, not copied)."""
    encode.worker_start()
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # the training's progress bar owns the terminal
    try:
        report = DataReport.from_dict(reading)
        encode.tokenize_in_shards(store, cfg, tokenizer, template, report)
        store.link_into(stored, report)
    except BaseException:  # noqa: BLE001 - the training process reads it and stops with it
        (store.folder / FAILED_FILE).write_text(traceback.format_exc(), encoding="utf-8")
        raise


def _stop(process, shards: dict[str, Any]) -> None:
    """At exit: a training run that ended before the tokenizing did stops it (the shards done are kept)."""
    if process.is_alive():
        done = sum(_done(i, shards["folder"], shards["stored"]) for i in range(shards["count"]))
        logger.info("data: training ended before the background tokenizing did (%d of %d shards done); it stops now. "
                    "The finished shards are kept: the next run with this config resumes from them and completes "
                    "tokenized_path %s.", done, shards["count"], shards["stored"])
        process.kill()
    process.join()


def _done(index: int, folder: str, stored: str) -> bool:
    """Shard `index` is done: its counts are written beside it in the store, or `tokenized_path` is complete."""
    return cache.shard_done(Path(folder), index) or (Path(stored) / cache.REPORT_FILE).is_file()


def _open_shard(index: int, folder: str, stored: str, count: int):
    """Shard `index`, memory-mapped, from the store, or from `tokenized_path` once the store let it go."""
    from datasets import Dataset

    try:
        return Dataset.from_file(str(cache.shard_data_path(Path(folder), index)))
    except FileNotFoundError:
        return Dataset.from_file(str(cache.linked_shard(Path(stored), index, count)))


def wait_for(index: int, folder: str, stored: str, pid: int) -> None:
    """Return once shard `index` is done; fail with the background process's error if it stopped first."""
    while not _done(index, folder, stored):
        failed = Path(folder) / FAILED_FILE
        if failed.is_file() or not running(pid):
            if _done(index, folder, stored):  # it finished between the two looks
                return
            why = failed.read_text(encoding="utf-8").strip().splitlines()[-1] if failed.is_file() else "it was killed"
            raise LatheError(f"data: the background tokenizing process stopped before shard {index} ({why}). The "
                             f"shards it finished are kept: running the same command again resumes from them.")
        time.sleep(POLL_SECONDS)


def read_shards(folder: str, stored: str, count: int, pid: int) -> Iterator[dict[str, Any]]:
    """The rows of every shard in order, each shard read memory-mapped once it is done."""
    for index in range(count):
        wait_for(index, folder, stored, pid)
        yield from _open_shard(index, folder, stored, count)
