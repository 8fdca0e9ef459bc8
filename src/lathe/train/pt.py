"""Pre-training (continued): plain text, every token learned, packed into cutoff_len blocks.

Its Trainer computes the model's loss with the output layer in chunks of positions where the
logits of a micro-batch would be big (learned_logits.py, chunked_logits.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..data.packing import FlatteningCollator, packing_enabled
from ..data.processors import PRETRAIN
from ..registry import STAGES
from .base import build_and_train, setup_run
from .learned_logits import LearnedLogitsMixin
from .stage import Stage, StageResult
from .trainers import LatheTrainer

if TYPE_CHECKING:
    from ..config import RunConfig


class PTTrainer(LearnedLogitsMixin, LatheTrainer):
    """Pre-training's Trainer: the model's loss, its logits kept to learned positions and chunked when big."""


def run_pt(cfg: "RunConfig") -> StageResult:
    from transformers import DataCollatorForSeq2Seq

    run = setup_run(cfg)
    collator = FlatteningCollator() if packing_enabled(cfg) else DataCollatorForSeq2Seq(run.tokenizer, label_pad_token_id=-100)
    trainer, metrics = build_and_train(cfg, run, PTTrainer, collator, eval_perplexity=True)
    return StageResult(metrics, trainer.model, run.tokenizer)


PT = STAGES.register(Stage(
    name="pt", help="pre-training on plain text", run=run_pt, processor=PRETRAIN, packs_by_default=True,
    perplexity=True, model_loss=True,
))
