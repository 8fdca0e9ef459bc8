"""Unsloth (`use_unsloth`): its patched model and LoRA layers, on a CUDA GPU only.

Unsloth rewrites attention, MLP and loss with Triton kernels and hand-written backward passes;
Triton has no CPU backend and unsloth refuses to import without a GPU, so lathe checks both up
front (config/validate.py). This module only hands lathe's options to `FastLanguageModel`; everything after the
model and its adapter (data, Trainer, saving) is lathe's usual path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..config import RunConfig


def load(cfg: "RunConfig", dtype: torch.dtype):
    from unsloth import FastLanguageModel

    m = cfg.model
    model, _ = FastLanguageModel.from_pretrained(
        model_name=m.model_name_or_path, max_seq_length=cfg.data.cutoff_len, dtype=dtype,
        load_in_4bit=m.quantization_bit == 4, token=m.hf_hub_token, trust_remote_code=m.trust_remote_code,
    )
    return model


def add_lora(model, cfg: "RunConfig", targets: list[str], modules_to_save: list[str] | None):
    from unsloth import FastLanguageModel

    f = cfg.finetuning
    return FastLanguageModel.get_peft_model(
        model, r=f.lora_rank, target_modules=targets, lora_alpha=f.lora_alpha or 2 * f.lora_rank,
        lora_dropout=f.lora_dropout, use_rslora=f.use_rslora, modules_to_save=modules_to_save,
        use_gradient_checkpointing="unsloth" if cfg.model.use_unsloth_gc else not cfg.model.disable_gradient_checkpointing,
        random_state=cfg.training.seed, max_seq_length=cfg.data.cutoff_len,
    )
