"""DPO's preference losses (`pref_loss`), one registered descriptor each, and KTO's loss.

A preference loss compares the log-probabilities of the chosen and rejected answer of a pair.
Each `PreferenceLoss` says what the DPO stage needs to know to run it: whether it compares
with a reference model, whether it takes per-token average log-probs or sums, how much SFT
loss on the chosen answer goes with it, which options are its own, and the pure function
that computes it. Adding a loss is one descriptor (here, or in any module that registers
it: docs/architecture.md has a worked example).

BCO (`pref_bco_weight`) is not a `pref_loss` but a term mixed into one (`bco_loss`, with
its running reward baseline `RunningMean`). KTO (unpaired good / bad answers) is its own
stage; its loss is the last function here (`kto_pair` is KTO's formula on DPO's pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
import torch.nn.functional as F

from ...errors import LatheError
from ...registry import PREFERENCE_LOSSES, Choice

if TYPE_CHECKING:
    from ...config import RunConfig
    from ...config.options import FinetuningArguments


class PreferenceOutput(NamedTuple):
    """Per-pair losses `[B]` and the implicit rewards of the chosen / rejected answers (detached, for logs)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    metrics: dict[str, torch.Tensor] | None = None  # extra per-pair values to log (ORPO's log-odds ratio)


def _pref_ftx(args: "FinetuningArguments") -> float:
    return args.pref_ftx


@dataclass(frozen=True, kw_only=True)
class PreferenceLoss(Choice):
    """One `pref_loss`: `compute(chosen, rejected, ref_chosen, ref_rejected, args) -> PreferenceOutput`.

    The four inputs are `[B]` log-probs of the answers: sums over their tokens, or per-token
    averages when `average`; the reference pair is None when `reference` is false.
    `sft_weight(args)` weighs the mean token NLL of the chosen answer added to the loss
    (`pref_ftx` by default; ORPO's own SFT term has weight 1 and ignores it).
    """

    compute: Callable[..., PreferenceOutput] = field(compare=False)
    reference: bool = True
    average: bool = False
    sft_weight: Callable[["FinetuningArguments"], float] = field(default=_pref_ftx, compare=False)


def _rewards(beta: float, chosen, rejected) -> tuple[torch.Tensor, torch.Tensor]:
    """The implicit rewards `beta * x` of the chosen and rejected answers, detached (for logs): x is the
    log-ratio to the reference, or the log-prob itself for a loss without one."""
    return beta * chosen.detach(), beta * rejected.detach()


def _margin(chosen, rejected, ref_chosen, ref_rejected) -> torch.Tensor:
    """h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected): the log-ratio difference."""
    return (chosen - ref_chosen) - (rejected - ref_rejected)


# --------------------------------------------------------------------------- sigmoid (DPO)


def sigmoid_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                 ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290): `-log sigmoid(beta * h)` per pair, on summed log-probs.

    With `label_smoothing = eps` it is conservative DPO (cDPO, Mitchell 2023): the preference
    label is assumed flipped with probability eps, so
    `-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)`. eps = 0.5 makes the loss
    symmetric in h (no preference is learned); eps must lie in [0, 0.5].
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}.")
    h = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def _sigmoid(chosen, rejected, ref_chosen, ref_rejected, args) -> PreferenceOutput:
    losses = sigmoid_loss(chosen, rejected, ref_chosen, ref_rejected, args.pref_beta, args.dpo_label_smoothing)
    return PreferenceOutput(losses, *_rewards(args.pref_beta, chosen - ref_chosen, rejected - ref_rejected))


PREFERENCE_LOSSES.register(PreferenceLoss(
    name="sigmoid", help="DPO", compute=_sigmoid, options=("dpo_label_smoothing",),
))


# --------------------------------------------------------------------------- hinge


def hinge_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """RSO's hinge loss (Liu et al. 2023, arXiv:2309.06657): `max(0, 1 - beta * h)` on summed
    log-probs, zero once the margin h reaches 1/beta."""
    return torch.relu(1 - beta * _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected))


def _hinge(chosen, rejected, ref_chosen, ref_rejected, args) -> PreferenceOutput:
    losses = hinge_loss(chosen, rejected, ref_chosen, ref_rejected, args.pref_beta)
    return PreferenceOutput(losses, *_rewards(args.pref_beta, chosen - ref_chosen, rejected - ref_rejected))


PREFERENCE_LOSSES.register(PreferenceLoss(name="hinge", help="RSO's hinge", compute=_hinge))


# --------------------------------------------------------------------------- ipo


def ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, arXiv:2310.12036): `(h - 1/(2 beta))^2`, a squared loss whose minimum
    sits at h = 1/(2 beta), so the margin stays bounded instead of growing without limit as in DPO.

    IPO defines h on **per-token average** log-probs: the caller passes `sum_logps / num_tokens`
    for all four inputs (with sums, the target margin 1/(2 beta) would be compared against a
    quantity that scales with answer length).
    """
    return (_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected) - 1 / (2 * beta)) ** 2


def _ipo(chosen, rejected, ref_chosen, ref_rejected, args) -> PreferenceOutput:
    losses = ipo_loss(chosen, rejected, ref_chosen, ref_rejected, args.pref_beta)
    return PreferenceOutput(losses, *_rewards(args.pref_beta, chosen - ref_chosen, rejected - ref_rejected))


PREFERENCE_LOSSES.register(PreferenceLoss(name="ipo", help="IPO, on per-token averages", compute=_ipo, average=True))


# --------------------------------------------------------------------------- kto_pair


def kto_pair_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                  ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """KTO on pairs, as TRL's DPOTrainer had it (`loss_type="kto_pair"`, HALOs eq. 7; TRL removed it in
    0.9 in favour of its KTOTrainer, which is lathe's `stage: kto`).

    With r_c, r_r the chosen / rejected log-ratios to the reference (summed log-probs), each
    side's reference point is the batch-mean log-ratio of the *other* side, floored at 0:

        z_c = max(0, mean(r_c)),  z_r = max(0, mean(r_r))
        chosen:    1 - sigmoid(beta * (r_c - z_r))
        rejected:  1 - sigmoid(beta * (z_c - r_r))

    TRL concatenates the two halves and averages all 2B terms; here pair i's loss is the mean
    of its two terms, which has the same batch mean. As in TRL, z_c and z_r are not detached
    (they carry gradient through the batch means).
    """
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    chosen_kl = chosen_ratio.mean().clamp(min=0)
    rejected_kl = rejected_ratio.mean().clamp(min=0)
    chosen_losses = 1 - torch.sigmoid(beta * (chosen_ratio - rejected_kl))
    rejected_losses = 1 - torch.sigmoid(beta * (chosen_kl - rejected_ratio))
    return (chosen_losses + rejected_losses) / 2


def _kto_pair(chosen, rejected, ref_chosen, ref_rejected, args) -> PreferenceOutput:
    losses = kto_pair_loss(chosen, rejected, ref_chosen, ref_rejected, args.pref_beta)
    return PreferenceOutput(losses, *_rewards(args.pref_beta, chosen - ref_chosen, rejected - ref_rejected))


PREFERENCE_LOSSES.register(PreferenceLoss(name="kto_pair", help="KTO on pairs (TRL's kto_pair)", compute=_kto_pair))


# --------------------------------------------------------------------------- BCO, added to a loss (pref_bco_weight)


def bco_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, baseline: torch.Tensor | float) -> torch.Tensor:
    """BCO (Jung et al. 2024, arXiv:2404.04656): each answer classified as good or bad by its reward.

    With rewards beta * r (r the log-ratio to the reference) and delta a running mean of the
    rewards (`RunningMean`, no gradient):

        losses = -log sigmoid(beta * r_c - delta) - log sigmoid(-(beta * r_r - delta))

    The DPO stage mixes it in as LLaMA-Factory does (`pref_bco_weight` w):
    `(loss + w * bco) / (1 + w)`.
    """
    delta = torch.as_tensor(baseline, dtype=policy_chosen.dtype, device=policy_chosen.device).detach()
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))


def mix_bco(losses: torch.Tensor, bco: torch.Tensor, weight: float) -> torch.Tensor:
    """LLaMA-Factory's re-weighting of the preference loss and the BCO term: `(losses + w * bco) / (1 + w)`."""
    return (losses + weight * bco) / (1 + weight)


class RunningMean:
    """BCO's reward baseline: the running mean of every value seen so far.

    TRL's `RunningMoments` (count starting at 1e-24, so the first update sets the mean) reduced
    to the mean, the only moment BCO reads. LLaMA-Factory feeds it one value per step and
    process, the batch-mean reward; the caller gathers those across processes first.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.count = 1e-24

    @torch.no_grad()
    def update(self, values: torch.Tensor) -> float:
        """Fold `values` in; returns the new mean."""
        values = values.detach().float().reshape(-1)
        n = values.numel()
        if n:
            total = self.count + n
            self.mean += (values.mean().item() - self.mean) * n / total
            self.count = total
        return self.mean


# --------------------------------------------------------------------------- orpo and simpo: no reference model


def _check_no_reference(cfg: "RunConfig") -> None:
    f = cfg.finetuning
    if f.ref_model:
        raise LatheError(f"{cfg.source}: `pref_loss: {f.pref_loss}` uses no reference model; remove `ref_model`.")


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


def _orpo(chosen, rejected, ref_chosen, ref_rejected, args) -> PreferenceOutput:
    losses, log_odds = orpo_loss(chosen, rejected, args.pref_beta)
    return PreferenceOutput(losses, *_rewards(args.pref_beta, chosen, rejected), metrics={"log_odds_ratio": log_odds})


def _one(args: "FinetuningArguments") -> float:
    return 1.0


PREFERENCE_LOSSES.register(PreferenceLoss(
    name="orpo", help="odds ratio + SFT, no reference", compute=_orpo, reference=False, average=True,
    sft_weight=_one, check=_check_no_reference,
))


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


def _simpo(chosen, rejected, ref_chosen, ref_rejected, args) -> PreferenceOutput:
    losses = simpo_loss(chosen, rejected, args.pref_beta, args.simpo_gamma)
    return PreferenceOutput(losses, *_rewards(args.pref_beta, chosen, rejected))


PREFERENCE_LOSSES.register(PreferenceLoss(
    name="simpo", help="length-normalised, no reference", compute=_simpo, reference=False, average=True,
    check=_check_no_reference,
))


# --------------------------------------------------------------------------- KTO (its own stage, not a pref_loss)


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
