"""Packing: put several short samples in one row of `cutoff_len` tokens, without padding.

Padding is wasted compute (on LLaMA-Factory's alpaca demo data ~44% of a padded batch is
padding). Packed rows carry `position_ids`; the collator flattens a batch into one row and
transformers splits attention wherever a position id restarts at 0, so:

- `neat_packing`: position ids restart at every sample, so no sample attends to another one
  (the loss equals the unpacked loss);
- `packing` alone: position ids run across the whole bin, so samples of one bin see each
  other (LLaMA-Factory's classic packing; cheaper for pre-training text where it does not matter).

Rows are never split: a sample longer than `cutoff_len` was already truncated by tokenization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..registry import STAGES
from .sample import IGNORE_INDEX


def packing_enabled(cfg) -> bool:
    """`packing` as given, else the stage's default (on for pre-training, where samples seeing each other is harmless)."""
    d = cfg.data
    if d.neat_packing:
        return True
    return d.packing if d.packing is not None else STAGES[cfg.finetuning.stage].packs_by_default


def greedy_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing: indices grouped into bins whose lengths sum to at most `capacity`.

    Deterministic (ties keep their original order), and within a bin samples keep the order
    they were placed in.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def pack_batch(batch: dict[str, list], capacity: int, neat: bool) -> dict[str, list]:
    """A `datasets.map(batched=True)` function: tokenized rows in, packed rows out."""
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    for group in greedy_bins([len(ids) for ids in batch["input_ids"]], capacity):
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for i in group:
            sample_ids = batch["input_ids"][i]
            ids += sample_ids
            # The first token of a sample is never a target: nothing before it belongs to the sample.
            labels += [IGNORE_INDEX] + list(batch["labels"][i][1:])
            positions += list(range(len(sample_ids))) if neat else list(range(len(positions), len(positions) + len(sample_ids)))
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["position_ids"].append(positions)
    return out


def pack_dataset(dataset, capacity: int, neat: bool, batch_size: int = 10_000, num_proc: int | None = None):
    """Pack a tokenized `datasets.Dataset` (input_ids, labels) into rows of at most `capacity` tokens.

    Bins are filled within chunks of `batch_size` samples, which keeps packing linear in the
    data size while leaving bins almost full.
    """
    return dataset.map(
        pack_batch,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        fn_kwargs={"capacity": capacity, "neat": neat},
        desc="Packing" + (" (neat)" if neat else ""),
    )


@dataclass
class FlatteningCollator:
    """Collate packed rows into a single row with `position_ids` and no attention mask.

    Each row's position ids restart at 0, so rows never attend to each other either; no
    padding token is ever computed.
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for f in features:
            ids += list(f["input_ids"])
            labels += [IGNORE_INDEX] + list(f["labels"][1:])
            positions += list(f["position_ids"])
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
        }
