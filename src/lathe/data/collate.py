"""Collators for the preference stages: chosen and rejected answers in one padded batch.

One forward pass over [chosen..., rejected...] costs less than two passes and keeps the
two halves under the same dropout/numerics; the trainer splits the outputs in the middle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .processors.supervised import first_learned
from .sample import IGNORE_INDEX


def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def left_pad(rows: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts for generation or next-token scoring: padded on the left so every row ends at the
    same position; returns ids, attention mask and the position ids that skip the padding."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], device=device)
    attn = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, attn, positions_from_mask(attn)


def positions_from_mask(attn: torch.Tensor) -> torch.Tensor:
    return (attn.cumsum(-1) - 1).clamp(min=0)


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


@dataclass
class FeedbackCollator:
    """KTO batches: the samples, plus mismatched pairs (prompt i, answer i+1) for the KL estimate.

    KTO's reference point is the policy/reference KL on answers that do not belong to their
    prompt; pairing each prompt with the next sample's answer gives such pairs at no extra
    data cost.
    """

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [list(f["input_ids"]) for f in features]
        labels = [list(f["labels"]) for f in features]
        kl_ids, kl_labels = [], []
        for i in range(len(features)):
            j = (i + 1) % len(features)
            cut_i, cut_j = first_learned(labels[i]), first_learned(labels[j])
            kl_ids.append(ids[i][:cut_i] + ids[j][cut_j:])
            kl_labels.append([IGNORE_INDEX] * cut_i + labels[j][cut_j:])
        return {
            "input_ids": pad(ids, self.pad_token_id),
            "attention_mask": pad([[1] * len(r) for r in ids], 0),
            "labels": pad(labels, IGNORE_INDEX),
            "kl_input_ids": pad(kl_ids, self.pad_token_id),
            "kl_attention_mask": pad([[1] * len(r) for r in kl_ids], 0),
            "kl_labels": pad(kl_labels, IGNORE_INDEX),
            "kto_tags": torch.tensor([bool(f["kto_tag"]) for f in features]),
        }
