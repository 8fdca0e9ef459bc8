"""DPO and its variants: learn from chosen/rejected pairs, with the loss `pref_loss` names.

Each loss is a registered `PreferenceLoss` (losses/preference.py) that says whether it
compares with a reference model and whether it takes per-token averages; this module only
computes the log-probs it asks for and adds the SFT term (`pref_ftx`) it weighs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..data.collate import PairwiseCollator
from ..data.processors import PAIRWISE
from ..registry import PREFERENCE_LOSSES, STAGES
from .losses.logps import sequence_logps
from .reference import reference_logps, run_with_reference
from .stage import Stage, StageResult
from .trainers import MeanLossTrainer

if TYPE_CHECKING:
    from ..config import RunConfig


class DPOTrainer(MeanLossTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        f = self.finetuning
        loss_type = PREFERENCE_LOSSES[f.pref_loss]
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        sums, counts = sequence_logps(logits, inputs["labels"])
        half = sums.shape[0] // 2
        avgs = sums / counts.clamp(min=1)
        policy = avgs if loss_type.average else sums
        ref_chosen = ref_rejected = None
        if loss_type.reference:
            ref_sums, ref_counts = reference_logps(model, self.ref_model, inputs)
            ref = ref_sums / ref_counts.clamp(min=1) if loss_type.average else ref_sums
            ref_chosen, ref_rejected = ref[:half], ref[half:]
        out = loss_type.compute(policy[:half], policy[half:], ref_chosen, ref_rejected, f)
        losses = out.losses
        sft_weight = loss_type.sft_weight(f)
        if sft_weight > 0:
            losses = losses + sft_weight * -avgs[:half]  # the mean token NLL of the chosen answers
        self.store_metrics(**(out.metrics or {}), **{
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


def run_dpo(cfg: "RunConfig") -> StageResult:
    return run_with_reference(cfg, DPOTrainer, PairwiseCollator, PREFERENCE_LOSSES[cfg.finetuning.pref_loss].reference)


DPO = STAGES.register(Stage(
    name="dpo", help="preference pairs, with the loss `pref_loss` names", run=run_dpo, processor=PAIRWISE,
))
