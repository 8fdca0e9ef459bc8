"""Streaming (`streaming: true`): rows are read, converted, tokenized and counted while training consumes them;
with `tokenized_path`, training streams the tokenized shards instead (`stream_tokenized`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import LatheError
from ..registry import STAGES
from .dataset_info import get_dataset_attrs
from .formats import ConversionResult, RowError, get_format
from .mixing import eval_names, mix
from .processors import SAMPLE_COLUMNS, sample_features, sample_row
from .readers import entry_token, read_rows
from .report import DataReport, count_tokens

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)


def _stream_samples(attr, cfg: "RunConfig"):
    """Canonical samples of one dataset, read and converted while training consumes them.

    A bad row is yielded with `_skip` set (and empty content) so the filter after this
    generator, which runs in the training process, can count it.
    """
    d = cfg.data
    rows = read_rows(attr, d.dataset_dir, seed=cfg.training.seed, streaming=True, token=entry_token(attr, cfg.model))
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


def stream_samples(names: str, cfg: "RunConfig", tokenizer, template, report: DataReport):
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
    for attr in get_dataset_attrs(names, d.dataset_dir, d.media_dir):
        result = ConversionResult(name=attr.name, num_rows=0)
        report.stream_results.append(result)
        part = IterableDataset.from_generator(_stream_samples, features=features, gen_kwargs={"attr": attr, "cfg": cfg})
        # A closure, not fn_kwargs: datasets copies fn_kwargs when it copies the stream, and the
        # counts must land in the objects the report holds.
        part = part.filter(lambda row, result=result: _count_row(row, result))
        part = part.remove_columns(["_skip", "_detail", "_index"])
        parts.append(part)
    samples = mix(parts, cfg)
    processor = STAGES[cfg.finetuning.stage].processor  # pt packs blocks within each batch of the stream
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
    count_tokens(row, report)
    return True


def stream_datasets(cfg: "RunConfig", tokenizer, template):
    """The (train, eval, report) of a streaming run; the report fills as training reads the stream."""
    d = cfg.data
    report = DataReport()
    train = stream_samples(d.dataset, cfg, tokenizer, template, report) if d.dataset else None
    evaluation = None
    if d.eval_dataset:
        evaluation = {name: stream_samples(name, cfg, tokenizer, template, DataReport()) for name in eval_names(cfg)}
        if not d.eval_on_each_dataset:
            evaluation = evaluation[d.eval_dataset]
    elif train is not None and d.val_size >= 1:
        evaluation, train = train.take(int(d.val_size)), train.skip(int(d.val_size))
    logger.info("data: streaming %s; rows are read, checked and counted while training runs", d.dataset)
    return train, evaluation, report


def stream_tokenized(folder, cfg: "RunConfig"):
    """(stream, report) of data tokenized up front (a `tokenized_path` folder): training reads its Arrow files
    as it goes, memory-mapped, shuffled through a `buffer_size` buffer (and the order of the files), and
    nothing is tokenized again. Its report is the one saved with the data, complete from the start."""
    from .tokenized_cache import load_tokenized

    dataset, report = load_tokenized(folder)
    shards = max(1, len(dataset.cache_files))
    stream = dataset.to_iterable_dataset(num_shards=shards)
    return stream.shuffle(seed=cfg.training.seed, buffer_size=cfg.data.buffer_size), DataReport.from_dict(report)
