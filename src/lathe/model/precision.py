"""Which weights and outputs stay in fp32 when the model computes in half precision.

- `upcast_layernorm`: norm weights in fp32 and the norm computed in fp32 (its output is cast
  back to the input's dtype, so the next half-precision layer still gets half-precision input).
  Norms divide by a small variance: the classic place half precision loses accuracy (QLoRA tip).
- `upcast_lmhead_output`: the logits in fp32, so the softmax and loss over a large vocabulary
  are exact.
- trainable parameters in fp32 (optimizer updates of ~1e-5 vanish in bf16's 8-bit mantissa),
  unless `pure_bf16`: then weights, gradients and optimizer states all stay bf16, with no fp32
  master copy: half the memory of mixed precision, at the price of those lost small steps.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

NORM_NAMES = ("norm", "ln_", "layernorm")


def _to_input_dtype(module, args, output):
    return output.to(args[0].dtype) if torch.is_tensor(output) and args and torch.is_tensor(args[0]) else output


def _fp32_output(module, args, output):
    return output.float() if torch.is_tensor(output) else output


def upcast_layernorm(model: torch.nn.Module) -> int:
    count = 0
    for name, module in model.named_modules():
        short = name.split(".")[-1].lower()
        params = list(module.parameters(recurse=False))
        if params and all(p.ndim == 1 for p in params) and any(n in short for n in NORM_NAMES):
            for p in params:
                p.data = p.data.float()
            module.register_forward_hook(_to_input_dtype)
            count += 1
    logger.info("upcast_layernorm: %d norm layers in fp32", count)
    return count


def upcast_lmhead_output(model: torch.nn.Module) -> None:
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_hook(_fp32_output)
        logger.info("upcast_lmhead_output: logits in fp32")


def before_method(model: torch.nn.Module, cfg) -> None:
    if cfg.model.upcast_layernorm:
        upcast_layernorm(model)
    if cfg.model.upcast_lmhead_output:
        upcast_lmhead_output(model)


def after_method(model: torch.nn.Module, cfg) -> None:
    """Trainable parameters to fp32, unless pure_bf16 keeps everything in bf16."""
    if cfg.finetuning.pure_bf16:
        for p in model.parameters():
            if p.requires_grad and p.is_floating_point() and p.dtype != torch.bfloat16:
                p.data = p.data.to(torch.bfloat16)
        logger.info("pure_bf16: weights, gradients and optimizer states in bf16 (no fp32 master copy)")
        return
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        return  # ZeRO-3 keeps the fp32 master copy itself, and its partitions must share one dtype
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # optimizer updates in half precision lose small steps
