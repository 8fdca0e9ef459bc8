"""Token accuracy of the answers (`compute_accuracy`), for the Trainer's evaluation loop.

Only argmax ids leave each step (`preprocess_logits_for_metrics`), not the [B, T, vocab]
logits, so evaluating a large vocabulary does not hold every logit in memory.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.processors.supervised import IGNORE_INDEX


def argmax_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def token_accuracy(eval_pred) -> dict[str, float]:
    """Share of answer tokens the model predicts right (position t predicts token t+1)."""
    predictions, labels = np.asarray(eval_pred.predictions), np.asarray(eval_pred.label_ids)
    predictions, labels = predictions[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    total = int(mask.sum())
    return {"accuracy": float((predictions[mask] == labels[mask]).sum() / total) if total else 0.0}
