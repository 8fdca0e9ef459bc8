"""DPO and its variants: learn from chosen/rejected pairs (`pref_loss`).

sigmoid (DPO), hinge and ipo compare the policy with a reference model; orpo and simpo need
none. `pref_ftx` adds the SFT loss of the chosen answers. The losses themselves are the pure
functions of `losses.py`; this module only computes log-probs and wires them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING


from ..data.collate import PairwiseCollator
from .losses import dpo_loss, orpo_loss, sequence_logps, simpo_loss
from .metrics import MeanLossTrainer
from .reference import reference_logps, run_with_reference

if TYPE_CHECKING:
    from ..config import RunConfig
    from . import StageResult


class DPOTrainer(MeanLossTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        f = self.finetuning
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        sums, counts = sequence_logps(logits, inputs["labels"])
        half = sums.shape[0] // 2
        avgs = sums / counts.clamp(min=1)
        chosen_avg, rejected_avg = avgs[:half], avgs[half:]
        nll = -chosen_avg  # the SFT loss of the chosen answers, per token
        if f.pref_loss == "orpo":
            losses, log_odds = orpo_loss(chosen_avg, rejected_avg, f.pref_beta)
            losses = nll + losses
            chosen_rewards, rejected_rewards = f.pref_beta * chosen_avg.detach(), f.pref_beta * rejected_avg.detach()
            self.store_metrics(log_odds_ratio=log_odds)
        elif f.pref_loss == "simpo":
            losses = simpo_loss(chosen_avg, rejected_avg, f.pref_beta, f.simpo_gamma)
            chosen_rewards, rejected_rewards = f.pref_beta * chosen_avg.detach(), f.pref_beta * rejected_avg.detach()
        else:
            ref_sums, ref_counts = reference_logps(model, self.ref_model, inputs)
            if f.pref_loss == "ipo":  # IPO is defined on per-token averages
                policy, ref = avgs, ref_sums / ref_counts.clamp(min=1)
            else:
                policy, ref = sums, ref_sums
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                policy[:half], policy[half:], ref[:half], ref[half:], f.pref_beta, f.pref_loss, f.dpo_label_smoothing
            )
        if f.pref_ftx > 0 and f.pref_loss != "orpo":
            losses = losses + f.pref_ftx * nll
        self.store_metrics(**{
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": sums[:half].detach(),
            "logps/rejected": sums[half:].detach(),
        })
        loss = losses.mean()
        return (loss, {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}) if return_outputs else loss


def run_dpo(cfg: "RunConfig") -> "StageResult":
    return run_with_reference(cfg, DPOTrainer, PairwiseCollator)
