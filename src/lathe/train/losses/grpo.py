"""GRPO and its successors as pure functions: advantages, the clipped objective, the KL term.

Each formula is TRL 1.16's (`GRPOTrainer._generate_and_score_completions` for the advantages,
`GRPOTrainer._compute_loss` for the loss; `RLOOTrainer` for the leave-one-out baseline), written
out here so that lathe's own loop (`train/grpo.py`) can call it on any micro-batch and each can be
checked against numbers computed by hand (tests/train/test_grpo_losses.py).

Shapes: completions are rows, B = prompts x num_generations, the generations of one prompt next to
each other (row i belongs to group i // G); per-token tensors are [B, T] with a 0/1 `mask` over the
completion tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

STD_EPS = 1e-4  # TRL's: added to the std before dividing, so a group of equal rewards gives advantage 0


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group") -> torch.Tensor:
    """GRPO's advantage: each reward minus its group's mean, divided by a std (TRL's `scale_rewards`).

    A_i = (r_i - mean(r_group)) / (std + 1e-4), with std the unbiased (n - 1) standard deviation of:
    - `group`: the rewards of the same prompt (the original GRPO);
    - `batch`: every reward of the batch (PPO-Lite; the mean is still the group's);
    - `none`: no division (Dr. GRPO: the std favours too easy and too hard questions).
    """
    grouped = rewards.view(-1, num_generations)
    mean = grouped.mean(dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale_rewards == "none":
        return advantages
    if scale_rewards == "group":
        std = (grouped.std(dim=1).repeat_interleave(num_generations) if num_generations > 1
               else torch.zeros_like(rewards))
    elif scale_rewards == "batch":
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        raise ValueError(f"scale_rewards must be group, batch or none, got {scale_rewards!r}")
    return advantages / (std + STD_EPS)


def rloo_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """RLOO's advantage: each reward minus the mean of the *other* rewards of its group.

    A_i = r_i - (sum_j r_j - r_i) / (G - 1) = G / (G - 1) * (r_i - mean): an unbiased baseline, since
    it does not depend on sample i (TRL's `RLOOTrainer`, Ahmadian et al. 2024). Not scaled by a std.
    """
    if num_generations < 2:
        raise ValueError("RLOO's leave-one-out baseline needs num_generations >= 2")
    grouped = rewards.view(-1, num_generations)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (num_generations - 1)
    return (grouped - baseline).reshape(-1)


def constant_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """[prompts] bool: the groups whose rewards are all equal (their advantages are all 0: no signal).

    DAPO's dynamic sampling drops these groups from the update.
    """
    grouped = rewards.view(-1, num_generations)
    return (grouped == grouped[:, :1]).all(dim=1)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference), Schulman's k3 estimator: exp(q - p) - (q - p) - 1, q = ref, p = policy.

    Unbiased on samples of the policy and never negative (TRL's GRPO `per_token_kl`).
    """
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def importance_log_ratio(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """log(pi / pi_old): per token ([B, T], `token`) or GSPO's per sequence ([B, 1], `sequence`).

    GSPO's sequence ratio is the geometric mean of the token ratios: the masked mean of the log
    ratios, sum(m * (p - p_old)) / max(sum(m), 1), one weight for every token of the sequence.
    """
    log_ratio = logps - old_logps
    if level == "token":
        return log_ratio
    if level == "sequence":
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    raise ValueError(f"importance_sampling_level must be token or sequence, got {level!r}")


def clipped_token_loss(coef: torch.Tensor, advantages: torch.Tensor, epsilon: float,
                       epsilon_high: float) -> torch.Tensor:
    """PPO's clipped surrogate per token: -min(r A, clip(r, 1 - eps, 1 + eps_high) A).

    `epsilon_high` above `epsilon` is DAPO's clip-higher: an unlikely token with a positive advantage
    may grow further before its gradient is cut, which keeps the policy's entropy from collapsing.
    """
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    clipped = torch.clamp(coef, 1 - epsilon, 1 + epsilon_high)
    return -torch.min(coef * adv, clipped * adv)


# ---------------------------------------------------------------------------------------------- normalisations
# How the masked per-token losses of a micro-batch become one number. `num_items` is the number of
# completion tokens of the whole optimiser batch (every micro-batch of the step), which DAPO divides
# by; `max_completion_length` is Dr. GRPO's constant. Each also says how the micro-batch losses of one
# optimiser step are combined (`weight`), so that a step with accumulation equals the step without.


def _per_sequence(per_token: torch.Tensor, mask: torch.Tensor, num_items: float, max_len: int) -> torch.Tensor:
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def _per_micro_batch_tokens(per_token: torch.Tensor, mask: torch.Tensor, num_items: float,
                            max_len: int) -> torch.Tensor:
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def _per_batch_tokens(per_token: torch.Tensor, mask: torch.Tensor, num_items: float, max_len: int) -> torch.Tensor:
    return (per_token * mask).sum() / max(num_items, 1.0)


def _per_constant(per_token: torch.Tensor, mask: torch.Tensor, num_items: float, max_len: int) -> torch.Tensor:
    return (per_token * mask).sum() / (per_token.shape[0] * max_len)


@dataclass(frozen=True)
class LossType:
    """One `loss_type`: how the per-token losses are averaged (`reduce`) and how micro-batches combine.

    `weight(rows, rows_in_step, micro_batches)` scales a micro-batch's loss before backward: the
    share of the step's rows for a per-row mean, 1 / micro-batches for a per-micro-batch mean (as TRL
    divides by the accumulation steps), 1 where `reduce` already divides by the whole step's tokens.
    `whole_step_tokens`: `reduce` divides by the tokens of every process's batch, so the processes'
    gradients add up to the step's; the others are means that DDP's average of the processes keeps.
    """

    name: str
    help: str
    reduce: Callable[[torch.Tensor, torch.Tensor, float, int], torch.Tensor]
    weight: Callable[[int, int, int], float]
    whole_step_tokens: bool = False


def _row_share(rows: int, total: int, micro_batches: int) -> float:
    return rows / total


LOSS_TYPES: dict[str, LossType] = {t.name: t for t in (
    LossType(name="grpo", help="each sequence's token mean, then the mean over sequences (GRPO; favours short right "
             "answers)", reduce=_per_sequence, weight=_row_share),
    LossType(name="bnpo", help="the mean over the tokens of each micro-batch", reduce=_per_micro_batch_tokens,
             weight=lambda rows, total, micro: 1.0 / micro),
    LossType(name="dr_grpo", help="the token sum divided by rows x max_completion_length, a constant (Dr. GRPO: no "
             "length bias)", reduce=_per_constant, weight=_row_share),
    LossType(name="dapo", help="the token sum divided by the tokens of the whole optimiser batch (DAPO: each token "
             "counts once)", reduce=_per_batch_tokens, weight=lambda rows, total, micro: 1.0,
             whole_step_tokens=True),
)}


@dataclass(frozen=True)
class LossSettings:
    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: epsilon
    importance_sampling_level: str = "token"
    beta: float = 0.0
    max_completion_length: int = 512


@dataclass
class LossOutput:
    loss: torch.Tensor
    clip_ratio: float  # share of completion tokens whose ratio was clipped in the direction of their advantage
    kl: float | None  # mean per-token k3 KL to the reference (None when beta is 0)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              settings: LossSettings, ref_logps: torch.Tensor | None = None,
              num_items: float | None = None) -> LossOutput:
    """The GRPO-family loss of one micro-batch (TRL's `_compute_loss` for grpo, bnpo, dr_grpo, dapo).

    per_token = -min(r A, clip(r, 1 - eps, 1 + eps_high) A) + beta * KL_k3, r = exp(log ratio) per
    token or per sequence (`importance_sampling_level`), then reduced by `settings.loss_type`.
    `num_items`: completion tokens of the whole optimiser batch (dapo), default this micro-batch's.
    """
    mask = mask.to(logps.dtype)
    eps_high = settings.epsilon if settings.epsilon_high is None else settings.epsilon_high
    coef = torch.exp(importance_log_ratio(logps, old_logps, mask, settings.importance_sampling_level))
    per_token = clipped_token_loss(coef, advantages, settings.epsilon, eps_high)
    kl = None
    if settings.beta != 0.0:
        if ref_logps is None:
            raise ValueError("grpo_beta > 0 needs the reference log-probs")
        token_kl = k3_kl(logps, ref_logps)
        per_token = per_token + settings.beta * token_kl
        kl = float((token_kl.detach() * mask).sum() / mask.sum().clamp(min=1.0))
    per_token = per_token.expand_as(mask) if per_token.shape != mask.shape else per_token
    items = float(mask.sum()) if num_items is None else float(num_items)
    loss = LOSS_TYPES[settings.loss_type].reduce(per_token, mask, items, settings.max_completion_length)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    with torch.no_grad():
        clipped = ((coef < 1 - settings.epsilon) & (adv < 0)) | ((coef > 1 + eps_high) & (adv > 0))
        clip_ratio = float((clipped.expand_as(mask) * mask).sum() / mask.sum().clamp(min=1.0))
    return LossOutput(loss, clip_ratio, kl)
