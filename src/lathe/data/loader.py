"""The data path of a run: registry -> rows -> canonical samples -> token ids, with a report.

`get_dataset` is what a stage calls; the steps live beside it: `mixing.py` (read, convert,
combine), `encode.py` (tokenize for the stage), `streaming.py` (the same while training),
`report.py` (what was kept and dropped). A run that would train on nothing (no valid rows,
or no learned token left after truncation) stops with the reasons. Tokenized results are
cached (`tokenized_cache.py`), so a second run with the same inputs only reads them back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LatheError
from ..registry import STAGES
from . import dedup, encode
from . import tokenized_cache as cache
from .dataset_info import get_dataset_attrs
from .encode import tokenize_samples
from .formats import ConversionResult, RowError, convert_rows, get_format
from .mixing import eval_names, load_mixed_samples
from .packing import pack_dataset, packing_enabled
from .processors import sample_row
from .readers import lazy_json_lines
from .report import DataReport
from .streaming import stream_datasets, stream_tokenized

if TYPE_CHECKING:
    from datasets import Dataset

    from ..config import RunConfig

logger = logging.getLogger(__name__)


@dataclass
class DatasetBundle:
    """`eval` is one dataset, or with `eval_on_each_dataset` a dict eval dataset name -> dataset
    (the Hugging Face Trainer evaluates each on its own and logs `eval_<name>_loss`)."""

    train: "Dataset | None"
    eval: "Dataset | dict[str, Dataset] | None"
    report: DataReport
    streaming: bool = False


def run_template(cfg: "RunConfig", tokenizer):
    """The run's template with the data options that shape it (default_system, enable_thinking, tool_format,
    preserve_thinking, reasoning_effort). No `template` and a tokenizer without a chat template: the catalog's default for the
    model id, when it has one lathe knows."""
    from .templates import resolve_template

    d = cfg.data
    name = d.template or catalog_template(cfg.model.model_name_or_path, tokenizer)
    return resolve_template(
        name, tokenizer, default_system=d.default_system, enable_thinking=d.enable_thinking,
        tool_format=d.tool_format, preserve_thinking=d.preserve_thinking, reasoning_effort=d.reasoning_effort,
    )


def catalog_template(model_id: str | None, tokenizer) -> str | None:
    """The model catalog's default template for `model_id` when the tokenizer brings no chat template.

    A tokenizer with its own chat template keeps it (it is the format the model is served with); a model id
    the catalog lacks (a local folder included), or a template lathe has not registered yet, gives None, and
    `resolve_template` falls back as before.
    """
    if getattr(tokenizer, "chat_template", None):
        return None
    from ..model.catalog import for_model_id
    from .templates import list_templates

    entry = for_model_id(model_id)
    if entry is None or not entry.template:
        return None
    if entry.template not in list_templates():
        logger.warning("template: the catalog's default for `%s` is `%s`, which lathe has no template for yet; "
                       "set `template` to choose one.", model_id, entry.template)
        return None
    logger.info("template: `%s`, the catalog's default for `%s` (%s; its tokenizer has no chat template). "
                "Set `template` to choose another.", entry.template, model_id, entry.name)
    return entry.template


def warn_template_mismatch(cfg: "RunConfig", template, added: list[str]) -> None:
    """The template needed special tokens the model's tokenizer lacks: a format from another family.

    The run still works (the tokens are added and their rows learned), but the model has never
    seen them, so a wrong `template` costs quality quietly; say so, with the catalog's choice.
    """
    if not added or cfg.model.train_from_scratch:
        return
    from ..model.catalog import for_model_id

    entry = for_model_id(cfg.model.model_name_or_path)
    hint = (f" The catalog's template for {entry.name} is `{entry.template}`." if entry is not None and entry.template
            and entry.template != template.name else "")
    logger.warning("template `%s` needs %s, which the tokenizer of %s lacks: added as new, untrained tokens. "
                   "Is this the model's own format?%s", template.name, ", ".join(added[:5]) +
                   (f" and {len(added) - 5} more" if len(added) > 5 else ""), cfg.model.model_name_or_path, hint)


def check_template_options(cfg: "RunConfig", template) -> None:
    if cfg.data.train_on_prompt and getattr(template, "efficient_eos", False):
        raise LatheError(
            f"`train_on_prompt` cannot be used with template `{template.name}`: its answers end without an eos "
            f"token, so learning the prompt would teach the model to keep writing the next turn."
        )


def prepare(names: str, cfg: "RunConfig", tokenizer, template, media=None) -> tuple["Dataset", DataReport]:
    """Tokenized (and, when asked, packed) data for `names`, from the cache when possible.

    Large data (or `preprocessing_num_workers` above 1) is tokenized in shards (`encode.tokenize_in_shards`):
    the samples are written to the cache's work folder first (large JSON Lines files row by row, never
    whole, see `lazy_sources`), and each shard is tokenized and written as it finishes, so memory holds a
    shard, not the data set, and a run killed halfway resumes from the shards it finished.
    """
    d = cfg.data
    attrs = get_dataset_attrs(names, d.dataset_dir, d.media_dir)
    key = cache.dataset_key(names, attrs, cfg, tokenizer, template, cfg.finetuning.stage, media)
    processor = STAGES[cfg.finetuning.stage].processor
    pack = packing_enabled(cfg) and not processor.packs  # a processor that packs did it while tokenizing

    def build(folder: Path) -> None:
        report = DataReport()
        store = cache.ShardStore(key, encode.SHARD_ROWS)
        if store.has_samples:
            report = resumed_reading(store)
        elif (sources := lazy_sources(attrs, cfg)) is not None:
            store.write_samples(lazy_sample_chunks(sources, cfg, report), report)
        else:
            samples = load_samples(names, cfg, report, attrs)
            if not encode.sharded(cfg, len(samples)):
                finish(folder, tokenize_samples(samples, cfg, tokenizer, template, report, media=media), report)
                return
            store.write_samples([samples], report)
            del samples  # the store holds them now
        encode.tokenize_in_shards(store, cfg, tokenizer, template, report, media)
        if pack:
            finish(folder, store.dataset(), report)
        else:
            store.move_into(folder, report)  # renames the shards: the data is never gathered in memory

    def finish(folder: Path, dataset, report: DataReport) -> None:
        if pack:
            dataset = pack_dataset(dataset.remove_columns(["attention_mask"]), d.cutoff_len, d.neat_packing,
                                   num_proc=encode.workers(cfg, len(dataset)))
            report.packed_rows = len(dataset)
        cache.save_tokenized(folder, dataset, report)

    start = time.time()
    dataset, report, hit = cache.cached(key, build, overwrite=d.overwrite_cache)
    how = "read from the cache" if hit else "preprocessed"
    logger.info("data: %s %s in %.1f s (%s)", names, how, time.time() - start, cache.cache_dir() / key)
    return dataset, DataReport.from_dict(report)


def load_samples(names: str, cfg: "RunConfig", report: DataReport, attrs: list) -> list[dict[str, Any]]:
    """The canonical samples of `names`, read whole (deduplicated when `dedup` is set), counted into `report`."""
    if dedup.dedup_method(cfg):
        return dedup.load_deduplicated(names, cfg, report, attrs)
    return load_mixed_samples(names, cfg, report, attrs)


def resumed_reading(store: cache.ShardStore) -> DataReport:
    """The reading's report of a store an earlier, interrupted run filled with samples."""
    logger.info("data: resuming: %s samples were read by an earlier run", f"{store.samples:,}")
    return DataReport.from_dict(store.reading_report)


def read_into_store(names: str, attrs: list, cfg: "RunConfig", store: cache.ShardStore) -> DataReport:
    """Fill `store` with the samples of `names` (row by row where the data is large), unless an earlier run did;
    the reading's report."""
    if store.has_samples:
        return resumed_reading(store)
    report = DataReport()
    sources = lazy_sources(attrs, cfg)
    chunks = (lazy_sample_chunks(sources, cfg, report) if sources is not None
              else [load_samples(names, cfg, report, attrs)])
    store.write_samples(chunks, report)
    return report


# Local JSON Lines data of at least this many bytes is read row by row, never whole (`lazy_sources`);
# smaller data is read at once, which is faster.
LAZY_MIN_BYTES = 64 * 2**20
CHUNK = 10_000  # samples converted (and deduplicated) at a time on the row-by-row path


def lazy_sources(attrs: list, cfg: "RunConfig") -> list[tuple[Any, Callable[[], Iterator[dict]]]] | None:
    """(entry, rows) per dataset when the data is large, every dataset can be read row by row (local JSON
    Lines, `readers.lazy_json_lines`), they are mixed by concatenation and the stage tokenizes samples
    independently; else None, and the rows are read whole (`mixing.load_mixed_samples`)."""
    d = cfg.data
    if not STAGES[cfg.finetuning.stage].processor.parallel or (len(attrs) > 1 and d.mix_strategy != "concat"):
        return None
    found = [lazy_json_lines(attr, d.dataset_dir) for attr in attrs]
    if any(f is None for f in found) or sum(size for _, size in found) < LAZY_MIN_BYTES:
        return None
    return [(attr, rows) for attr, (rows, _) in zip(attrs, found)]


def lazy_sample_chunks(sources: list, cfg: "RunConfig", report: DataReport) -> Iterator[list[dict[str, Any]]]:
    """Canonical samples of `sources` in order, `CHUNK` at a time, deduplicated by `dedup` when set; each
    dataset's rows, kept and skipped rows are counted into `report` as `load_mixed_samples` counts them."""
    d = cfg.data
    method = dedup.dedup_method(cfg)
    for attr, rows in sources:
        convert = get_format(attr.formatting).convert
        result = ConversionResult(name=attr.name, num_rows=0)
        marker = dedup.deduplicator(method) if method else None
        removed = 0
        chunk: list[dict[str, Any]] = []
        for index, row in enumerate(rows()):
            if d.max_samples is not None and index >= d.max_samples:
                break
            result.num_rows += 1
            try:
                chunk.append(sample_row(convert(attr, row)))
            except RowError as error:
                result.add_skip(index, error)
            if len(chunk) == CHUNK:
                kept = chunk if marker is None else [s for s, k in zip(chunk, marker.keep(chunk)) if k]
                removed += len(chunk) - len(kept)
                yield kept
                chunk = []
        if chunk:
            kept = chunk if marker is None else [s for s, k in zip(chunk, marker.keep(chunk)) if k]
            removed += len(chunk) - len(kept)
            yield kept
        if result.num_rows == 0:
            convert_rows(attr, [])  # raises its "has no rows"
        if result.num_rows == result.num_skipped:
            where = f" (entry {attr.name!r} in {attr.source})" if attr.source else ""
            raise LatheError(f"No usable rows in dataset {attr.name!r}{where}:\n  {result.report()}\nCheck the entry's "
                             f"`formatting` ({attr.formatting!r}), `columns` and `tags` against the data.")
        report.rows[attr.name] = result.num_rows
        report.kept[attr.name] = result.num_rows - result.num_skipped
        if result.skipped:
            report.skipped[attr.name] = result.report()
        if method:
            dedup.count_removed(report, method, attr.name, removed)


def prepare_eval(cfg: "RunConfig", tokenizer, template, media=None):
    """The eval datasets: all of `eval_dataset` mixed into one, or one per name with `eval_on_each_dataset`."""
    d = cfg.data
    names = eval_names(cfg)
    out = {}
    for name in names:
        out[name], eval_report = prepare(name, cfg, tokenizer, template, media)
        for line in eval_report.lines():
            logger.info("eval data%s: %s", f" {name}" if d.eval_on_each_dataset else "", line)
    return out if d.eval_on_each_dataset else out[d.eval_dataset]


def stream_stored(cfg: "RunConfig", tokenizer, template, stored: Path) -> DatasetBundle:
    """`streaming` with `tokenized_path`: tokenize into the folder first when it holds no data (in shards,
    memory bounded, resumable: `prepare`), then train from a stream of its Arrow files, which keeps memory
    flat whatever the data's size. Evaluation data streams as without `tokenized_path`."""
    d = cfg.data
    if not (stored / cache.REPORT_FILE).exists():
        if not d.dataset:
            raise LatheError(f"`tokenized_path: {stored}` holds no tokenized data and `dataset` is not set to make it.")
        if d.tokenize_in_background:
            from .background import stream_while_tokenizing

            train, report = stream_while_tokenizing(cfg, tokenizer, template, stored)
            return finish_stream(cfg, tokenizer, template, train, report, stored)
        train, report = prepare(d.dataset, cfg, tokenizer, template)
        cache.save_tokenized(stored, train, report)
        logger.info("data: tokenized data saved to tokenized_path %s", stored)
    train, report = stream_tokenized(stored, cfg)
    for line in report.lines():
        logger.info("data: %s", line)
    return finish_stream(cfg, tokenizer, template, train, report, stored)


def finish_stream(cfg: "RunConfig", tokenizer, template, train, report: DataReport, stored: Path) -> DatasetBundle:
    """The bundle of a stream of `tokenized_path`: evaluation data streams as without it."""
    d = cfg.data
    evaluation = None
    if d.eval_dataset:
        _, evaluation, _ = stream_datasets(replace(cfg, data=replace(d, dataset=None)), tokenizer, template)
    elif d.val_size >= 1:
        evaluation, train = train.take(int(d.val_size)), train.skip(int(d.val_size))
    logger.info("data: streaming the tokenized data of %s", stored)
    return DatasetBundle(train, evaluation, report, streaming=True)


def get_dataset(cfg: "RunConfig", tokenizer, template, media=None) -> DatasetBundle:
    """The run's train (and eval) datasets, tokenized for its stage, and the data report (logged).

    `media` (a `media.encode.MediaContext`): the run's model takes images, video or audio (data/media)."""
    d = cfg.data
    check_template_options(cfg, template)
    if media is not None and d.streaming:
        raise LatheError("`streaming` does not carry images, video or audio yet; preprocess multimodal data up front "
                         "(leave `streaming` out).")
    stored = Path(d.tokenized_path) if d.tokenized_path else None
    train = evaluation = None
    report = DataReport()
    if d.streaming and stored is not None:
        return stream_stored(cfg, tokenizer, template, stored)
    if d.streaming:
        return DatasetBundle(*stream_datasets(cfg, tokenizer, template), streaming=True)
    if stored is not None and (stored / cache.REPORT_FILE).exists():
        train, saved = cache.load_tokenized(stored)
        report = DataReport.from_dict(saved)
        logger.info("data: tokenized data read from tokenized_path %s; `dataset` is not read again", stored)
    elif d.dataset:
        train, report = prepare(d.dataset, cfg, tokenizer, template, media)
        if stored is not None:
            cache.save_tokenized(stored, train, report)
            logger.info("data: tokenized data saved to tokenized_path %s", stored)
    if d.eval_dataset:
        evaluation = prepare_eval(cfg, tokenizer, template, media)
    elif train is not None and d.val_size > 0:
        size = int(d.val_size) if d.val_size >= 1 else d.val_size
        if (isinstance(size, int) and size >= len(train)) or len(train) < 2:
            raise LatheError(f"`val_size: {d.val_size}` leaves no training data out of {len(train)} samples.")
        split = train.train_test_split(test_size=size, seed=cfg.training.seed)
        train, evaluation = split["train"], split["test"]
    for line in report.lines():
        logger.info("data: %s", line)
    parts = evaluation.items() if isinstance(evaluation, dict) else [("", evaluation)]
    for name, data in (("training", train), *((f"evaluation {n}".strip(), e) for n, e in parts)):
        if data is not None and len(data) == 0:
            reasons = "; ".join(report.lines()) or "no rows"
            raise LatheError(f"No {name} sample has anything to learn ({reasons}). Check the dataset and cutoff_len.")
    return DatasetBundle(train, evaluation, report)
