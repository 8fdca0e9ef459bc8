"""Log-probabilities of the learned tokens of each sequence: what preference and evaluation losses score."""

from __future__ import annotations

import torch


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, ld_alpha: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the label tokens' log-probabilities per sequence, and how many were scored.

    Causal-LM alignment: position t's logits predict token t+1, so `logits[:, :-1]` is scored
    against `labels[:, 1:]` (the same shift as the model's own LM loss). Positions whose label
    is `ignore_index` (prompt, padding) add nothing and are not counted.

        sum_logps[b]  = sum_{t : y_{b,t+1} != ignore} log softmax(logits_{b,t})[y_{b,t+1}]
        num_tokens[b] = |{t : y_{b,t+1} != ignore}|

    A per-token average (IPO, SimPO, ORPO) is `sum_logps / num_tokens.clamp(min=1)`.

    `ld_alpha` (LD-DPO; the batch is pairs, chosen rows then rejected rows): the sum weighs the
    tokens past the shorter answer's length by `ld_alpha` (`ld_weights`); `num_tokens` stays the
    full count.

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
    return sum_token_logps(token_logps, labels, ignore_index, ld_alpha)


def sum_token_logps(
    token_logps: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, ld_alpha: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logps` from per-token log-probabilities: `token_logps[b, t]` is log p(targets[b, t]),
    aligned (the shift already taken), any value where the target is `ignore_index`.

    The chunked output layer (train/chunked_logits.py `token_logps`) gives these without the
    whole logits; the sums, counts and LD-DPO weights are the same as from the logits.
    """
    scored = targets != ignore_index
    weights = scored.float() if ld_alpha is None else ld_weights(scored, ld_alpha)
    sum_logps = (token_logps * weights).sum(-1)
    return sum_logps, scored.sum(-1)


def ld_weights(scored: torch.Tensor, alpha: float) -> torch.Tensor:
    """LD-DPO's token weights (Liu et al. 2024, arXiv:2409.06411), for a batch of pairs.

    `scored` is `[2B, T]`, the learned-token mask of the chosen rows then the rejected rows.
    For pair i, with l_i the smaller of its two answers' token counts, each answer's first l_i
    learned tokens weigh 1 and the rest (the verbose tail of the longer answer) weigh `alpha`;
    unlearned positions weigh 0. So `alpha = 1` is plain DPO and `alpha = 0` compares the
    answers over equal lengths only. As LLaMA-Factory's `get_batch_logps(ld_alpha=...)`,
    which counts the shared length from the first learned position (the same tokens for an
    answer that is one run of tokens, as pairwise samples are).
    """
    if scored.shape[0] % 2:
        raise ValueError(f"ld_weights expects chosen rows then rejected rows, got {scored.shape[0]} rows.")
    counts = scored.sum(-1)
    half = counts.shape[0] // 2
    shared = torch.minimum(counts[:half], counts[half:]).repeat(2)
    rank = scored.long().cumsum(-1)  # 1 for a row's first learned token, 2 for its second, ...
    inside = rank <= shared.unsqueeze(-1)
    return torch.where(inside, 1.0, float(alpha)).float() * scored

