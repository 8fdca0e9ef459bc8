"""Read each named dataset, convert its rows to canonical samples and combine them by `mix_strategy`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .dataset_info import get_dataset_attrs
from .formats import convert_rows
from .processors import sample_row
from .readers import entry_token, iter_rows, read_rows, select_rows
from .report import DataReport

if TYPE_CHECKING:
    from ..config import RunConfig


def eval_names(cfg: "RunConfig") -> list[str]:
    """How `eval_dataset` is read: each name on its own (`eval_on_each_dataset`), or all names mixed as one."""
    d = cfg.data
    if not d.eval_on_each_dataset:
        return [d.eval_dataset]
    return list(dict.fromkeys(n.strip() for n in d.eval_dataset.split(",") if n.strip()))


def load_mixed_samples(names: str, cfg: "RunConfig", report: DataReport, attrs=None) -> list[dict[str, Any]]:
    """Read and convert each named dataset, then combine them by `mix_strategy`: canonical samples
    with every stored column (`sample_row`), in training order."""
    d = cfg.data
    parts = []
    for attr in attrs or get_dataset_attrs(names, d.dataset_dir, d.media_dir):
        rows = read_rows(attr, d.dataset_dir, seed=cfg.training.seed, token=entry_token(attr, cfg.model))
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


# mix_strategy -> the stopping strategy of `datasets.interleave_datasets` (as LLaMA-Factory maps them):
# stop when the first dataset runs out; oversample until every one ran out (the shorter ones repeat);
# go on until every one ran out, a dataset that ran out being skipped, so each sample appears once.
STOPPING = {
    "interleave_under": "first_exhausted",
    "interleave_over": "all_exhausted",
    "interleave_once": "all_exhausted_without_replacement",
}


def mix(parts: list, cfg: "RunConfig"):
    """Combine datasets (in-memory or streamed) by `mix_strategy` and `interleave_probs`."""
    from datasets import concatenate_datasets, interleave_datasets

    d = cfg.data
    if len(parts) == 1 or d.mix_strategy == "concat":
        return concatenate_datasets(parts)
    probs = [float(p) for p in d.interleave_probs.split(",")] if d.interleave_probs else None
    return interleave_datasets(parts, probabilities=probs, seed=cfg.training.seed,
                               stopping_strategy=STOPPING[d.mix_strategy])
