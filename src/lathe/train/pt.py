"""Pre-training (continued): plain text, every token learned, packed into cutoff_len blocks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..data.loader import packing_enabled
from ..data.packing import FlatteningCollator
from .base import build_and_train, setup_run

if TYPE_CHECKING:
    from ..config import RunConfig
    from . import StageResult


def run_pt(cfg: "RunConfig") -> "StageResult":
    from transformers import DataCollatorForSeq2Seq, Trainer

    from . import StageResult

    run = setup_run(cfg)
    collator = FlatteningCollator() if packing_enabled(cfg) else DataCollatorForSeq2Seq(run.tokenizer, label_pad_token_id=-100)
    trainer, metrics = build_and_train(cfg, run, Trainer, collator)  # eval adds eval_perplexity = exp(eval_loss)
    return StageResult(metrics, trainer.model, run.tokenizer)
