"""Quantized loading for QLoRA: the base weights in 4 or 8 bits, LoRA trained on top.

A registry by `quantization_method`; each entry turns the options into a transformers
quantization config. bitsandbytes runs on CPU and GPU (4-bit nf4/fp4 with optional double
quantization, 8-bit LLM.int8). Checkpoints that are already quantized (GPTQ, AWQ, ...) need
no option: transformers reads their quantization config, given their package.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..errors import LatheError

if TYPE_CHECKING:
    from ..config import RunConfig


def _bnb(cfg: "RunConfig", compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    m = cfg.model
    if importlib.util.find_spec("bitsandbytes") is None:
        raise LatheError("`quantization_method: bnb` needs bitsandbytes: pip install bitsandbytes (or lathe[qlora]).")
    if m.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if m.quantization_bit == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=m.quantization_type,
            bnb_4bit_use_double_quant=m.double_quantization,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage=compute_dtype,  # lets ZeRO-3 / FSDP shard the packed weights
        )
    raise LatheError(f"bitsandbytes quantizes to 4 or 8 bits, not `quantization_bit: {m.quantization_bit}`.")


QUANTIZERS: dict[str, Callable[["RunConfig", torch.dtype], Any]] = {"bnb": _bnb}
NOT_YET = {
    "hqq": "transformers 5 has not ported HqqConfig to its new loader",
    "eetq": "the eetq package (CUDA only) is not wired yet",
}


def quantization_config(cfg: "RunConfig", compute_dtype: torch.dtype):
    """The transformers quantization config for the run, or None when it loads full weights."""
    m = cfg.model
    if m.quantization_bit is None:
        return None
    method = m.quantization_method
    if method in NOT_YET:
        raise LatheError(f"`quantization_method: {method}` is not available: {NOT_YET[method]}. Use `bnb`.")
    if method not in QUANTIZERS:
        raise LatheError(
            f"`quantization_method: {method}` cannot quantize on the fly; use bnb. GPTQ/AWQ/AQLM checkpoints "
            f"need no option: load them as they are."
        )
    return QUANTIZERS[method](cfg, compute_dtype)
