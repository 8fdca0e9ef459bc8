"""Collators for the preference stages: chosen and rejected answers in one padded batch.

One forward pass over [chosen..., rejected...] costs less than two passes and keeps the
two halves under the same dropout/numerics; the trainer splits the outputs in the middle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .processors.supervised import IGNORE_INDEX


def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


@dataclass
class PairwiseCollator:
    """Batch of pairs -> input_ids / attention_mask / labels of shape [2B, T], chosen first."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features]
        labels = [f["chosen_labels"] for f in features] + [f["rejected_labels"] for f in features]
        return {
            "input_ids": pad(ids, self.pad_token_id),
            "attention_mask": pad([[1] * len(r) for r in ids], 0),
            "labels": pad(labels, IGNORE_INDEX),
        }
