"""The output layer runs only where a token is learned.

In SFT most positions are prompt (and, without padding-free batches, padding): their logits
are computed, soft-maxed over the whole vocabulary and thrown away. With a large vocabulary
the output layer is one of the biggest costs of a step (for a 256-wide, 8k-vocabulary model
it is about 40% of the forward FLOPs). transformers' causal LMs take `logits_to_keep` (the
positions whose logits to compute) and pass `shift_labels` on to their loss, so lathe hands
them the positions that have a learned next token and those targets: the loss and gradients
are the ones of the full computation (tested to float precision), for less work.

SFT's reweighted token losses (losses/sft.py) take the same kept logits and their targets
(`next_token_targets`), so DFT, ASFT and EAFT get the saving too.

Where the kept logits would still be big (long sequences x a large vocabulary, at least
`model.memory.CHUNK_THRESHOLD_BYTES` of float32), `ChunkedHeadMixin` goes further: the model
returns its final hidden states and the output layer + loss run a chunk of positions at a
time (chunked_logits.py), so the logits are never whole. It is left alone (the plain path
runs, the reason logged once) where the chunked path cannot be exact or cannot reach the
weights: a mixture-of-experts model whose router loss the model adds to its own loss, ZeRO-3
and FSDP (the head's weight is gathered only inside its own forward), an output layer that
is not a Linear (or LoRA with dropout / DoRA), and a model whose logits the probe finds are
more than its output layer's (`chunked_logits.probe_head`).
"""

from __future__ import annotations

import inspect
import logging
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from ..data.sample import IGNORE_INDEX
from ..model.adapters.common import base_model
from .chunked_logits import OutputHead, head_of, probe_head, worth_chunking

logger = logging.getLogger(__name__)

LABEL_KEYS = ("labels", "shift_labels")


def learned_positions(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` plus `logits_to_keep` (positions with a learned next token in any row) and their targets."""
    labels = inputs["labels"]
    shifted = F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)  # the token each position predicts
    keep = (shifted != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    if keep.numel() == 0:
        return inputs
    return {**inputs, "logits_to_keep": keep, "shift_labels": shifted[:, keep].contiguous()}


def next_token_targets(inputs: dict[str, Any]) -> torch.Tensor:
    """The token each output position predicts, aligned with the logits the model will return:
    the kept targets after `learned_positions`, else the labels shifted left by one."""
    if "shift_labels" in inputs:
        return inputs["shift_labels"]
    return F.pad(inputs["labels"][..., 1:], (0, 1), value=IGNORE_INDEX)


TEXT_KEYS = ("input_ids", "attention_mask", *LABEL_KEYS)


def media_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """What a batch gives the model besides its ids, mask and labels: a multimodal model's media tensors
    (pixel values, grids, token types; data/media/collate.py), empty for text batches."""
    return {k: v for k, v in batch.items() if k not in TEXT_KEYS}


def model_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` without the labels: for a forward pass whose loss the caller computes from the logits."""
    return {k: v for k, v in inputs.items() if k not in LABEL_KEYS}


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    base = base_model(model)
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def router_loss_on(model: torch.nn.Module) -> bool:
    """Whether the model adds an MoE router's load-balancing loss to its own loss (model/moe.py)."""
    config = base_model(model).config
    return any(getattr(c, "output_router_logits", False) for c in (config, getattr(config, "text_config", None)))


class ChunkedHeadMixin:
    """Trainer mixin: whether a step may run the output layer in chunks (`chunked_head`), decided once per
    model (what it is, how it is sharded, the probe) and per step (how big the scored logits are)."""

    def chunked_head(self, model, inputs: dict[str, Any], positions: int, model_loss: bool = False,
                     ) -> OutputHead | None:
        """The output layer to run in chunks over `positions` scored positions, or None for the plain path.

        `model_loss`: the loss replaces the model's own (sft, pt), so a router loss it adds would be lost.
        """
        unwrapped = self.unwrapped(model)
        output = base_model(unwrapped).get_output_embeddings()
        weight = getattr(output, "weight", None)
        if weight is None or not worth_chunking(positions, weight.shape[0]):
            return None  # small logits (or no output layer): the plain path, nothing probed or merged
        if self._chunked_refusal(unwrapped, inputs, model_loss) is not None:
            return None
        head = head_of(unwrapped)
        return None if isinstance(head, str) else head

    def unwrapped(self, model):
        """`model` without the accelerator's wrappers (a Trainer built without its set-up has none)."""
        accelerator = getattr(self, "accelerator", None)
        return accelerator.unwrap_model(model) if accelerator is not None else model

    def _chunked_refusal(self, unwrapped, inputs, model_loss: bool) -> str | None:
        key = "_chunked_refusal_" + ("model_loss" if model_loss else "own")
        if not hasattr(self, key):
            reason = None
            if model_loss and router_loss_on(unwrapped):
                reason = ("the model adds its MoE router loss to its own loss (moe_aux_loss_coef), which this path "
                          "replaces")
            elif getattr(self, "is_deepspeed_enabled", False) and \
                    getattr(self.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3:
                reason = "ZeRO-3 gathers the output layer's weight only inside its own forward"
            elif getattr(self, "is_fsdp_enabled", False):
                reason = "FSDP gathers the output layer's weight only inside the model's forward"
            else:
                reason = probe_head(unwrapped, inputs["input_ids"])
            if reason is not None:
                logger.info("chunked logits off: %s; the output layer runs whole", reason)
            else:
                logger.info("chunked logits: on for micro-batches whose scored logits reach the threshold")
            setattr(self, key, reason)
        return getattr(self, key)


class LearnedLogitsMixin(ChunkedHeadMixin):
    """Trainer mixin: in training, logits only at learned positions (see the module docstring), and
    in chunks where they would be big (the model's loss, computed here: `chunked_model_loss`).

    Left alone where the full logits are needed or computed elsewhere: evaluation (metrics
    read every position), label smoothing and custom loss functions (they take the logits),
    Liger's fused output layer, and models whose forward has no `logits_to_keep`.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._sequence_parallel(model) and "shift_labels" in inputs:
            return self._sequence_parallel_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = self.learned_inputs(model, inputs)
        head = self.learned_head(model, inputs, model_loss=True)
        if head is not None:
            return self.chunked_model_loss(model, head, inputs, return_outputs, num_items_in_batch)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def _sequence_parallel(self, model) -> bool:
        pc = getattr(getattr(self, "accelerator", None), "parallelism_config", None)
        return bool(model.training and pc is not None and pc.sp_backend == "deepspeed" and pc.sp_enabled)

    def _sequence_parallel_loss(self, model, inputs, return_outputs, num_items_in_batch):
        """Each process's slice of the sequence, its output layer in chunks where big; transformers'
        `deepspeed_sp_compute_loss` then weighs the slices' means by their tokens over the group.

        DeepSpeed's loader hands each process its slice with `shift_labels` (already shifted, as the
        sequence was cut after shifting) and no `labels`; the plain path would make the slice's logits whole.
        """
        from transformers.integrations.deepspeed import deepspeed_sp_compute_loss

        head = self.chunked_head(model, inputs, inputs["shift_labels"].numel(), model_loss=True)
        if head is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

        def slice_mean(**batch):  # stands in for the model: its mean token loss over this slice
            from .chunked_logits import chunked_token_losses, final_hidden
            from .losses.sft import reduce_tokens

            hidden, _ = final_hidden(model, model_inputs(batch))
            losses = chunked_token_losses(hidden, head, batch["shift_labels"])
            return SimpleNamespace(loss=reduce_tokens(losses.total, losses.nll.numel(), None))

        pc = self.accelerator.parallelism_config
        loss = deepspeed_sp_compute_loss(self.accelerator, slice_mean, dict(inputs), False, pc)
        return (loss, {"loss": loss}) if return_outputs else loss

    def learned_inputs(self, model, inputs: dict[str, Any]) -> dict[str, Any]:
        """`inputs` with `logits_to_keep` and their targets where this model and step allow it."""
        if model.training and "labels" in inputs and self._learned_logits_apply(model):
            return learned_positions(inputs)
        return inputs

    def learned_head(self, model, inputs: dict[str, Any], model_loss: bool) -> OutputHead | None:
        """The output layer to chunk for this training step's learned positions (after `learned_inputs`), or None."""
        if "logits_to_keep" not in inputs:  # not training, or the plain path is required (see learned_inputs)
            return None
        return self.chunked_head(model, inputs, next_token_targets(inputs).numel(), model_loss)

    def chunked_model_loss(self, model, head: OutputHead, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's own causal-LM loss, through the chunked head: the token cross-entropies summed and
        divided as transformers divides them (by `num_items_in_batch` where the model takes it, else their count),
        scaled like the Trainer's for `average_tokens_across_devices`."""
        from .chunked_logits import chunked_token_losses, final_hidden
        from .losses.sft import reduce_tokens

        hidden, _ = final_hidden(model, model_inputs(inputs))
        losses = chunked_token_losses(hidden, head, next_token_targets(inputs))
        counted = num_items_in_batch is not None and self.model_accepts_loss_kwargs
        loss = reduce_tokens(losses.total, losses.nll.numel(), num_items_in_batch if counted else None)
        if counted and self.args.average_tokens_across_devices:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1
                           else self.args.n_gpu)
        return (loss, {"loss": loss}) if return_outputs else loss

    def _learned_logits_apply(self, model) -> bool:
        if not hasattr(self, "_learned_logits_ok"):
            self._learned_logits_ok = (
                self.label_smoother is None and self.compute_loss_func is None
                and not getattr(self.args, "use_liger_kernel", False)
                and accepts_logits_to_keep(self.accelerator.unwrap_model(model))
            )
        return self._learned_logits_ok
