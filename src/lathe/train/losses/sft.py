"""SFT's token losses beyond plain cross-entropy: DFT, ASFT and EAFT (`use_<name>_loss`).

Each reweights the cross-entropy of every learned token. They are LLaMA-Factory's
(`train/trainer_utils.py`: `dft_loss_func`, `asft_loss_func`, `eaft_loss_func`), written from
their formulas:

- DFT (Dynamic Fine-Tuning, Wu et al. 2025, arXiv:2508.05629): each token's NLL times the
  probability the model gives that token, detached: `p(y) * -log p(y)`. Tokens the model finds
  unlikely weigh less, which the paper argues turns SFT's implicit reward into a bounded one.
- ASFT (Anchored SFT, arXiv:2509.23711): DFT plus `asft_alpha` x a per-token KL to the
  reference model, which keeps DFT from drifting. The KL is LLaMA-Factory's,
  `torch.nn.functional.kl_div(log p_policy, p_ref)` summed over the vocabulary, that is
  KL(p_ref || p_policy) = sum_v p_ref (log p_ref - log p_policy).
- EAFT (entropy-aware fine-tuning): each token's NLL times `(H / 3) ** eaft_alpha`, detached,
  where H is the entropy of the model's distribution there restricted to its 20 most likely
  tokens (renormalised). 3 is about ln 20, the largest such entropy, so the weight lies in
  [0, 1]: tokens where the model is confident weigh less.

Inputs are already aligned: `targets[..., t]` is the token `logits[..., t, :]` predicts (the
shift is the caller's, so logits kept only at learned positions work unchanged), and
positions with `ignore_index` add nothing. Logits are upcast to float32, as LLaMA-Factory does.
`chunked_<name>_loss` is the same loss from the final hidden states and the output layer, a
chunk of positions at a time (train/chunked_logits.py), for long sequences x large vocabularies.

Normalisation, as transformers' own causal-LM loss: the weighted token losses are summed and
divided by `num_items`, the learned tokens of the whole optimizer step (the Trainer's
`num_items_in_batch`, over every gradient-accumulation micro-batch), or, when the Trainer
gives none, averaged over this batch's learned tokens. DFT and EAFT are then exactly
LLaMA-Factory's; for ASFT LLaMA-Factory averages each term over the micro-batch and never
divides by the accumulation steps, so the two agree with one micro-batch per step and lathe's
keeps the same scale under gradient accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
import torch.nn.functional as F

from ...data.sample import IGNORE_INDEX
from ...registry import Choice

if TYPE_CHECKING:
    from ...config.options import FinetuningArguments
    from ..chunked_logits import Coefficient, OutputHead

EAFT_TOP_K = 20
EAFT_ENTROPY_SCALE = 3.0  # about ln(20): the entropy of 20 equally likely tokens


class SFTLossOutput(NamedTuple):
    """The loss (a scalar with gradients) and detached per-batch values to log."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


def _learned(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int):
    """The rows of the learned positions: logits `[N, V]` in float32, targets `[N]`."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} are not aligned.")
    mask = targets != ignore_index
    return logits[mask].float(), targets[mask]


def _reduce(token_losses: torch.Tensor, num_items: torch.Tensor | int | None) -> torch.Tensor:
    """Sum over the learned tokens / num_items (or their count); an empty batch gives a 0 that keeps the graph."""
    return reduce_tokens(token_losses.sum(), token_losses.numel(), num_items)


def reduce_tokens(total: torch.Tensor, count: int, num_items: torch.Tensor | int | None) -> torch.Tensor:
    """`total` (summed token losses) / num_items, or / `count` (this batch's learned tokens) when None."""
    if num_items is None:
        return total / max(count, 1)
    if torch.is_tensor(num_items):
        num_items = num_items.to(total.device)
    return total / num_items


def _mean(values: torch.Tensor) -> torch.Tensor:
    return values.detach().mean() if values.numel() else values.new_zeros(())


def dft_loss(logits: torch.Tensor, targets: torch.Tensor, num_items=None,
             ignore_index: int = IGNORE_INDEX) -> SFTLossOutput:
    """DFT: `sum_t p(y_t) * -log p(y_t) / num_items`, with p(y_t) detached.

    Logs `ce` (the plain mean token NLL of this batch, comparable with ordinary SFT's loss) and
    `dft_weight` (the mean p(y_t)).
    """
    flat, labels = _learned(logits, targets, ignore_index)
    nll = F.cross_entropy(flat, labels, reduction="none")
    prob = torch.exp(-nll).detach()
    return SFTLossOutput(_reduce(nll * prob, num_items), {"ce": _mean(nll), "dft_weight": _mean(prob)})


def top_k_entropy(logits: torch.Tensor, k: int = EAFT_TOP_K) -> torch.Tensor:
    """Entropy of the softmax over the `k` largest logits of each row (all of them if fewer), detached."""
    top = torch.topk(logits.detach().float(), k=min(k, logits.shape[-1]), dim=-1).values
    logp = torch.log_softmax(top, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def eaft_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, num_items=None,
              ignore_index: int = IGNORE_INDEX) -> SFTLossOutput:
    """EAFT: `sum_t (H_t / 3) ** alpha * -log p(y_t) / num_items`, H_t the top-20 entropy (detached).

    Logs `ce` and `eaft_weight` (the mean weight).
    """
    flat, labels = _learned(logits, targets, ignore_index)
    nll = F.cross_entropy(flat, labels, reduction="none")
    weight = torch.pow(top_k_entropy(flat) / EAFT_ENTROPY_SCALE, alpha)
    return SFTLossOutput(_reduce(nll * weight, num_items), {"ce": _mean(nll), "eaft_weight": _mean(weight)})


def token_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p_policy) per row, `[N]`: what LLaMA-Factory's ASFT anchors to."""
    log_p = torch.log_softmax(policy_logits.float(), dim=-1)
    log_q = torch.log_softmax(ref_logits.float(), dim=-1)
    return F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)


def asft_loss(logits: torch.Tensor, ref_logits: torch.Tensor, targets: torch.Tensor, alpha: float,
              num_items=None, ignore_index: int = IGNORE_INDEX) -> SFTLossOutput:
    """ASFT: the DFT loss + `alpha * sum_t KL_t / num_items`, KL_t = KL(p_ref || p_policy) at token t.

    `ref_logits` are the reference model's at the same positions (no gradient). Logs `ce`,
    `dft_weight`, `dft_loss` and `kl` (the mean per-token KL).
    """
    if ref_logits.shape != logits.shape:
        raise ValueError(f"reference logits {tuple(ref_logits.shape)} differ from the policy's {tuple(logits.shape)}.")
    dft = dft_loss(logits, targets, num_items, ignore_index)
    mask = targets != ignore_index
    kl = token_kl(logits[mask], ref_logits[mask].detach())
    loss = dft.loss + alpha * _reduce(kl, num_items)
    return SFTLossOutput(loss, {**dft.metrics, "dft_loss": dft.loss.detach(), "kl": _mean(kl)})


# --------------------------------------------------------------------------- from hidden states, in chunks
# The same losses where the logits are never whole (train/chunked_logits.py): the coefficient of
# each token is computed from its chunk of logits, and the metrics from the per-token values.


def dft_coefficient(logits: torch.Tensor, nll: torch.Tensor) -> torch.Tensor:
    """DFT's weight p(y) = exp(-nll), detached."""
    return torch.exp(-nll)


def eaft_coefficient(alpha: float) -> "Coefficient":
    """EAFT's weight (H_top20 / 3) ** alpha from a chunk's logits, detached."""
    def coefficient(logits: torch.Tensor, nll: torch.Tensor) -> torch.Tensor:
        return torch.pow(top_k_entropy(logits) / EAFT_ENTROPY_SCALE, alpha)
    return coefficient


def chunked_dft_loss(hidden, head: "OutputHead", targets, num_items=None) -> SFTLossOutput:
    """`dft_loss` from the final hidden states and the output layer, a chunk of positions at a time."""
    from ..chunked_logits import chunked_token_losses

    out = chunked_token_losses(hidden, head, targets, coefficient=dft_coefficient)
    return SFTLossOutput(reduce_tokens(out.total, out.nll.numel(), num_items),
                         {"ce": _mean(out.nll), "dft_weight": _mean(out.coefficient)})


def chunked_eaft_loss(hidden, head: "OutputHead", targets, alpha: float, num_items=None) -> SFTLossOutput:
    """`eaft_loss` from the final hidden states and the output layer, a chunk of positions at a time."""
    from ..chunked_logits import chunked_token_losses

    out = chunked_token_losses(hidden, head, targets, coefficient=eaft_coefficient(alpha))
    return SFTLossOutput(reduce_tokens(out.total, out.nll.numel(), num_items),
                         {"ce": _mean(out.nll), "eaft_weight": _mean(out.coefficient)})


def chunked_asft_loss(hidden, head: "OutputHead", ref_hidden, ref_head: "OutputHead", targets, alpha: float,
                      num_items=None) -> SFTLossOutput:
    """`asft_loss` from the policy's and the reference's final hidden states and output layers, in chunks."""
    from ..chunked_logits import chunked_token_losses

    out = chunked_token_losses(hidden, head, targets, coefficient=dft_coefficient, ref_hidden=ref_hidden,
                               ref_head=ref_head, alpha=alpha)
    count = out.nll.numel()
    dft = reduce_tokens((out.nll * out.coefficient).sum(), count, num_items)
    return SFTLossOutput(reduce_tokens(out.total, count, num_items),
                         {"ce": _mean(out.nll), "dft_weight": _mean(out.coefficient), "dft_loss": dft.detach(),
                          "kl": _mean(out.kl)})


# --------------------------------------------------------------------------- the choices


@dataclass(frozen=True, kw_only=True)
class SFTLoss(Choice):
    """One `use_<name>_loss` flag: `compute(logits, targets, ref_logits, num_items, args) -> SFTLossOutput`.

    `chunked(hidden, head, targets, ref_hidden, ref_head, num_items, args)` is the same loss
    from the final hidden states and the output layer, never holding the whole logits
    (train/chunked_logits.py). `reference`: the loss compares with the reference model (its
    logits, or its hidden states and head, at the same positions are passed; None otherwise).
    `options` are the keys that only this loss reads.
    """

    flag: str
    compute: Callable[..., SFTLossOutput] = field(compare=False)
    chunked: Callable[..., SFTLossOutput] = field(compare=False)
    reference: bool = False


def _dft(logits, targets, ref_logits, num_items, args) -> SFTLossOutput:
    return dft_loss(logits, targets, num_items)


def _asft(logits, targets, ref_logits, num_items, args) -> SFTLossOutput:
    return asft_loss(logits, ref_logits, targets, args.asft_alpha, num_items)


def _eaft(logits, targets, ref_logits, num_items, args) -> SFTLossOutput:
    return eaft_loss(logits, targets, args.eaft_alpha, num_items)


def _dft_chunked(hidden, head, targets, ref_hidden, ref_head, num_items, args) -> SFTLossOutput:
    return chunked_dft_loss(hidden, head, targets, num_items)


def _asft_chunked(hidden, head, targets, ref_hidden, ref_head, num_items, args) -> SFTLossOutput:
    return chunked_asft_loss(hidden, head, ref_hidden, ref_head, targets, args.asft_alpha, num_items)


def _eaft_chunked(hidden, head, targets, ref_hidden, ref_head, num_items, args) -> SFTLossOutput:
    return chunked_eaft_loss(hidden, head, targets, args.eaft_alpha, num_items)


DFT = SFTLoss(name="dft", flag="use_dft_loss", help="Dynamic Fine-Tuning", compute=_dft, chunked=_dft_chunked)
ASFT = SFTLoss(name="asft", flag="use_asft_loss", help="Anchored SFT: DFT + KL to the reference", compute=_asft,
               chunked=_asft_chunked, reference=True, options=("asft_alpha",))
EAFT = SFTLoss(name="eaft", flag="use_eaft_loss", help="entropy-aware fine-tuning", compute=_eaft,
               chunked=_eaft_chunked, options=("eaft_alpha",))
SFT_LOSSES: tuple[SFTLoss, ...] = (DFT, ASFT, EAFT)


def chosen_sft_losses(args: "FinetuningArguments") -> list[SFTLoss]:
    """The losses whose flag is on (the sft stage refuses more than one)."""
    return [loss for loss in SFT_LOSSES if getattr(args, loss.flag)]
