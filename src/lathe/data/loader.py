"""The data path of a run: registry -> rows -> canonical samples -> token ids, with a report.

Every step counts what it drops and why; the report is logged and a run that would train on
nothing (no valid rows, or no learned token left after truncation) stops with the reasons.
Tokenized results are cached (see `cache.py`), so a second run with the same inputs only
reads them back.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LatheError
from . import cache
from .formats import ConversionResult, RowError, convert_rows, get_format
from .packing import pack_dataset
from .processors import PROCESSORS, SAMPLE_COLUMNS, sample_features, sample_row
from .processors.supervised import IGNORE_INDEX
from .readers import iter_rows, read_rows, select_rows
from .table import encode_in_process
from .registry import get_dataset_attrs
from .templates.tokenize import tokenizer_threads

if TYPE_CHECKING:
    from datasets import Dataset

    from ..config import RunConfig

logger = logging.getLogger(__name__)


@dataclass
class DataReport:
    """What happened to the data: rows read and kept per dataset, skips with reasons, token counts."""

    rows: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # dataset -> human report of skipped rows
    dropped: Counter = field(default_factory=Counter)  # reason -> samples dropped after tokenization
    samples: int = 0
    truncated: int = 0
    tokens: int = 0
    learned_tokens: int = 0
    packed_rows: int = 0
    stream_results: list = field(default_factory=list)  # streaming: per-dataset ConversionResult, filled as read

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dropped"] = dict(self.dropped)
        d.pop("stream_results")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataReport":
        return cls(**{**d, "dropped": Counter(d.get("dropped", {}))})

    def lines(self) -> list[str]:
        out = [r.report() for r in self.stream_results]
        for name, n in self.rows.items():
            out.append(f"{name}: {self.kept.get(name, 0)} of {n} rows kept")
            if name in self.skipped:
                out.append("  " + self.skipped[name])
        for reason, n in self.dropped.items():
            out.append(f"dropped {n} sample(s): {reason}")
        if self.tokens:
            out.append(
                f"{self.samples:,} samples, {self.tokens:,} tokens, {self.learned_tokens:,} learned "
                f"({100 * self.learned_tokens / self.tokens:.1f}%); {self.truncated} truncated to cutoff_len"
            )
        if self.packed_rows:
            out.append(f"packed into {self.packed_rows:,} rows of at most cutoff_len tokens")
        return out


@dataclass
class DatasetBundle:
    train: "Dataset | None"
    eval: "Dataset | None"
    report: DataReport
    streaming: bool = False


# ---------------------------------------------------------------- reading and mixing


def load_mixed_samples(names: str, cfg: "RunConfig", report: DataReport, attrs=None) -> list[dict[str, Any]]:
    """Read and convert each named dataset, then combine them by `mix_strategy`: canonical samples
    with every stored column (`sample_row`), in training order."""
    d = cfg.data
    parts = []
    for attr in attrs or get_dataset_attrs(names, d.dataset_dir):
        rows = read_rows(attr, d.dataset_dir, seed=cfg.training.seed)
        if d.max_samples is not None:
            rows = select_rows(rows, range(min(d.max_samples, len(rows))))
        result = convert_rows(attr, iter_rows(rows))
        report.rows[attr.name] = len(rows)
        report.kept[attr.name] = len(result.samples)
        if result.skipped:
            report.skipped[attr.name] = result.report()
        parts.append([sample_row(s) for s in result.samples])
    if len(parts) == 1 or d.mix_strategy == "concat":
        return [sample for part in parts for sample in part]
    # Interleaving depends only on the parts' lengths, so datasets interleaves (part, row) pairs.
    from datasets import Dataset

    order = mix([Dataset.from_dict({"part": [k] * len(part), "row": list(range(len(part)))})
                 for k, part in enumerate(parts)], cfg)
    return [parts[k][i] for k, i in zip(order["part"], order["row"])]


def mix(parts: list, cfg: "RunConfig"):
    """Combine datasets (in-memory or streamed) by `mix_strategy` and `interleave_probs`."""
    from datasets import concatenate_datasets, interleave_datasets

    d = cfg.data
    if len(parts) == 1 or d.mix_strategy == "concat":
        return concatenate_datasets(parts)
    probs = [float(p) for p in d.interleave_probs.split(",")] if d.interleave_probs else None
    stopping = "first_exhausted" if d.mix_strategy == "interleave_under" else "all_exhausted"
    return interleave_datasets(parts, probabilities=probs, seed=cfg.training.seed, stopping_strategy=stopping)


# ---------------------------------------------------------------- tokenizing


def _workers(cfg: "RunConfig", n: int) -> int | None:
    workers = cfg.data.preprocessing_num_workers
    return workers if workers and workers > 1 and n >= 2 * workers else None


def packing_enabled(cfg: "RunConfig") -> bool:
    """`packing` as given, else on for pre-training (where samples seeing each other is harmless) only."""
    d = cfg.data
    if d.neat_packing:
        return True
    return d.packing if d.packing is not None else cfg.finetuning.stage == "pt"


def tokenize_supervised(samples: list[dict[str, Any]], cfg: "RunConfig", tokenizer, template, report: DataReport,
                        keep_meta: bool = False) -> "Dataset":
    """Samples -> input_ids / attention_mask / labels for the run's stage; drops (and counts) samples
    with nothing to learn.

    `keep_meta` keeps the `_truncated` column for previews. In this process the batches are
    tokenized with every core of the Rust tokenizer (`table.encode_in_process`); with
    `preprocessing_num_workers`, `datasets.map` spreads them over worker processes.
    """
    from datasets import Dataset
    from datasets.fingerprint import generate_random_fingerprint

    processor = PROCESSORS[cfg.finetuning.stage]
    function, kwargs = processor.encode, processor.kwargs(cfg, tokenizer, template)
    batch_size = cfg.data.preprocessing_batch_size
    workers = _workers(cfg, len(samples)) if processor.parallel else None
    if workers is None:
        with tokenizer_threads():
            dataset = encode_in_process(samples, SAMPLE_COLUMNS, function, kwargs, batch_size)
    else:
        dataset = Dataset.from_list(samples, features=sample_features()).map(
            function, batched=True, batch_size=batch_size, num_proc=workers, remove_columns=list(SAMPLE_COLUMNS),
            fn_kwargs=kwargs, desc="Tokenizing",
            # lathe caches the result under its own key (data/cache.py); a fresh fingerprint spares
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
    if cfg.finetuning.stage == "pt" and packing_enabled(cfg):
        report.packed_rows = len(dataset)
    _count_table_tokens(dataset.with_format("arrow")[:], report)
    return dataset


def _count_table_tokens(table, report: DataReport) -> None:
    """`_count_tokens` for a whole Arrow table, without turning its rows into Python lists."""
    import pyarrow.compute as pc

    for column in table.column_names:
        if column.endswith("input_ids"):
            report.tokens += int(pc.sum(pc.list_value_length(table[column])).as_py() or 0)
        elif column.endswith("labels"):
            values = pc.list_flatten(table[column])
            report.learned_tokens += len(values) - int(pc.sum(pc.equal(values, IGNORE_INDEX).cast("int64")).as_py() or 0)


def _count_tokens(row: dict[str, Any], report: DataReport) -> None:
    """Add a tokenized row's tokens (every *input_ids column) and learned tokens (every *labels column)."""
    for column, values in row.items():
        if column.endswith("input_ids"):
            report.tokens += len(values)
        elif column.endswith("labels"):
            report.learned_tokens += sum(1 for t in values if t != IGNORE_INDEX)


def run_template(cfg: "RunConfig", tokenizer):
    """The run's template with the data options that shape it (default_system, enable_thinking, tool_format)."""
    from .templates import resolve_template

    d = cfg.data
    return resolve_template(
        d.template, tokenizer, default_system=d.default_system, enable_thinking=d.enable_thinking,
        tool_format=d.tool_format,
    )


def check_template_options(cfg: "RunConfig", template) -> None:
    if cfg.data.train_on_prompt and getattr(template, "efficient_eos", False):
        raise LatheError(
            f"`train_on_prompt` cannot be used with template `{template.name}`: its answers end without an eos "
            f"token, so learning the prompt would teach the model to keep writing the next turn."
        )


def prepare(names: str, cfg: "RunConfig", tokenizer, template) -> tuple["Dataset", DataReport]:
    """Tokenized (and, when asked, packed) data for `names`, from the cache when possible."""
    d = cfg.data
    attrs = get_dataset_attrs(names, d.dataset_dir)

    def build():
        report = DataReport()
        dataset = tokenize_supervised(load_mixed_samples(names, cfg, report, attrs), cfg, tokenizer, template, report)
        if packing_enabled(cfg) and cfg.finetuning.stage != "pt":  # pt packs while tokenizing
            dataset = pack_dataset(dataset.remove_columns(["attention_mask"]), d.cutoff_len, d.neat_packing,
                                   num_proc=_workers(cfg, len(dataset)))
            report.packed_rows = len(dataset)
        return dataset, report

    key = cache.dataset_key(names, attrs, cfg, tokenizer, template, cfg.finetuning.stage)
    start = time.time()
    dataset, report, hit = cache.cached(key, build, overwrite=d.overwrite_cache)
    how = "read from the cache" if hit else "preprocessed"
    logger.info("data: %s %s in %.1f s (%s)", names, how, time.time() - start, cache.cache_dir() / key)
    return dataset, DataReport.from_dict(report)


# ---------------------------------------------------------------- streaming


def _stream_samples(attr, cfg: "RunConfig"):
    """Canonical samples of one dataset, read and converted while training consumes them.

    A bad row is yielded with `_skip` set (and empty content) so the filter after this
    generator, which runs in the training process, can count it.
    """
    d = cfg.data
    rows = read_rows(attr, d.dataset_dir, seed=cfg.training.seed, streaming=True)
    if d.max_samples is not None:
        rows = rows.take(d.max_samples)
    convert = get_format(attr.formatting).convert
    index = 0
    try:
        for index, row in enumerate(rows):
            try:
                sample = convert(attr, row)
            except RowError as error:
                yield {**sample_row({}), "_skip": error.reason, "_detail": error.detail, "_index": index}
                continue
            yield {**sample_row(sample), "_skip": "", "_detail": "", "_index": index}
    except LatheError:
        raise
    except Exception as error:  # a broken file shows up only when the stream reaches it
        raise LatheError(f"dataset {attr.name!r}: reading failed after row {index} while streaming: {error}") from error


def _count_row(row: dict[str, Any], result: ConversionResult) -> bool:
    """Keep good rows; count every row once (a later epoch re-reads the stream from row 0)."""
    if row["_index"] >= result.num_rows:
        result.num_rows = row["_index"] + 1
        if row["_skip"]:
            result.add_skip(row["_index"], RowError(row["_skip"], row["_detail"]))
    return not row["_skip"]


def stream_supervised(names: str, cfg: "RunConfig", tokenizer, template, report: DataReport):
    """An `IterableDataset` of tokenized SFT samples, shuffled through a `buffer_size` buffer.

    Rows are counted into `report` as the stream is read (in this process), so the report
    is complete once training has consumed the data; its token figures count what training
    read, repeats across epochs included.
    """
    from datasets import IterableDataset, Value

    d = cfg.data
    features = sample_features()
    features.update({"_skip": Value("string"), "_detail": Value("string"), "_index": Value("int64")})
    parts = []
    for attr in get_dataset_attrs(names, d.dataset_dir):
        result = ConversionResult(name=attr.name, num_rows=0)
        report.stream_results.append(result)
        part = IterableDataset.from_generator(_stream_samples, features=features, gen_kwargs={"attr": attr, "cfg": cfg})
        # A closure, not fn_kwargs: datasets copies fn_kwargs when it copies the stream, and the
        # counts must land in the objects the report holds.
        part = part.filter(lambda row, result=result: _count_row(row, result))
        part = part.remove_columns(["_skip", "_detail", "_index"])
        parts.append(part)
    samples = mix(parts, cfg)
    processor = PROCESSORS[cfg.finetuning.stage]  # pt packs blocks within each batch of the stream
    function, kwargs = processor.encode, processor.kwargs(cfg, tokenizer, template)
    tokenized = samples.map(
        function, batched=True, batch_size=d.preprocessing_batch_size,
        remove_columns=list(SAMPLE_COLUMNS), fn_kwargs=kwargs,
    )
    tokenized = tokenized.filter(lambda row: _count_streamed(row, report))
    return tokenized.remove_columns(["_truncated", "_drop"]).shuffle(seed=cfg.training.seed, buffer_size=d.buffer_size)


def _count_streamed(row: dict[str, Any], report: DataReport) -> bool:
    if row["_drop"]:
        report.dropped[row["_drop"]] += 1
        return False
    report.samples += 1
    report.truncated += bool(row["_truncated"])
    _count_tokens(row, report)
    return True


# ---------------------------------------------------------------- the run's datasets


def get_dataset(cfg: "RunConfig", tokenizer, template) -> DatasetBundle:
    """Build the train (and eval) datasets of an SFT run and log the data report."""
    d = cfg.data
    check_template_options(cfg, template)
    stored = Path(d.tokenized_path) if d.tokenized_path else None
    train = evaluation = None
    report = DataReport()
    if d.streaming:
        return _get_streaming(cfg, tokenizer, template)
    if stored is not None and (stored / cache.REPORT_FILE).exists():
        train, saved = cache.load_tokenized(stored)
        report = DataReport.from_dict(saved)
        logger.info("data: tokenized data read from tokenized_path %s; `dataset` is not read again", stored)
    elif d.dataset:
        train, report = prepare(d.dataset, cfg, tokenizer, template)
        if stored is not None:
            cache.save_tokenized(stored, train, report)
            logger.info("data: tokenized data saved to tokenized_path %s", stored)
    if d.eval_dataset:
        evaluation, eval_report = prepare(d.eval_dataset, cfg, tokenizer, template)
        for line in eval_report.lines():
            logger.info("eval data: %s", line)
    elif train is not None and d.val_size > 0:
        size = int(d.val_size) if d.val_size >= 1 else d.val_size
        if (isinstance(size, int) and size >= len(train)) or len(train) < 2:
            raise LatheError(f"`val_size: {d.val_size}` leaves no training data out of {len(train)} samples.")
        split = train.train_test_split(test_size=size, seed=cfg.training.seed)
        train, evaluation = split["train"], split["test"]
    for line in report.lines():
        logger.info("data: %s", line)
    for name, data in (("training", train), ("evaluation", evaluation)):
        if data is not None and len(data) == 0:
            reasons = "; ".join(report.lines()) or "no rows"
            raise LatheError(f"No {name} sample has anything to learn ({reasons}). Check the dataset and cutoff_len.")
    return DatasetBundle(train, evaluation, report)


def _get_streaming(cfg: "RunConfig", tokenizer, template) -> DatasetBundle:
    d = cfg.data
    report = DataReport()
    train = stream_supervised(d.dataset, cfg, tokenizer, template, report) if d.dataset else None
    evaluation = None
    if d.eval_dataset:
        evaluation = stream_supervised(d.eval_dataset, cfg, tokenizer, template, DataReport())
    elif train is not None and d.val_size >= 1:
        evaluation, train = train.take(int(d.val_size)), train.skip(int(d.val_size))
    logger.info("data: streaming %s; rows are read, checked and counted while training runs", d.dataset)
    return DatasetBundle(train, evaluation, report, streaming=True)
