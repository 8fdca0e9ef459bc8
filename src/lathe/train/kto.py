"""KTO: learn from answers labelled desirable or undesirable, no pairs needed.

Each answer's log-ratio against the reference is pushed above (desirable) or below
(undesirable) a reference point, the KL between policy and reference measured on mismatched
prompt/answer pairs of the same batch. `kto_chosen_weight` / `kto_rejected_weight` balance
the two kinds; `pref_ftx` adds SFT loss on the desirable answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..data.collate import FeedbackCollator
from ..data.processors import FEEDBACK
from ..registry import STAGES
from .losses.preference import kto_loss
from .reference import check_reference_options, run_with_reference
from .stage import Stage, StageResult
from .trainers import MeanLossTrainer

if TYPE_CHECKING:
    from ..config import RunConfig


class KTOTrainer(MeanLossTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        f = self.finetuning
        main, kl_batch = split_kl(inputs)
        policy, counts = self.sequence_logps(model, main)
        with torch.no_grad():  # the reference point carries no gradient
            policy_kl, _ = self.sequence_logps(model, kl_batch)
            ref_kl, _ = self.reference_sequence_logps(model, kl_batch)
            ref, _ = self.reference_sequence_logps(model, main)
        kl = (policy_kl - ref_kl).mean().clamp(min=0)
        tags = inputs["kto_tags"]
        losses, chosen_rewards, rejected_rewards = kto_loss(
            policy[tags], policy[~tags], ref[tags], ref[~tags], kl, f.pref_beta,
            desirable_weight=f.kto_chosen_weight, undesirable_weight=f.kto_rejected_weight,
        )
        loss = losses.mean()
        if f.pref_ftx > 0 and tags.any():
            loss = loss + f.pref_ftx * (-(policy[tags] / counts[tags].clamp(min=1))).mean()
        metrics = {"kl": kl}
        if tags.any():
            metrics["rewards/chosen"] = chosen_rewards
        if (~tags).any():
            metrics["rewards/rejected"] = rejected_rewards
        self.store_metrics(**metrics)
        return (loss, {"kl": kl}) if return_outputs else loss


TEXT = ("input_ids", "attention_mask", "labels")


def split_kl(inputs: dict) -> tuple[dict, dict]:
    """The batch's own rows and its KL rows (prompt i with answer i+1), each with the media tensors.

    A KL row's prompt is its own sample's, so its media are the same; what follows the ids (a multimodal
    model's per-token types) comes with a `kl_` prefix from the collator and replaces the rows' own."""
    media = {k: v for k, v in inputs.items() if k not in (*TEXT, "kto_tags") and not k.startswith("kl_")}
    kl_own = {k[len("kl_"):]: v for k, v in inputs.items() if k.startswith("kl_")}
    main = {**media, **{k: inputs[k] for k in TEXT}}
    return main, {**media, **kl_own}


def run_kto(cfg: "RunConfig") -> StageResult:
    return run_with_reference(cfg, KTOTrainer, FeedbackCollator)


KTO = STAGES.register(Stage(
    name="kto", help="answers labelled desirable or not", media=True, run=run_kto, processor=FEEDBACK,
    check=check_reference_options,
))
