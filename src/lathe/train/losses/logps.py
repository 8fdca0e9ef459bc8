"""Log-probabilities of the learned tokens of each sequence: what preference and evaluation losses score."""

from __future__ import annotations

import torch

def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the label tokens' log-probabilities per sequence, and how many were scored.

    Causal-LM alignment: position t's logits predict token t+1, so `logits[:, :-1]` is scored
    against `labels[:, 1:]` (the same shift as the model's own LM loss). Positions whose label
    is `ignore_index` (prompt, padding) add nothing and are not counted.

        sum_logps[b]  = sum_{t : y_{b,t+1} != ignore} log softmax(logits_{b,t})[y_{b,t+1}]
        num_tokens[b] = |{t : y_{b,t+1} != ignore}|

    A per-token average (IPO, SimPO, ORPO) is `sum_logps / num_tokens.clamp(min=1)`.

    Memory: `log_softmax(logits)` would allocate a second `[B, T, V]` tensor (often the
    biggest one in the step, and in float32 when logits are bf16). Instead, log p(y) is taken
    as `logit[y] - logsumexp(logit)`, one sequence at a time, so the extra memory is one
    `[T, V]` float32 row. The row is upcast to float32 because bf16's 8-bit mantissa loses
    whole nats over a 100k-word logsumexp.

    Args:
        logits: `[B, T, V]`, the model's output for the full sequences.
        labels: `[B, T]`, the input ids with non-scored positions set to `ignore_index`.

    Returns:
        `(sum_logps [B] float32, num_tokens [B] int64)`.
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"sequence_logps expects logits [B, T, V] and labels [B, T]; got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}."
        )
    logits = logits[:, :-1]
    labels = labels[:, 1:]
    scored = labels != ignore_index
    safe_labels = labels.masked_fill(~scored, 0)  # gather needs a valid index; masked out below
    rows = []
    for row_logits, row_labels in zip(logits, safe_labels):
        row_logits = row_logits.float()
        picked = row_logits.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    token_logps = torch.stack(rows) if rows else logits.new_zeros(labels.shape, dtype=torch.float32)
    sum_logps = (token_logps * scored).sum(-1)
    return sum_logps, scored.sum(-1)

