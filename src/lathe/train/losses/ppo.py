"""PPO's pieces as pure tensor functions: masked statistics, GAE, the clipped policy and value
losses, the KL-penalised rewards and the KL coefficient controllers."""

from __future__ import annotations

import torch


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


class RunningMoments:
    """Mean and unbiased standard deviation of every score seen so far, merged one batch at a time.

    `ppo_score_norm` normalises each batch's reward scores with these running statistics, as
    LLaMA-Factory does through TRL's PPO (`use_score_scaling` + `use_score_norm`): a batch
    that happens to be all good answers keeps its high scores instead of being centred on 0.
    Batches merge by the parallel-variance rule (Chan et al. 1979), for a batch of n values
    with mean m and population variance v:

        delta = m - mean,  total = count + n
        mean  += delta * n / total
        var    = (var * count + v * n + delta^2 * count * n / total) / total      (population)
        std    = sqrt(var * total / (total - 1))                                  (unbiased)
    """

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 0.0, 0

    @property
    def std(self) -> float:
        return (self.var * self.count / (self.count - 1)) ** 0.5 if self.count > 1 else 0.0

    def update(self, xs: torch.Tensor) -> None:
        n = xs.numel()
        if n == 0:
            return
        batch_mean, batch_var = xs.double().mean().item(), xs.double().var(unbiased=False).item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.mean += delta * n / total
        self.count = total

    def normalize(self, xs: torch.Tensor) -> torch.Tensor:
        """`xs` to the running mean 0 / std 1; unchanged until two scores have been seen."""
        if self.count < 2:
            return xs
        return (xs - self.mean) / (self.std + 1e-8)
