"""Supervised fine-tuning: chat samples, answers learned, the prompt masked."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..data.loader import get_dataset
from ..data.packing import FlatteningCollator
from ..data.templates import resolve_template
from ..model.adapters import apply_method
from ..model.load import add_config_tokens, enable_gradient_checkpointing, load_model, load_tokenizer
from .base import prepare_output_dir, save_run_config, train_and_save
from .callbacks import JsonlLogCallback

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..config import RunConfig
    from . import StageResult


def run_sft(cfg: "RunConfig") -> "StageResult":
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer

    resume = prepare_output_dir(cfg)
    tokenizer = load_tokenizer(cfg.model)
    template = resolve_template(cfg.data.template, tokenizer)
    added = template.fix_tokenizer(tokenizer) + add_config_tokens(tokenizer, cfg.model)
    data = get_dataset(cfg, tokenizer, template)  # data errors surface before the weights load
    save_run_config(cfg)

    model = load_model(cfg, tokenizer)
    if cfg.training.do_train and not cfg.model.disable_gradient_checkpointing:
        enable_gradient_checkpointing(model, cfg.model.use_reentrant_gc)
    model = apply_method(model, cfg, new_token_rows=bool(added) or cfg.model.resize_vocab)

    if cfg.data.packing or cfg.data.neat_packing:
        collator = FlatteningCollator()  # packed rows: one flat row per batch, no padding
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, pad_to_multiple_of=None)
    trainer = Seq2SeqTrainer(
        model=model,
        args=cfg.training,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[JsonlLogCallback()],
    )
    from . import StageResult

    metrics = train_and_save(trainer, cfg, resume)
    if data.streaming:  # the stream's report is complete only now that training has read it
        for line in data.report.lines():
            logger.info("data (streamed): %s", line)
    return StageResult(metrics, trainer.model, tokenizer)
