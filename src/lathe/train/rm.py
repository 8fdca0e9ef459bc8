"""Reward modelling: a scalar head learns to score the chosen answer above the rejected one.

loss = -log sigmoid(r_chosen - r_rejected); the logged accuracy is the share of pairs the
model ranks right. The saved folder (backbone + value_head.safetensors) loads with
`lathe.model.value_head.load_reward_model` for PPO and the API.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..data.collate import PairwiseCollator
from ..data.processors import PAIRWISE
from ..model.value_head import ValueHeadModel
from ..registry import STAGES
from .base import build_and_train, setup_run
from .learned_logits import media_inputs
from .losses.reward import pairwise_accuracy, pairwise_reward_loss
from .stage import Stage, StageResult
from .trainers import MeanLossTrainer

if TYPE_CHECKING:
    from ..config import RunConfig


class RewardTrainer(MeanLossTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        scores = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **media_inputs(inputs))
        half = scores.shape[0] // 2
        chosen, rejected = scores[:half], scores[half:]
        loss = pairwise_reward_loss(chosen, rejected)
        self.store_metrics(accuracy=pairwise_accuracy(chosen, rejected), **{
            "rewards/chosen": chosen.detach(), "rewards/rejected": rejected.detach()})
        return (loss, {"chosen": chosen, "rejected": rejected}) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Backbone via save_pretrained plus the head file, instead of one opaque state dict."""
        output_dir = output_dir or self.args.output_dir
        self.model.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        (model or self.model).load_weights(Path(resume_from_checkpoint))


def run_rm(cfg: "RunConfig") -> StageResult:
    run = setup_run(cfg)
    from ..data.media.collate import pair_rows

    collator = run.collator(PairwiseCollator(run.tokenizer.pad_token_id), pair_rows)  # media: chosen rows, then rejected
    trainer, metrics = build_and_train(cfg, run, RewardTrainer, collator, model=ValueHeadModel(run.model))
    return StageResult(metrics, trainer.model, run.tokenizer)


RM = STAGES.register(Stage(name="rm", help="reward modelling on pairs", media=True, run=run_rm, processor=PAIRWISE))
