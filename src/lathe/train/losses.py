"""Loss functions of the training stages, as pure tensor functions.

Every function here takes tensors and numbers and returns tensors: no model, no Trainer,
no config. That keeps each formula in one place, next to its paper, and lets the tests check
it against numbers worked out by hand. The stage modules (dpo.py, kto.py, rm.py, ppo.py) run
the forward passes and call these.

Why write them rather than import TRL's: TRL keeps these formulas inside its Trainer
classes (DPOTrainer.dpo_loss, KTOTrainer.kto_loss, the PPO loop), several of them in
`trl.experimental`, so using them means adopting their Trainer, their batch layout and their
API churn. The formulas themselves are a few lines each; owning them lets every lathe stage
share one trainer base. Where a choice differs between implementations, the docstring says
which one is taken and why.

Shapes: `B` is the batch, `T` the sequence (or response) length, `V` the vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "AdaptiveKLController",
    "DPO_LOSS_TYPES",
    "FixedKLController",
    "dpo_loss",
    "gae_advantages",
    "kl_penalty_rewards",
    "kto_loss",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "orpo_loss",
    "pairwise_accuracy",
    "pairwise_reward_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "sequence_logps",
    "simpo_loss",
]


# --------------------------------------------------------------------------- log-probs


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


# --------------------------------------------------------------------------- preference losses

DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO-family loss from policy and reference log-probs of chosen/rejected answers.

    With the log-ratio difference

        h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)

    the loss types are:

    - `"sigmoid"`: DPO (Rafailov et al. 2023, arXiv:2305.18290), `-log sigmoid(beta * h)`.
      With `label_smoothing = eps` it is conservative DPO (cDPO, Mitchell 2023): the
      preference label is assumed flipped with probability eps, so
      `-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)`. eps = 0.5 makes the loss
      symmetric in h (no preference is learned); eps must lie in [0, 0.5].
    - `"hinge"`: RSO's hinge loss (Liu et al. 2023, arXiv:2309.06657),
      `max(0, 1 - beta * h)`: zero once the margin h reaches 1/beta.
    - `"ipo"`: IPO (Azar et al. 2023, arXiv:2310.12036), `(h - 1/(2 beta))^2`, a squared loss
      whose minimum sits at h = 1/(2 beta), so the margin stays bounded instead of growing
      without limit as in DPO. IPO defines h on **per-token average** log-probs: the caller
      must pass `sum_logps / num_tokens` for all four inputs (with sums, the target margin
      1/(2 beta) would be compared against a quantity that scales with answer length).
      The sigmoid and hinge types take summed log-probs.

    Label smoothing is defined only for "sigmoid"; a non-zero value with another type is an
    error rather than silently ignored.

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: `[B]` sequence log-probs.
        beta: the KL-regularisation strength (DPO's beta, IPO's tau).

    Returns:
        `(losses [B], chosen_rewards [B], rejected_rewards [B])`; rewards are the implicit
        rewards `beta * (policy - ref)`, detached (they are for logging, not for gradients).
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type `{loss_type}`; valid: {', '.join(DPO_LOSS_TYPES)}.")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}.")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(
            f"label_smoothing (cDPO) applies only to loss_type `sigmoid`, not `{loss_type}`; "
            "set label_smoothing to 0 or use the sigmoid loss."
        )
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:  # ipo
        losses = (h - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


# The OR term needs log(1 - p) for p = exp(logp) -> 1. An average log-prob that rounds to
# exactly 0 would make it -inf; capping at -1e-7 bounds the log-odds at about 16 and the
# gradient at about 1e7 while changing nothing for any answer the model is not already sure of.
_ORPO_LOGP_CAP = -1e-7


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012, 'Accurately computing
    log(1 - exp(-|a|))'): log(-expm1(x)) near 0, where 1 - exp(x) cancels; log1p(-exp(x))
    further out, where exp(x) is small."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO's odds-ratio term (Hong et al. 2024, arXiv:2403.07691), already scaled by beta.

    With odds(p) = p / (1 - p), so log odds = logp - log(1 - exp(logp)):

        log_odds_ratio = log odds(chosen) - log odds(rejected)
        losses         = beta * -log sigmoid(log_odds_ratio)

    ORPO has no reference model; it adds this term to the plain SFT loss on the chosen
    answer. The caller computes the total as

        total = nll_chosen + losses        (i.e. nll_chosen + beta * L_OR)

    where nll_chosen is the mean token NLL of the chosen answer (`-chosen_avg_logps`).
    Inputs are per-token **average** log-probs (`sum_logps / num_tokens`), as in the paper;
    they are capped just below 0 so a near-certain answer gives finite values and gradients.

    Returns:
        `(losses [B], log_odds_ratio [B])`; the ratio is detached, for logging.
    """
    chosen = chosen_avg_logps.clamp(max=_ORPO_LOGP_CAP)
    rejected = rejected_avg_logps.clamp(max=_ORPO_LOGP_CAP)
    log_odds_ratio = (chosen - _log1mexp(chosen)) - (rejected - _log1mexp(rejected))
    losses = -beta * F.logsigmoid(log_odds_ratio)
    return losses, log_odds_ratio.detach()


def simpo_loss(
    chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, beta: float, gamma: float
) -> torch.Tensor:
    """SimPO (Meng et al. 2024, arXiv:2405.14734): reference-free, length-normalised DPO.

        losses = -log sigmoid(beta * (chosen - rejected) - gamma)

    on per-token **average** log-probs (`sum_logps / num_tokens`). `gamma` is the paper's
    target reward margin, in reward units. It is written here as LLaMA-Factory and TRL's CPO
    trainer do, `logits = chosen - rejected - gamma / beta; loss = -logsigmoid(beta * logits)`,
    which is the same number. Note that the SimPO repository's configs set
    `gamma_beta_ratio` (= gamma / beta) instead: convert with gamma = ratio * beta.

    Returns:
        `losses [B]`.
    """
    logits = chosen_avg_logps - rejected_avg_logps - gamma / beta
    return -F.logsigmoid(beta * logits)


def kto_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    kl: torch.Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al. 2024, arXiv:2402.01306) on unpaired good/bad examples.

    KTO scores each answer against a reference point z0, an estimate of the policy/reference
    KL divergence: with r = policy - ref (the sequence log-ratio),

        desirable:    desirable_weight   * (1 - sigmoid(beta * (r - z0)))
        undesirable:  undesirable_weight * (1 - sigmoid(beta * (z0 - r)))

    z0 is `kl.detach().mean().clamp(min=0)`: the caller estimates it from mismatched
    prompt/completion pairs in the batch (policy minus reference log-probs; a scalar, or a
    vector that is averaged here; gathered across processes by the caller). It carries no
    gradient, as in the paper, and a negative estimate (noise: a KL is never negative) is
    raised to 0.

    The inputs are the chosen (desirable) and rejected (undesirable) examples of the batch,
    which need not be paired or equal in number; either may be empty (length 0).

    Returns:
        `(losses [N_chosen + N_rejected], chosen_rewards [N_chosen], rejected_rewards
        [N_rejected])`: losses are the chosen ones first, then the rejected ones; rewards are
        `beta * r`, detached. With both groups empty the losses are empty and their mean is nan,
        so the caller must not build such a batch.
    """
    z0 = torch.as_tensor(kl, dtype=policy_chosen.dtype, device=policy_chosen.device)
    z0 = z0.detach().mean().clamp(min=0)
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    chosen_losses = desirable_weight * (1 - torch.sigmoid(beta * (chosen_logratios - z0)))
    rejected_losses = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - rejected_logratios)))
    losses = torch.cat([chosen_losses, rejected_losses])
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


# --------------------------------------------------------------------------- reward model


def pairwise_reward_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss of a reward model (Ouyang et al. 2022, arXiv:2203.02155, eq. 1):

        loss = mean(-log sigmoid(r_chosen - r_rejected))

    the negative log-likelihood that the chosen answer is preferred, with P = sigmoid of the
    reward difference.
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs whose chosen reward is strictly higher. A tie counts as wrong: a reward
    model that scores everything the same has learned nothing and should report 0, not 1."""
    return (chosen_rewards > rejected_rewards).float().mean()


# --------------------------------------------------------------------------- PPO


def _mask_total(mask: torch.Tensor, at_least: int, what: str) -> torch.Tensor:
    total = mask.sum()
    if total < at_least:  # one host sync per call: cheap next to a PPO step, and no silent nan
        raise ValueError(f"{what} needs at least {at_least} unmasked token(s); the mask has {int(total)}.")
    return total


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is 1 (padding and prompts excluded).

    An all-zero mask is an error: the mean of nothing is nan, which would reach the loss
    silently.
    """
    return (x * mask).sum() / _mask_total(mask, 1, "masked_mean")


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased (Bessel-corrected, n - 1) variance of `x` over the mask, as TRL and the
    OpenAI baselines whiten; it needs at least two unmasked positions."""
    n = _mask_total(mask, 2, "masked_var")
    mean = (x * mask).sum() / n
    return (((x - mean) ** 2) * mask).sum() / (n - 1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise `x` to unit (unbiased) variance over the mask, and to zero mean if `shift_mean`.

        whiten(x) = (x - mean) / sqrt(var + 1e-8)          shift_mean=True (advantages)
                  = (x - mean) / sqrt(var + 1e-8) + mean   shift_mean=False (rewards: keep sign)

    Statistics use only the unmasked positions; masked positions come back as 0 so padding
    cannot leak into a later sum.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438) over response tokens.

    Right to left over the response, with m the mask:

        delta_t = r_t + gamma * m_{t+1} V_{t+1} - V_t
        A_t     = m_t * (delta_t + gamma * lam * m_{t+1} A_{t+1})      (m_T = 0, A_T = 0)
        returns = A + V   (the value head's regression target), 0 where m = 0

    The mask is 1 on response tokens and 0 on the right padding after them: the first 0 ends
    the episode, so nothing after it (padding's values or rewards) reaches earlier tokens.
    The inputs come from the rollout and should be detached; the result is usually whitened
    with `masked_whiten` before the policy loss.

    Args:
        rewards, values, mask: `[B, T]`.

    Returns:
        `(advantages [B, T], returns [B, T])`.
    """
    mask = mask.to(values.dtype)
    steps = rewards.shape[-1]
    last = torch.zeros_like(values[..., 0])
    next_value = torch.zeros_like(last)
    next_mask = torch.zeros_like(last)
    advantages = [last] * steps
    for t in reversed(range(steps)):
        delta = rewards[..., t] + gamma * next_mask * next_value - values[..., t]
        last = mask[..., t] * (delta + gamma * lam * next_mask * last)
        advantages[t] = last
        next_value, next_mask = values[..., t], mask[..., t]
    adv = torch.stack(advantages, dim=-1)
    return adv, (adv + values) * mask


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate objective (Schulman et al. 2017, arXiv:1707.06347, eq. 7), per token.

        ratio = exp(logprobs - old_logprobs)
        loss  = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))

    (the max of the negated terms is the paper's min of the objectives).

    Returns:
        `(loss, clipfrac, approx_kl)`: clipfrac is the share of tokens where the clipped term
        was the active one; approx_kl is `0.5 * masked_mean((logprobs - old_logprobs)^2)`, the
        second-order estimate of KL(old || new) that TRL logs. Both are detached.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac, approx_kl


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss of PPO as in OpenAI baselines / TRL:

        v_clip = old_values + clip(values - old_values, -eps, eps)
        loss   = 0.5 * masked_mean(max((values - returns)^2, (v_clip - returns)^2))

    The value may not move more than eps from its rollout estimate to lower the loss.

    Returns:
        `(loss, clipfrac)`, clipfrac (detached) being the share of tokens where the clipped
        error was the larger one.
    """
    v_clip = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    err = (values - returns) ** 2
    err_clip = (v_clip - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clip), mask)
    with torch.no_grad():
        clipfrac = masked_mean((err_clip > err).float(), mask)
    return loss, clipfrac


def kl_penalty_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """Per-token PPO rewards: a KL penalty on every response token, plus the reward model's
    score on the last one (Ziegler et al. 2019, arXiv:1909.08593; Ouyang et al. 2022).

        rewards_t  = -kl_coef * (logprobs_t - ref_logprobs_t) * m_t
        rewards_L += score            L = each row's last position with m = 1

    The KL term is the single-sample estimate log pi(y_t) - log pi_ref(y_t).

    Args:
        score: `[B]`, one scalar per sequence.
        logprobs, ref_logprobs, mask: `[B, T]` over the response tokens.

    Returns:
        `rewards [B, T]`, 0 on padding.
    """
    mask = mask.to(logprobs.dtype)
    has_tokens = mask.sum(-1) > 0
    if not bool(has_tokens.all()):
        rows = torch.nonzero(~has_tokens).flatten().tolist()
        raise ValueError(f"kl_penalty_rewards: rows {rows} have no response tokens to put the score on.")
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    steps = mask.shape[-1]
    last = steps - 1 - mask.flip(-1).argmax(-1)  # argmax returns the first 1 of the flipped row
    score = score.to(rewards.dtype)
    return rewards.scatter_add(-1, last.unsqueeze(-1), score.unsqueeze(-1))


class FixedKLController:
    """A KL coefficient that stays at its initial value (`value`)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op, so a stage can call `update` without knowing which controller it has."""


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, arXiv:1909.08593, section 2.2).

    The coefficient steers the observed KL towards `target`: after a batch of `n_steps`
    samples with KL `current_kl`,

        e      = clip(current_kl / target - 1, -0.2, 0.2)
        value *= 1 + e * n_steps / horizon

    so a KL above target raises the penalty, one below lowers it, at most 20% per horizon.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController needs target > 0 and horizon > 0; got {target}, {horizon}.")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
