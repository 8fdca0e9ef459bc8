"""Pre-training (continued): plain text, every token learned, packed into cutoff_len blocks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..data.loader import packing_enabled
from ..data.packing import FlatteningCollator
from .base import log_streamed_report, setup_run, train_and_save
from .callbacks import JsonlLogCallback

if TYPE_CHECKING:
    from ..config import RunConfig
    from . import StageResult


def run_pt(cfg: "RunConfig") -> "StageResult":
    from transformers import DataCollatorForSeq2Seq, Trainer

    from . import StageResult

    run = setup_run(cfg)
    if packing_enabled(cfg):
        collator = FlatteningCollator()
    else:
        collator = DataCollatorForSeq2Seq(run.tokenizer, label_pad_token_id=-100)
    trainer = Trainer(
        model=run.model,
        args=cfg.training,
        train_dataset=run.data.train,
        eval_dataset=run.data.eval,
        data_collator=collator,
        processing_class=run.tokenizer,
        callbacks=[JsonlLogCallback()],
    )
    metrics = train_and_save(trainer, cfg, run.resume)  # eval adds eval_perplexity = exp(eval_loss)
    log_streamed_report(run.data)
    return StageResult(metrics, trainer.model, run.tokenizer)
