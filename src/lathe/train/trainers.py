"""The Trainer classes of the stages: one base that every stage's trainer derives from.

`LatheTrainer` is the Hugging Face Trainer with lathe's checkpoints (written whole or not at
all, checkpoints.py); `MeanLossTrainer` adds the per-batch metrics a custom loss stores
(rewards, accuracies), averaged into the Trainer's log lines, and the sequence log-probs of
the preference stages (`sequence_logps`, `reference_sequence_logps`), through the chunked
output layer where the logits would be big (chunked_logits.py).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import Trainer

from .checkpoints import AtomicCheckpoints
from .learned_logits import ChunkedHeadMixin, media_inputs
from .reference import place_reference


class LatheTrainer(AtomicCheckpoints, Trainer):
    """The Trainer as every lathe stage runs it: the Hugging Face loop, atomic checkpoints."""

    def _prepare_inputs(self, inputs):
        """The batch on the model's device, every tensor contiguous.

        Why: under `sequence_parallel_size` DeepSpeed's loader hands each process its slice of
        the sequence as a column view of the batch (`t[:, a:b]`), and moving it to a GPU copies
        it, but on a CPU the view stays; with more than one row it is not contiguous, and
        transformers' causal-LM loss `.view(-1)`s the labels. `contiguous()` is free otherwise.
        """
        inputs = super()._prepare_inputs(inputs)
        if isinstance(inputs, dict):
            return {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        return inputs


class StoredMetricsMixin:
    """Mix into a `transformers.Trainer`: `self.store_metrics(...)` in compute_loss, means appear in logs."""

    def _stored(self) -> dict[str, dict[str, list[float]]]:
        if not hasattr(self, "_metric_store"):
            self._metric_store = {"train": defaultdict(list), "eval": defaultdict(list)}
        return self._metric_store

    def store_metrics(self, **values: torch.Tensor | float) -> None:
        split = "train" if self.model.training else "eval"
        for name, value in values.items():
            value = value.float().mean().item() if isinstance(value, torch.Tensor) else float(value)
            self._stored()[split][name].append(value)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        split = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        # eval_<name>_loss with eval_on_each_dataset: the stored metrics take that dataset's prefix
        prefix = next((k[:-len("loss")] for k in logs if k.startswith("eval_") and k.endswith("_loss")), "eval_") \
            if split == "eval" else ""
        stored = self._stored()[split]
        for name, values in stored.items():
            if values:
                logs[prefix + name] = round(sum(values) / len(values), 6)
        stored.clear()
        super().log(logs, *args, **kwargs)


class MeanLossTrainer(StoredMetricsMixin, ChunkedHeadMixin, LatheTrainer):
    """Base of the stages whose `compute_loss` returns a mean over samples or pairs (rm, dpo, kto).

    Such a loss is not a sum over tokens, so the Trainer must divide it by the gradient
    accumulation steps itself (`model_accepts_loss_kwargs = False`). `finetuning` is the
    run's finetuning options; `ref_model` the frozen reference (None: none, or LoRA's base).
    """

    def __init__(self, *args, finetuning=None, ref_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.finetuning = finetuning
        # A separate reference goes where the policy runs (the Trainer moves only the policy)
        self.ref_model = place_reference(self.accelerator, ref_model) if ref_model is not None else None
        self.model_accepts_loss_kwargs = False

    def sequence_logps(self, model, batch: dict[str, torch.Tensor], ld_alpha: float | None = None):
        """`(sum_logps [B], num_tokens [B])` of the batch's labels under `model` (losses/logps.py), with the
        output layer in chunks where the batch's logits would be big."""
        from .losses.logps import sequence_logps

        if self.chunked_head(model, batch, batch["input_ids"].numel()) is not None:
            return _chunked_sequence_logps(model, batch, ld_alpha)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       **media_inputs(batch)).logits
        return sequence_logps(logits, batch["labels"], ld_alpha=ld_alpha)

    @torch.no_grad()
    def reference_sequence_logps(self, model, batch: dict[str, torch.Tensor]):
        """The same under the reference model (`self.ref_model`, or the policy with its adapter off), no gradient."""
        from .chunked_logits import head_of
        from .reference import reference_logps, reference_of

        unwrapped = self.unwrapped(model)
        if self.chunked_head(model, batch, batch["input_ids"].numel()) is not None:
            with reference_of(unwrapped, self.ref_model) as ref:
                if not isinstance(head_of(ref), str):
                    return _chunked_sequence_logps(ref, batch, None)
        return reference_logps(unwrapped, self.ref_model, batch)


def _chunked_sequence_logps(model, batch: dict[str, torch.Tensor], ld_alpha: float | None):
    from .chunked_logits import shifted_targets, token_logps
    from .losses.logps import sum_token_logps

    targets = shifted_targets(batch["labels"])
    logps = token_logps(model, batch["input_ids"], batch["attention_mask"], targets, extra=media_inputs(batch))
    return sum_token_logps(logps, targets, ld_alpha=ld_alpha)
