"""Quantized loading for QLoRA: the base weights in low bits, LoRA (or OFT) trained on top.

A registry by `quantization_method`. Each backend either gives transformers a quantization
config (bitsandbytes, torchao, eetq), or quantizes the loaded model itself (hqq: transformers 5
has not ported HqqConfig to its new loader, while the hqq library's HQQLinear works and peft
wraps it), or is refused with what to do.

- bnb: CPU and GPU; 4-bit nf4/fp4 with optional double quantization, 8-bit LLM.int8.
- torchao: 8-bit int8 weight-only anywhere; 4-bit int4 weight-only on CUDA, on CPU as intx
  int4 (stored unpacked in int8 bytes by torchao 0.18, so it saves no memory over 8-bit).
- hqq: 1, 2, 3, 4 or 8 bits, no calibration data, CPU and GPU.
- eetq: 8-bit, CUDA kernels only.
- quanto: optimum-quanto's int4 / int8 weights (QLinear, which peft wraps), CPU and GPU.

Checkpoints that are already quantized (GPTQ, AWQ, AQLM, bnb, ...) need no option: their
config.json carries a `quantization_config` that transformers reads, given the package. Two
formats are loaded dequantized, as LLaMA-Factory does (`PREQUANTIZED`): MXFP4 (gpt-oss) and
fine-grained FP8 (DeepSeek-V3, Qwen3-FP8, ...). Their kernels need recent GPUs (MXFP4: compute
capability 7.5 and Triton; FP8: 8.9, Ada/Hopper), training cannot step low-bit weights, and
transformers can turn both back into ordinary bf16/fp32 tensors on any device. Naming one of
these formats in `quantization_method` asserts that the checkpoint is in it.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..errors import LatheError, lookup
from ..registry import METHODS

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)


def _installed(package: str) -> bool:
    """find_spec on a dotted name imports its parent, which raises when the parent is missing."""
    try:
        return importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:
        return False


def _need(package: str, method: str, pip: str | None = None) -> None:
    if not _installed(package):
        raise LatheError(f"`quantization_method: {method}` needs the {package} package: pip install {pip or package}.")


def _bits(method: str, bits: int, allowed: tuple[int, ...]) -> None:
    if bits not in allowed:
        raise LatheError(f"`quantization_method: {method}` quantizes to {' or '.join(map(str, allowed))} bits, "
                         f"not `quantization_bit: {bits}`.")


def _bnb(cfg: "RunConfig", compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    m = cfg.model
    _need("bitsandbytes", "bnb", "bitsandbytes (or lathe[qlora])")
    _bits("bnb", m.quantization_bit, (4, 8))
    if m.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=m.quantization_type,
        bnb_4bit_use_double_quant=m.double_quantization,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,  # lets ZeRO-3 / FSDP shard the packed weights
    )


def _torchao(cfg: "RunConfig", compute_dtype: torch.dtype):
    from transformers import TorchAoConfig

    bits = cfg.model.quantization_bit
    _need("torchao", "torchao")
    _bits("torchao", bits, (4, 8))
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    if bits == 8:
        return TorchAoConfig(quant_type=Int8WeightOnlyConfig())
    if torch.cuda.is_available():
        return TorchAoConfig(quant_type=Int4WeightOnlyConfig(group_size=128))
    logger.warning("torchao 4-bit on CPU: int4 values stored one per byte (no memory saved over 8-bit).")
    return TorchAoConfig(quant_type=IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))


def _eetq(cfg: "RunConfig", compute_dtype: torch.dtype):
    from transformers import EetqConfig

    _bits("eetq", cfg.model.quantization_bit, (8,))
    if not torch.cuda.is_available():
        raise LatheError("`quantization_method: eetq` runs CUDA kernels only; use `bnb` or `hqq` on this machine.")
    _need("eetq", "eetq")
    return EetqConfig("int8")


def _quanto(cfg: "RunConfig", compute_dtype: torch.dtype):
    """optimum-quanto through transformers: every linear layer but the head becomes a QLinear."""
    from transformers import QuantoConfig

    bits = cfg.model.quantization_bit
    _need("optimum.quanto", "quanto", "optimum-quanto")
    _bits("quanto", bits, (4, 8))
    return QuantoConfig(weights=f"int{bits}")


def _hqq(model: torch.nn.Module, cfg: "RunConfig", compute_dtype: torch.dtype) -> None:
    """Swap every linear layer but the output head for hqq's HQQLinear (group size 64)."""
    _need("hqq", "hqq")
    from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear

    bits = cfg.model.quantization_bit
    _bits("hqq", bits, (1, 2, 3, 4, 8))
    HQQLinear.set_backend(HQQBackend.PYTORCH)  # runs on CPU too; the compiled backends need CUDA
    device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = BaseQuantizeConfig(nbits=bits, group_size=64)
    head = model.get_output_embeddings()
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child is not head:
                setattr(parent, name, HQQLinear(child, settings, compute_dtype=compute_dtype, device=device))
                count += 1
    model.config.quantization_config = {"quant_method": "hqq", "nbits": bits, "group_size": 64}
    logger.info("hqq: %d linear layers quantized to %d bits", count, bits)


@dataclass(frozen=True)
class Backend:
    config: Callable[["RunConfig", torch.dtype], Any] | None = None  # a transformers quantization config
    after_load: Callable[[torch.nn.Module, "RunConfig", torch.dtype], None] | None = None  # quantizes in place


QUANTIZERS: dict[str, Backend] = {
    "bnb": Backend(config=_bnb),
    "torchao": Backend(config=_torchao),
    "eetq": Backend(config=_eetq),
    "hqq": Backend(after_load=_hqq),
    "quanto": Backend(config=_quanto),
}


@dataclass(frozen=True)
class Prequantized:
    """A checkpoint format lathe loads dequantized: `config()` is the transformers config that does it."""

    config: Callable[[], Any]
    hardware: str  # what its own kernels need, for the log


def _mxfp4():
    from transformers import Mxfp4Config

    return Mxfp4Config(dequantize=True)


def _fp8():
    from transformers import FineGrainedFP8Config

    return FineGrainedFP8Config(dequantize=True)


# quant_method of the checkpoint's config.json -> how it loads.
PREQUANTIZED: dict[str, Prequantized] = {
    "mxfp4": Prequantized(_mxfp4, "a GPU of compute capability 7.5+ with Triton 3.4+"),
    "fp8": Prequantized(_fp8, "a GPU of compute capability 8.9+ (Ada, Hopper)"),
}


def _backend(cfg: "RunConfig") -> Backend | None:
    m = cfg.model
    if m.quantization_bit is None:
        return None
    return lookup(QUANTIZERS, m.quantization_method, "`quantization_method` that quantizes on the fly",
                  plural="on the fly quantizers",
                  hint="GPTQ/AWQ/AQLM checkpoints need no option: load them as they are.")


def quantization_config(cfg: "RunConfig", compute_dtype: torch.dtype):
    """The transformers quantization config for the run, or None when it loads full weights."""
    backend = _backend(cfg)
    return backend.config(cfg, compute_dtype) if backend and backend.config else None


def quantize_loaded(model: torch.nn.Module, cfg: "RunConfig", compute_dtype: torch.dtype) -> bool:
    """Quantize an already loaded model for backends transformers cannot load with; True if it did."""
    backend = _backend(cfg)
    if backend is None or backend.after_load is None:
        return False
    backend.after_load(model, cfg, compute_dtype)
    return True


def checkpoint_quant_method(config) -> str | None:
    """The `quant_method` of the checkpoint's own quantization_config (None: saved unquantized)."""
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        return None
    method = quant.get("quant_method", "?") if isinstance(quant, dict) else getattr(quant, "quant_method", "?")
    return str(getattr(method, "value", method))


def check_prequantized(config, cfg: "RunConfig") -> str | None:
    """The quant method of a checkpoint saved quantized (GPTQ, AWQ, bnb, ...), after checking the run fits it.

    transformers reads the checkpoint's own `quantization_config`; lathe adds nothing on top:
    quantizing again is refused, and so is training its low-bit weights directly. A
    `quantization_method` that names a checkpoint format (gptq, awq, aqlm, mxfp4, fp8) must
    match the checkpoint's.
    """
    m, f = cfg.model, cfg.finetuning
    method = checkpoint_quant_method(config)
    if m.quantization_bit is None and m.quantization_method not in QUANTIZERS and m.quantization_method != method:
        found = f"it is saved as {method}" if method else "its config.json has no quantization_config (it is not quantized)"
        raise LatheError(
            f"`quantization_method: {m.quantization_method}` loads checkpoints saved in that format, but "
            f"{m.model_name_or_path} is not one: {found}. Remove `quantization_method`, or point "
            f"`model_name_or_path` at a {m.quantization_method} checkpoint."
        )
    if method is None:
        return None
    if m.quantization_bit is not None:
        raise LatheError(
            f"{m.model_name_or_path} is already quantized ({method}, from its config.json); remove "
            f"`quantization_bit`: it cannot be quantized a second time."
        )
    if method in PREQUANTIZED:  # loads as ordinary tensors: any method trains it
        return method
    if cfg.training.do_train and not METHODS[f.finetuning_type].quantized_base:
        fits = ", ".join(name for name, each in METHODS.items() if each.quantized_base)
        raise LatheError(
            f"{m.model_name_or_path} is quantized ({method}): its low-bit weights cannot be trained directly; "
            f"use `finetuning_type` {fits}, or train the unquantized model."
        )
    logger.info("%s is pre-quantized (%s): transformers loads it with its own quantization config", m.model_name_or_path, method)
    return method


def prequantized_config(method: str | None, dtype: torch.dtype):
    """The config that loads a `PREQUANTIZED` checkpoint dequantized to `dtype` (None for other checkpoints)."""
    if method not in PREQUANTIZED:
        return None
    fmt = PREQUANTIZED[method]
    logger.info("%s checkpoint: dequantized to %s while loading (its kernels need %s and cannot train)",
                method, str(dtype).removeprefix("torch."), fmt.hardware)
    return fmt.config()
