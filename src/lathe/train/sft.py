"""Supervised fine-tuning: chat samples, answers learned, the prompt masked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..data.loader import packing_enabled
from ..data.packing import FlatteningCollator
from .base import log_streamed_report, setup_run, train_and_save
from .callbacks import JsonlLogCallback

if TYPE_CHECKING:
    from ..config import RunConfig
    from . import StageResult


def run_sft(cfg: "RunConfig") -> "StageResult":
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer

    from . import StageResult

    run = setup_run(cfg)
    if packing_enabled(cfg):
        collator = FlatteningCollator()  # packed rows: one flat row per batch, no padding
    else:
        collator = DataCollatorForSeq2Seq(run.tokenizer, label_pad_token_id=-100, pad_to_multiple_of=None)
    trainer = Seq2SeqTrainer(
        model=run.model,
        args=cfg.training,
        train_dataset=run.data.train,
        eval_dataset=run.data.eval,
        data_collator=collator,
        processing_class=run.tokenizer,
        callbacks=[JsonlLogCallback()],
    )
    metrics = train_and_save(trainer, cfg, run.resume)
    log_streamed_report(run.data)
    return StageResult(metrics, trainer.model, run.tokenizer)
