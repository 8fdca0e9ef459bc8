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
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

from ..data.sample import IGNORE_INDEX
from ..model.adapters.common import base_model

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


def model_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` without the labels: for a forward pass whose loss the caller computes from the logits."""
    return {k: v for k, v in inputs.items() if k not in LABEL_KEYS}


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    base = base_model(model)
    return "logits_to_keep" in inspect.signature(base.forward).parameters


class LearnedLogitsMixin:
    """Trainer mixin: in training, logits only at learned positions (see the module docstring).

    Left alone where the full logits are needed or computed elsewhere: evaluation (metrics
    read every position), label smoothing and custom loss functions (they take the logits),
    Liger's fused output layer, and models whose forward has no `logits_to_keep`.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = self.learned_inputs(model, inputs)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def learned_inputs(self, model, inputs: dict[str, Any]) -> dict[str, Any]:
        """`inputs` with `logits_to_keep` and their targets where this model and step allow it."""
        if model.training and "labels" in inputs and self._learned_logits_apply(model):
            return learned_positions(inputs)
        return inputs

    def _learned_logits_apply(self, model) -> bool:
        if not hasattr(self, "_learned_logits_ok"):
            self._learned_logits_ok = (
                self.label_smoother is None and self.compute_loss_func is None
                and not getattr(self.args, "use_liger_kernel", False)
                and accepts_logits_to_keep(self.accelerator.unwrap_model(model))
            )
        return self._learned_logits_ok
