"""Supervised fine-tuning: chat samples, answers learned, the prompt masked.

With `do_predict`, the held-out prompts are answered after training: generated and scored
with BLEU/ROUGE (`predict_with_generate`), or only their loss.

`use_dft_loss` / `use_asft_loss` / `use_eaft_loss` reweight each learned token's loss
(losses/sft.py); ASFT also runs the reference model (reference.py: LoRA's base with the
adapter off, or a frozen copy). `ignore_pad_token_for_loss: false` learns the padding too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..data.packing import FlatteningCollator, packing_enabled
from ..data.processors import SUPERVISED
from ..data.sample import IGNORE_INDEX
from ..errors import LatheError
from ..model.capabilities import separates_flattened_samples
from ..registry import STAGES
from .base import build_and_train, setup_run
from .learned_logits import LearnedLogitsMixin, model_inputs, next_token_targets
from .losses.sft import SFT_LOSSES, SFTLoss, chosen_sft_losses
from .reference import check_reference_options, place_reference
from .stage import Stage, StageResult
from .trainers import LatheTrainer, StoredMetricsMixin

if TYPE_CHECKING:
    from ..config import RunConfig


class SFTTrainer(StoredMetricsMixin, LearnedLogitsMixin, LatheTrainer):
    """SFT's Trainer: the output layer runs only where a token is learned, and in chunks of positions
    where the logits would be big (learned_logits.py, chunked_logits.py).

    With `sft_loss` (DFT, ASFT, EAFT) the loss is computed here from the logits, at the same
    kept positions, and normalised like the model's own (by `num_items_in_batch`, the learned
    tokens of the whole step); its per-batch values (`ce`, weights, `kl`) join the log lines.
    `ref_model` is ASFT's frozen reference (None with LoRA: the adapter switched off).
    """

    def __init__(self, *args, sft_loss: SFTLoss | None = None, finetuning=None, ref_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sft_loss = sft_loss
        self.finetuning = finetuning
        self.ref_model = place_reference(self.accelerator, ref_model) if ref_model is not None else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.sft_loss is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs = self.learned_inputs(model, inputs)
        forward = model_inputs(inputs)
        head = self.learned_head(model, inputs, model_loss=False)
        out = outputs = None
        if head is not None:  # the logits never whole (chunked_logits.py)
            out = self._chunked_token_loss(model, head, forward, next_token_targets(inputs), num_items_in_batch)
        if out is None:
            outputs = model(**forward)
            ref_logits = self._reference_logits(model, forward) if self.sft_loss.reference else None
            out = self.sft_loss.compute(outputs.logits, next_token_targets(inputs), ref_logits, num_items_in_batch,
                                        self.finetuning)
        self.store_metrics(**out.metrics)
        loss = out.loss
        counted = num_items_in_batch is not None and self.model_accepts_loss_kwargs
        if counted and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # num_items counts every device's tokens; DDP averages
        return (loss, outputs if outputs is not None else {"loss": loss}) if return_outputs else loss

    def _chunked_token_loss(self, model, head, forward: dict, targets, num_items):
        """The token loss from the final hidden states, a chunk of positions at a time; None where
        the reference's output layer cannot be chunked (the caller then takes the plain path)."""
        from .chunked_logits import final_hidden, head_of

        ref_hidden = ref_head = None
        if self.sft_loss.reference:
            from .reference import reference_of

            with torch.no_grad(), reference_of(self.accelerator.unwrap_model(model), self.ref_model) as ref:
                ref_head = head_of(ref)
                if isinstance(ref_head, str):
                    return None
                ref_hidden, _ = final_hidden(ref, forward)
        hidden, _ = final_hidden(model, forward)
        return self.sft_loss.chunked(hidden, head, targets, ref_hidden, ref_head, num_items, self.finetuning)

    @torch.no_grad()
    def _reference_logits(self, model, forward: dict) -> torch.Tensor:
        from .reference import reference_of

        with reference_of(self.accelerator.unwrap_model(model), self.ref_model) as ref:
            return ref(**forward).logits


def run_sft(cfg: "RunConfig") -> StageResult:
    from transformers import DataCollatorForSeq2Seq

    t = cfg.training
    if t.do_predict and t.predict_with_generate:
        from .metrics import check_available

        check_available()  # before hours of training, not after
    sft_loss = next(iter(chosen_sft_losses(cfg.finetuning)), None)
    run = setup_run(cfg)
    if packing_enabled(cfg):
        collator = FlatteningCollator()  # packed rows: one flat row per batch, no padding
    elif padding_free(cfg, run.model):  # the same batches, flattened: no padding token computed (docs/benchmarks.md)
        from transformers import DataCollatorWithFlattening

        collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    else:
        collator = DataCollatorForSeq2Seq(run.tokenizer, label_pad_token_id=label_pad_id(cfg, run.tokenizer),
                                          pad_to_multiple_of=None)
    collator = run.collator(collator)  # the batch's images, video or audio, for a multimodal model
    extra = _token_loss(cfg, run, sft_loss)
    if cfg.finetuning.compute_accuracy:
        from .metrics import argmax_logits, token_accuracy

        extra.update(compute_metrics=token_accuracy, preprocess_logits_for_metrics=argmax_logits)
    trainer, metrics = build_and_train(cfg, run, SFTTrainer, collator, **extra)
    if t.do_predict:
        metrics.update(_predict(trainer, run, cfg))
    extras = {"ref_model": extra["ref_model"]} if sft_loss is not None else {}
    return StageResult(metrics, trainer.model, run.tokenizer, extras=extras)


def _token_loss(cfg: "RunConfig", run, sft_loss: SFTLoss | None) -> dict:
    """The SFTTrainer arguments of a reweighted token loss: the loss, the options, ASFT's reference model."""
    if sft_loss is None:
        return {}
    ref = None
    if sft_loss.reference:
        from .reference import build_reference

        ref = build_reference(cfg, run.model, run.tokenizer)
    return {"sft_loss": sft_loss, "finetuning": cfg.finetuning, "ref_model": ref}


def padding_free(cfg: "RunConfig", model) -> bool:
    """Flatten batches: as the config says, or (unset) wherever the model keeps flattened samples apart,
    unless the padding is to be learned (`ignore_pad_token_for_loss: false`: batches keep their padding)."""
    if "padding_free" in cfg.explicit:
        return cfg.data.padding_free
    if not cfg.data.ignore_pad_token_for_loss:
        return False
    if cfg.training.per_device_train_batch_size > 1 and cfg.run.sequence_parallel_size > 1:
        return False  # DeepSpeed's Ulysses attention takes per_device_train_batch_size rows
    from ..model.multimodal import is_multimodal

    if is_multimodal(getattr(model, "config", None)):
        return False  # positions from media grids (mrope) and per-image attention: batches keep their rows
    return not cfg.model.shift_attn and separates_flattened_samples(model)


def label_pad_id(cfg: "RunConfig", tokenizer) -> int:
    """What pads the labels: ignored by the loss (-100), or, as LLaMA-Factory with
    `ignore_pad_token_for_loss: false`, the pad token itself, which is then learned."""
    return IGNORE_INDEX if cfg.data.ignore_pad_token_for_loss else tokenizer.pad_token_id


def _predict(trainer, run, cfg: "RunConfig") -> dict:
    if cfg.training.predict_with_generate:
        from .predict import predict

        metrics = predict(trainer.model, run.tokenizer, run.template, run.data.eval, cfg)
    else:
        metrics = trainer.predict(run.data.eval, metric_key_prefix="predict").metrics
    trainer.log_metrics("predict", metrics)
    trainer.save_metrics("predict", metrics)
    return metrics


def check_sft(cfg: "RunConfig") -> None:
    """The token losses: one at a time, their options only with them, no label smoothing (it would be
    dropped: the loss is computed from the logits here). Learned padding needs padded batches."""
    f, d, src = cfg.finetuning, cfg.data, cfg.source
    check_reference_options(cfg)  # ASFT's reference: the ref_model_* options only with ref_model
    chosen = chosen_sft_losses(f)
    if chosen and cfg.model.moe_aux_loss_coef is not None:
        raise LatheError(f"{src}: `moe_aux_loss_coef` adds the router loss to the model's own loss, and "
                         f"`{chosen[0].flag}` replaces that loss with its own from the logits; use one of them.")
    if len(chosen) > 1:
        raise LatheError(f"{src}: {', '.join(f'`{loss.flag}`' for loss in chosen)} each replace the SFT loss; "
                         f"set one of them.")
    for loss in SFT_LOSSES:
        stray = [k for k in loss.options if not getattr(f, loss.flag) and getattr(f, k) != _default(f, k)]
        if stray:
            raise LatheError(f"{src}: {', '.join(f'`{k}`' for k in stray)} only apply with `{loss.flag}: true`; "
                             f"set it or remove them.")
    if f.ref_model and not any(loss.reference for loss in chosen):
        raise LatheError(f"{src}: `ref_model` is the reference of `use_asft_loss`; this sft run compares with no "
                         f"reference model. Set `use_asft_loss: true` or remove `ref_model`.")
    if chosen and cfg.training.label_smoothing_factor > 0:
        raise LatheError(f"{src}: `{chosen[0].flag}` computes its own token loss; it cannot go with "
                         f"`label_smoothing_factor` ({cfg.training.label_smoothing_factor}). Remove one.")
    if not d.ignore_pad_token_for_loss:
        if packing_enabled(cfg) or d.padding_free:
            key = "padding_free" if d.padding_free else "neat_packing" if d.neat_packing else "packing"
            raise LatheError(f"{src}: `ignore_pad_token_for_loss: false` learns the padding of each batch, and "
                             f"`{key}` leaves no padding to learn. Remove one of them.")


def _default(group, key: str):
    return group.__dataclass_fields__[key].default


SFT = STAGES.register(Stage(
    name="sft", help="supervised fine-tuning on conversations", media=True, run=run_sft, processor=SUPERVISED, perplexity=True, model_loss=True,
    options=("train_on_prompt", "mask_history", "neat_packing", "padding_free", "compute_accuracy",
             "predict_with_generate", "ignore_pad_token_for_loss",
             *(key for loss in SFT_LOSSES for key in (loss.flag, *loss.options))),
    check=check_sft,
))
