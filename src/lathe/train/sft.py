"""Supervised fine-tuning: chat samples, answers learned, the prompt masked.

With `do_predict`, the held-out prompts are answered after training: generated and scored
with BLEU/ROUGE (`predict_with_generate`), or only their loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..data.packing import FlatteningCollator, packing_enabled
from ..data.processors import SUPERVISED
from ..model.capabilities import separates_flattened_samples
from ..registry import STAGES
from .base import build_and_train, setup_run
from .learned_logits import LearnedLogitsMixin
from .stage import Stage, StageResult
from .trainers import LatheTrainer

if TYPE_CHECKING:
    from ..config import RunConfig


class SFTTrainer(LearnedLogitsMixin, LatheTrainer):
    """SFT's Trainer: the output layer runs only where a token is learned (learned_logits.py)."""


def run_sft(cfg: "RunConfig") -> StageResult:
    from transformers import DataCollatorForSeq2Seq

    t = cfg.training
    if t.do_predict and t.predict_with_generate:
        from .metrics import check_available

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
        from .metrics import argmax_logits, token_accuracy

        extra = {"compute_metrics": token_accuracy, "preprocess_logits_for_metrics": argmax_logits}
    trainer, metrics = build_and_train(cfg, run, SFTTrainer, collator, **extra)
    if t.do_predict:
        metrics.update(_predict(trainer, run, cfg))
    return StageResult(metrics, trainer.model, run.tokenizer)


def padding_free(cfg: "RunConfig", model) -> bool:
    """Flatten batches: as the config says, or (unset) wherever the model keeps flattened samples apart."""
    if "padding_free" in cfg.explicit:
        return cfg.data.padding_free
    return not cfg.model.shift_attn and separates_flattened_samples(model)


def _predict(trainer, run, cfg: "RunConfig") -> dict:
    if cfg.training.predict_with_generate:
        from .predict import predict

        metrics = predict(trainer.model, run.tokenizer, run.template, run.data.eval, cfg)
    else:
        metrics = trainer.predict(run.data.eval, metric_key_prefix="predict").metrics
    trainer.log_metrics("predict", metrics)
    trainer.save_metrics("predict", metrics)
    return metrics


SFT = STAGES.register(Stage(
    name="sft", help="supervised fine-tuning on conversations", run=run_sft, processor=SUPERVISED, perplexity=True,
    options=("train_on_prompt", "mask_history", "neat_packing", "padding_free", "compute_accuracy",
             "predict_with_generate"),
))
