"""The data path of a run: registry -> rows -> canonical samples -> token ids, with a report.

Every step counts what it drops and why; the report is logged and a run that would train on
nothing (no valid rows, or no learned token left after truncation) stops with the reasons.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import LatheError
from .formats import convert_rows
from .processors.supervised import IGNORE_INDEX, build_supervised_example
from .readers import read_rows
from .registry import get_dataset_attrs

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
    truncated: int = 0
    tokens: int = 0
    learned_tokens: int = 0

    def lines(self) -> list[str]:
        out = []
        for name, n in self.rows.items():
            out.append(f"{name}: {self.kept.get(name, 0)} of {n} rows kept")
            if name in self.skipped:
                out.append("  " + self.skipped[name])
        for reason, n in self.dropped.items():
            out.append(f"dropped {n} sample(s): {reason}")
        if self.tokens:
            out.append(
                f"{self.tokens:,} tokens, {self.learned_tokens:,} learned "
                f"({100 * self.learned_tokens / self.tokens:.1f}%); {self.truncated} sample(s) truncated to cutoff_len"
            )
        return out


@dataclass
class DatasetBundle:
    train: "Dataset | None"
    eval: "Dataset | None"
    report: DataReport


def load_samples(
    names: str, dataset_dir: str, max_samples: int | None, report: DataReport, seed: int = 0
) -> list[dict[str, Any]]:
    """Read and convert each named dataset into canonical samples, counting what is skipped."""
    samples: list[dict[str, Any]] = []
    for attr in get_dataset_attrs(names, dataset_dir):
        rows = read_rows(attr, dataset_dir, seed=seed)
        if max_samples is not None:
            rows = rows.select(range(min(max_samples, len(rows))))
        result = convert_rows(attr, rows)
        report.rows[attr.name] = len(rows)
        report.kept[attr.name] = len(result.samples)
        if result.skipped:
            report.skipped[attr.name] = result.report()
        samples.extend(result.samples)
    return samples


def _tokenize_batch(batch: dict[str, list], *, template, tokenizer, data_args) -> dict[str, list]:
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "_truncated": [], "_drop": []}
    for messages, system, tools in zip(batch["messages"], batch["system"], batch["tools"]):
        system = system or data_args.default_system or ""
        pairs = template.encode(tokenizer, messages, system=system, tools=tools or "")
        enc = build_supervised_example(
            pairs, data_args.cutoff_len, data_args.train_on_prompt, data_args.mask_history
        )
        learned = sum(1 for t in enc.labels if t != IGNORE_INDEX)
        out["input_ids"].append(enc.input_ids)
        out["attention_mask"].append([1] * len(enc.input_ids))
        out["labels"].append(enc.labels)
        out["_truncated"].append(enc.truncated)
        out["_drop"].append("" if learned else "no learned token left after truncation to cutoff_len")
    return out


def tokenize_supervised(samples: list[dict[str, Any]], cfg: "RunConfig", tokenizer, template, report: DataReport):
    """Samples -> a `datasets.Dataset` of input_ids / attention_mask / labels for SFT."""
    from datasets import Dataset

    columns = {
        "messages": [s["messages"] for s in samples],
        "system": [s.get("system", "") for s in samples],
        "tools": [s.get("tools", "") for s in samples],
    }
    dataset = Dataset.from_dict(columns)
    workers = cfg.data.preprocessing_num_workers
    dataset = dataset.map(
        _tokenize_batch,
        batched=True,
        batch_size=cfg.data.preprocessing_batch_size,
        num_proc=workers if workers and workers > 1 and len(dataset) >= 2 * workers else None,
        remove_columns=dataset.column_names,
        fn_kwargs={"template": template, "tokenizer": tokenizer, "data_args": cfg.data},
        desc="Tokenizing",
    )
    drops = Counter(r for r in dataset["_drop"] if r)
    report.dropped.update(drops)
    report.truncated += sum(dataset["_truncated"])
    if drops:
        dataset = dataset.filter(lambda row: not row["_drop"], desc="Dropping samples with nothing to learn")
    dataset = dataset.remove_columns(["_truncated", "_drop"])
    for ids, labels in zip(dataset["input_ids"], dataset["labels"]):
        report.tokens += len(ids)
        report.learned_tokens += sum(1 for t in labels if t != IGNORE_INDEX)
    return dataset


def get_dataset(cfg: "RunConfig", tokenizer, template) -> DatasetBundle:
    """Build the train (and eval) datasets of an SFT run and log the data report."""
    d = cfg.data
    report = DataReport()
    train = evaluation = None
    if d.dataset:
        samples = load_samples(d.dataset, d.dataset_dir, d.max_samples, report, cfg.training.seed)
        train = tokenize_supervised(samples, cfg, tokenizer, template, report)
    if d.eval_dataset:
        eval_samples = load_samples(d.eval_dataset, d.dataset_dir, d.max_samples, report, cfg.training.seed)
        evaluation = tokenize_supervised(eval_samples, cfg, tokenizer, template, report)
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
