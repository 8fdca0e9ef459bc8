"""The reference model of the preference stages, without a second copy where possible.

- LoRA: the reference is the same model with the adapter switched off (`disable_adapter`),
  so no second copy of the weights is allocated;
- full / freeze: a frozen copy of the starting model;
- `ref_model: PATH`: that model, frozen; its tokenizer must match the policy's.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import LatheError
from ..registry import METHODS

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)


def check_same_tokenizer(path: str, tokenizer) -> None:
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise LatheError(f"`ref_model`: folder not found: {path}.")
    try:
        ref_tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return  # a weights-only folder: nothing to compare
    if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise LatheError(
            f"`ref_model` {path} uses a different tokenizer ({len(ref_tokenizer)} tokens) than the model being "
            f"trained ({len(tokenizer)}): log-probabilities of the same ids would not be comparable. "
            f"Use a reference model of the same family."
        )


def build_reference(cfg: "RunConfig", model, tokenizer, needed: bool = True):
    """The frozen reference model, or None when the run needs none (`needed` false: the loss
    compares with no reference) or a peft adapter (LoRA, OFT) serves as its own."""
    f = cfg.finetuning
    if not needed:
        return None
    if f.ref_model:
        from transformers import AutoModelForCausalLM

        from ..model.load import resolve_dtype

        check_same_tokenizer(f.ref_model, tokenizer)
        ref = AutoModelForCausalLM.from_pretrained(f.ref_model, dtype=resolve_dtype(cfg))
        if ref.get_input_embeddings().weight.shape[0] < len(tokenizer):
            ref.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    elif METHODS[f.finetuning_type].adapter:
        logger.info("reference model: the base model with the %s adapter switched off (no second copy)",
                    f.finetuning_type)
        return None
    else:
        ref = copy.deepcopy(model)
        logger.info("reference model: a frozen copy of the starting model")
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


@contextlib.contextmanager
def reference_of(model, ref):
    """Yield the module that computes reference log-probs: `ref`, or `model` with its adapter off."""
    if ref is not None:
        yield ref
    else:
        with model.disable_adapter():
            yield model


@torch.no_grad()
def reference_logps(model, ref, batch: dict[str, torch.Tensor]):
    from .losses.logps import sequence_logps

    with reference_of(model, ref) as module:
        logits = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logps(logits, batch["labels"])


def run_with_reference(cfg: "RunConfig", trainer_cls, collator_cls, needs_reference: bool = True):
    """A preference stage (dpo, kto): the run, its reference model, its Trainer; the StageResult."""
    from .base import build_and_train, setup_run
    from .stage import StageResult

    run = setup_run(cfg)
    ref = build_reference(cfg, run.model, run.tokenizer, needs_reference)
    trainer, metrics = build_and_train(
        cfg, run, trainer_cls, collator_cls(run.tokenizer.pad_token_id), finetuning=cfg.finetuning, ref_model=ref
    )
    return StageResult(metrics, trainer.model, run.tokenizer, extras={"ref_model": ref})
