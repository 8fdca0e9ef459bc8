"""DPO and its variants: learn from chosen/rejected pairs, with the loss `pref_loss` names.

Each loss is a registered `PreferenceLoss` (losses/preference.py) that says whether it
compares with a reference model and whether it takes per-token averages; this module only
computes the log-probs it asks for and adds the SFT term (`pref_ftx`) it weighs. Two options
apply to any loss, as in LLaMA-Factory: `pref_bco_weight` mixes in BCO (a loss with a
reference model only) and `ld_alpha` (LD-DPO) down-weights the policy's log-probs of the
tokens past the shorter answer of each pair. The log-probs come from `MeanLossTrainer.sequence_logps`
(trainers.py): the output layer in chunks where the batch's logits would be big.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..data.collate import PairwiseCollator
from ..data.processors import PAIRWISE
from ..errors import LatheError
from ..registry import PREFERENCE_LOSSES, STAGES
from .losses.preference import RunningMean, bco_loss, mix_bco
from .reference import check_reference_options, run_with_reference
from .stage import Stage, StageResult
from .trainers import MeanLossTrainer

if TYPE_CHECKING:
    from ..config import RunConfig


class DPOTrainer(MeanLossTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bco_baseline = RunningMean() if self.finetuning.pref_bco_weight > 0 else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        f = self.finetuning
        loss_type = PREFERENCE_LOSSES[f.pref_loss]
        sums, counts = self.sequence_logps(model, inputs, ld_alpha=f.ld_alpha)  # the reference's: unweighted
        half = sums.shape[0] // 2
        avgs = sums / counts.clamp(min=1)
        policy = avgs if loss_type.average else sums
        ref_chosen = ref_rejected = None
        if loss_type.reference:
            ref_sums, ref_counts = self.reference_sequence_logps(model, inputs)
            ref = ref_sums / ref_counts.clamp(min=1) if loss_type.average else ref_sums
            ref_chosen, ref_rejected = ref[:half], ref[half:]
        out = loss_type.compute(policy[:half], policy[half:], ref_chosen, ref_rejected, f)
        losses = out.losses
        extra = dict(out.metrics or {})
        if self.bco_baseline is not None:
            losses, extra["bco_loss"], extra["bco_baseline"] = self._add_bco(losses, policy, ref_chosen, ref_rejected)
        sft_weight = loss_type.sft_weight(f)
        if sft_weight > 0:
            losses = losses + sft_weight * -avgs[:half]  # the mean token NLL of the chosen answers
        self.store_metrics(**extra, **{
            "rewards/chosen": out.chosen_rewards,
            "rewards/rejected": out.rejected_rewards,
            "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float(),
            "rewards/margins": out.chosen_rewards - out.rejected_rewards,
            "logps/chosen": sums[:half].detach(),
            "logps/rejected": sums[half:].detach(),
        })
        loss = losses.mean()
        if return_outputs:
            return loss, {"chosen_rewards": out.chosen_rewards, "rejected_rewards": out.rejected_rewards}
        return loss

    def _add_bco(self, losses, policy, ref_chosen, ref_rejected):
        """LLaMA-Factory's BCO term: the baseline is the running mean of each step's mean reward
        (chosen and rejected together, every process), updated before use, in training only."""
        f, half = self.finetuning, policy.shape[0] // 2
        rewards = f.pref_beta * (policy - torch.cat([ref_chosen, ref_rejected]))
        if self.model.training:
            self.bco_baseline.update(self.accelerator.gather(rewards.detach().mean().reshape(1)))
        bco = bco_loss(policy[:half], policy[half:], ref_chosen, ref_rejected, f.pref_beta, self.bco_baseline.mean)
        return mix_bco(losses, bco, f.pref_bco_weight), bco.detach(), self.bco_baseline.mean


def run_dpo(cfg: "RunConfig") -> StageResult:
    from ..data.media.collate import pair_rows

    return run_with_reference(cfg, DPOTrainer, PairwiseCollator, PREFERENCE_LOSSES[cfg.finetuning.pref_loss].reference,
                              rows=pair_rows)


def check_dpo(cfg: "RunConfig") -> None:
    """BCO compares rewards against the reference model: refused with a loss that has none."""
    check_reference_options(cfg)
    f = cfg.finetuning
    if f.pref_bco_weight > 0 and not PREFERENCE_LOSSES[f.pref_loss].reference:
        with_reference = ", ".join(name for name, loss in PREFERENCE_LOSSES.items() if loss.reference)
        raise LatheError(f"{cfg.source}: `pref_bco_weight` adds BCO, which scores answers against the reference "
                         f"model, and `pref_loss: {f.pref_loss}` uses none. Remove `pref_bco_weight` or pick a "
                         f"loss with a reference ({with_reference}).")


DPO = STAGES.register(Stage(
    name="dpo", help="preference pairs, with the loss `pref_loss` names", media=True, run=run_dpo, processor=PAIRWISE,
    options=("pref_bco_weight", "ld_alpha"), check=check_dpo,
))
