"""Canonical samples -> the token ids of the run's stage, counting (and dropping) samples with nothing to learn."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from ..registry import STAGES
from .packing import packing_enabled
from .processors import SAMPLE_COLUMNS, sample_features
from .report import DataReport, count_table_tokens
from .table import encode_in_process
from .templates.tokenize import tokenizer_threads

if TYPE_CHECKING:
    from datasets import Dataset

    from ..config import RunConfig


def workers(cfg: "RunConfig", n: int) -> int | None:
    """Worker processes for `n` samples: `preprocessing_num_workers` when it is worth a pool, else None (in process)."""
    asked = cfg.data.preprocessing_num_workers
    return asked if asked and asked > 1 and n >= 2 * asked else None


def tokenize_samples(samples: list[dict[str, Any]], cfg: "RunConfig", tokenizer, template, report: DataReport,
                     keep_meta: bool = False) -> "Dataset":
    """Samples -> input_ids / attention_mask / labels for the run's stage; drops (and counts) samples
    with nothing to learn.

    `keep_meta` keeps the `_truncated` column for previews. In this process the batches are
    tokenized with every core of the Rust tokenizer (`table.encode_in_process`); with
    `preprocessing_num_workers`, `datasets.map` spreads them over worker processes.
    """
    from datasets import Dataset
    from datasets.fingerprint import generate_random_fingerprint

    processor = STAGES[cfg.finetuning.stage].processor
    function, kwargs = processor.encode, processor.kwargs(cfg, tokenizer, template)
    batch_size = cfg.data.preprocessing_batch_size
    processes = workers(cfg, len(samples)) if processor.parallel else None
    if processes is None:
        with tokenizer_threads():
            dataset = encode_in_process(samples, SAMPLE_COLUMNS, function, kwargs, batch_size)
    else:
        dataset = Dataset.from_list(samples, features=sample_features()).map(
            function, batched=True, batch_size=batch_size, num_proc=processes, remove_columns=list(SAMPLE_COLUMNS),
            fn_kwargs=kwargs, desc="Tokenizing",
            # lathe caches the result under its own key (tokenized_cache.py); a fresh fingerprint spares
            # datasets from pickling the template and tokenizer to hash them.
            new_fingerprint=generate_random_fingerprint(),
        )
    meta = dataset.select_columns(["_drop", "_truncated"]).with_format("arrow")[:]  # not row by row
    report.dropped.update(Counter(r for r in meta["_drop"].to_pylist() if r))
    report.truncated += meta["_truncated"].to_pylist().count(True)
    if report.dropped:
        dataset = dataset.filter(lambda drops: [not d for d in drops], input_columns="_drop", batched=True,
                                 desc="Dropping samples with nothing to learn")
    dataset = dataset.remove_columns(["_drop"] if keep_meta else ["_truncated", "_drop"])
    report.samples += len(dataset)
    if processor.packs and packing_enabled(cfg):  # packed while tokenizing
        report.packed_rows = len(dataset)
    count_table_tokens(dataset.with_format("arrow")[:], report)
    return dataset
