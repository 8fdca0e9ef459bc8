"""The reference model of the preference stages, without a second copy where possible.

- LoRA: the reference is the same model with the adapter switched off (`disable_adapter`),
  so no second copy of the weights is allocated;
- full / freeze: a frozen copy of the starting model;
- `ref_model: PATH`: that model, frozen, loaded as the run loads its own (dtype, attention,
  `quantization_method`), with `ref_model_adapters` merged into it in order and
  `ref_model_quantization_bit` quantizing it; its tokenizer must match the policy's.

`load_frozen_model` is shared with PPO's full reward model (`reward_model_adapters`,
`reward_model_quantization_bit`): both are what LLaMA-Factory builds by copying the run's
model arguments onto another folder and loading it not trainable.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import LatheError
from ..model.adapters.common import split_names
from ..registry import METHODS

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

SIDE_BITS = (4, 8)  # what LLaMA-Factory accepts for ref_model / reward_model quantization


def check_same_tokenizer(path: str, tokenizer, key: str = "ref_model") -> None:
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise LatheError(f"`{key}`: folder not found: {path}.")
    try:
        ref_tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return  # a weights-only folder: nothing to compare
    if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise LatheError(
            f"`{key}` {path} uses a different tokenizer ({len(ref_tokenizer)} tokens) than the model being "
            f"trained ({len(tokenizer)}): log-probabilities of the same ids would not be comparable. "
            f"Use a model of the same family."
        )


def check_side_model(source: str, prefix: str, adapters: str | None, bits: int | None) -> None:
    """`<prefix>_adapters` / `<prefix>_quantization_bit`: 4 or 8 bits, and one adapter at most on quantized weights."""
    if bits is None:
        return
    if bits not in SIDE_BITS:
        raise LatheError(f"{source}: `{prefix}_quantization_bit` must be 4 or 8, got {bits}.")
    if len(split_names(adapters)) > 1:
        raise LatheError(
            f"{source}: `{prefix}_adapters` lists {len(split_names(adapters))} adapters, but LoRA weights are not "
            f"merged into quantized weights (`{prefix}_quantization_bit: {bits}`): give one adapter, or merge them "
            f"first with `lathe export` and point `{prefix}` at the merged model."
        )


def check_reference_options(cfg: "RunConfig") -> None:
    """The ref_model_* options only shape the model `ref_model` names: refused without it.

    LLaMA-Factory ignores them then; lathe refuses an option that would have no effect.
    """
    f = cfg.finetuning
    for key in ("ref_model_adapters", "ref_model_quantization_bit"):
        if getattr(f, key) is not None and not f.ref_model:
            raise LatheError(
                f"{cfg.source}: `{key}` applies to the model `ref_model` names, and `ref_model` is not set (the "
                f"reference is then the starting model itself, or with LoRA the adapter switched off). Set "
                f"`ref_model` (e.g. to the base model's folder) or remove `{key}`."
            )
    check_side_model(cfg.source, "ref_model", f.ref_model_adapters, f.ref_model_quantization_bit)


def side_model_config(cfg: "RunConfig", path: str, quantization_bit: int | None) -> "RunConfig":
    """The run's config pointed at another model folder, loading it for inference only.

    Like LLaMA-Factory's `ModelArguments.copyfrom`: the run's dtype, attention kernel, RoPE
    scaling and `quantization_method` (+ bnb type, double quantization) carry over; the
    adapters, the quantization bits and the hub revision are the side model's own, and
    `do_train: false` keeps `load_model` from preparing quantized weights for training.
    """
    from ..config.training import build_training_arguments, field_values

    model = dataclasses.replace(
        cfg.model, model_name_or_path=path, adapter_name_or_path=None, adapter_folder=None, model_revision="main",
        quantization_bit=quantization_bit, train_from_scratch=False, use_unsloth=False, use_unsloth_gc=False,
        shift_attn=False,
    )
    training = build_training_arguments({**field_values(cfg.training), "do_train": False}, cfg.source, given=set())
    return dataclasses.replace(cfg, model=model, training=training)


def is_quantized(model) -> bool:
    return getattr(model.config, "quantization_config", None) is not None


def load_frozen_model(cfg: "RunConfig", path: str, adapters: list[str], bits: int | None, tokenizer, key: str):
    """`path` loaded like the run's model, `adapters` merged in order (one kept unmerged on quantized
    weights, as LLaMA-Factory does), every weight frozen, in eval mode."""
    from ..model.adapters.lora import load_adapters
    from ..model.load import load_model

    for adapter in adapters:  # before the weights load: a typo costs nothing
        if not (Path(adapter) / "adapter_config.json").exists():
            raise LatheError(f"`{key}`: {adapter} is not a LoRA adapter folder (no adapter_config.json).")
    model = load_model(side_model_config(cfg, path, bits), tokenizer)
    if adapters and is_quantized(model):
        if len(adapters) > 1:  # a checkpoint saved quantized (GPTQ, AWQ, ...): caught only now
            raise LatheError(f"`{key}`: {path} is quantized; LoRA weights are not merged into quantized weights, "
                             f"so give one adapter, or merge them into the unquantized model first.")
        model = load_adapters(model, adapters, trainable_last=True)  # kept beside the quantized weights; frozen below
    elif adapters:
        model = load_adapters(model, adapters, trainable_last=False)
    if adapters:
        logger.info("%s: %s with %d adapter(s): %s", key, path, len(adapters), ", ".join(adapters))
    model.requires_grad_(False)
    return model.eval()


def build_reference(cfg: "RunConfig", model, tokenizer, needed: bool = True):
    """The frozen reference model, or None when the run needs none (`needed` false: the loss
    compares with no reference) or a peft adapter (LoRA, OFT) serves as its own."""
    f = cfg.finetuning
    if not needed:
        return None
    if f.ref_model:
        check_same_tokenizer(f.ref_model, tokenizer)
        ref = load_frozen_model(cfg, f.ref_model, split_names(f.ref_model_adapters), f.ref_model_quantization_bit,
                                tokenizer, "ref_model_adapters")
        logger.info("reference model: %s%s", f.ref_model,
                    f" in {f.ref_model_quantization_bit} bits" if f.ref_model_quantization_bit else "")
        return ref
    if METHODS[f.finetuning_type].adapter:
        logger.info("reference model: the base model with the %s adapter switched off (no second copy)",
                    f.finetuning_type)
        return None
    ref = copy.deepcopy(model)
    logger.info("reference model: a frozen copy of the starting model")
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def place_reference(accelerator, ref):
    """A separate reference model (dpo, kto, ASFT), put where the policy runs (as TRL and LLaMA-Factory place theirs):
    sharded for inference under DeepSpeed / FSDP, else on the device; quantized weights are placed already."""
    if getattr(ref, "is_loaded_in_8bit", False) or getattr(ref, "is_loaded_in_4bit", False):
        return ref
    if getattr(accelerator.state, "deepspeed_plugin", None) is not None:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(ref, accelerator)
    if getattr(accelerator.state, "fsdp_plugin", None) is not None:
        from trl.models.utils import prepare_fsdp

        return prepare_fsdp(ref, accelerator)
    return accelerator.prepare_model(ref, evaluation_mode=True)


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
    from .learned_logits import media_inputs
    from .losses.logps import sequence_logps

    with reference_of(model, ref) as module:
        logits = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        **media_inputs(batch)).logits
    return sequence_logps(logits, batch["labels"])


def run_with_reference(cfg: "RunConfig", trainer_cls, collator_cls, needs_reference: bool = True, rows=None):
    """A preference stage (dpo, kto): the run, its reference model, its Trainer; the StageResult.

    `rows`: which sample each row of a batch is, for a multimodal model's media (data/media/collate.py; a
    pair batch is its chosen rows, then its rejected rows)."""
    from .base import build_and_train, setup_run
    from .stage import StageResult

    run = setup_run(cfg)  # (the ref_model_* options were checked with the config: the stage's check)
    ref = build_reference(cfg, run.model, run.tokenizer, needs_reference)
    collator = run.collator(collator_cls(run.tokenizer.pad_token_id), rows)
    trainer, metrics = build_and_train(cfg, run, trainer_cls, collator, finetuning=cfg.finetuning, ref_model=ref)
    return StageResult(metrics, trainer.model, run.tokenizer, extras={"ref_model": ref})
