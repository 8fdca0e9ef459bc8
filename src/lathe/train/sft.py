"""Supervised fine-tuning: chat samples, answers learned, the prompt masked.

With `do_predict`, the held-out prompts are answered after training: generated and scored
with BLEU/ROUGE (`predict_with_generate`), or only their loss.
"""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING

from ..data.loader import packing_enabled
from ..data.packing import FlatteningCollator
from ..model.adapters.common import base_model
from .base import build_and_train, setup_run
from .learned_logits import LearnedLogitsMixin

if TYPE_CHECKING:
    from ..config import RunConfig
    from . import StageResult


def run_sft(cfg: "RunConfig") -> "StageResult":
    from transformers import DataCollatorForSeq2Seq, Trainer

    from . import StageResult

    t = cfg.training
    if t.do_predict and t.predict_with_generate:
        from ..evaluate.similarity import check_available

        check_available()  # before hours of training, not after
    run = setup_run(cfg)
    if packing_enabled(cfg):
        collator = FlatteningCollator()  # packed rows: one flat row per batch, no padding
    elif padding_free(cfg, run.model):  # the same batches, flattened: no padding token computed (docs/benchmarks.md)
        from transformers import DataCollatorWithFlattening

        collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    else:
        collator = DataCollatorForSeq2Seq(run.tokenizer, label_pad_token_id=-100, pad_to_multiple_of=None)
    extra = {}
    if cfg.finetuning.compute_accuracy:
        from ..evaluate.accuracy import argmax_logits, token_accuracy

        extra = {"compute_metrics": token_accuracy, "preprocess_logits_for_metrics": argmax_logits}
    trainer_cls = type("SFTTrainer", (LearnedLogitsMixin, Trainer), {})
    trainer, metrics = build_and_train(cfg, run, trainer_cls, collator, **extra)
    if t.do_predict:
        metrics.update(_predict(trainer, run, cfg))
    return StageResult(metrics, trainer.model, run.tokenizer)


def padding_free(cfg: "RunConfig", model) -> bool:
    """Flatten batches: as the config says, or (unset) wherever the model keeps flattened samples apart.

    A flattened batch is one row whose position ids restart at each sample; transformers' mask
    builder (`create_causal_mask`) turns that into a block-diagonal mask. A model whose code
    does not use it (old or remote-code architectures) would let samples attend to each other,
    so there the default stays padded batches.
    """
    if "padding_free" in cfg.explicit:
        return cfg.data.padding_free
    if cfg.model.shift_attn:
        return False
    base = base_model(model)
    try:
        source = inspect.getsource(sys.modules[type(base).__module__])
    except (OSError, TypeError, KeyError):
        return False
    return "create_causal_mask" in source


def _predict(trainer, run, cfg: "RunConfig") -> dict:
    if cfg.training.predict_with_generate:
        from ..evaluate.predict import predict

        metrics = predict(trainer.model, run.tokenizer, run.template, run.data.eval, cfg)
    else:
        metrics = trainer.predict(run.data.eval, metric_key_prefix="predict").metrics
    trainer.log_metrics("predict", metrics)
    trainer.save_metrics("predict", metrics)
    return metrics
