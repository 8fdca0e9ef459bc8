"""Which weights of a CPU run stay file-backed: pages of the memory-mapped checkpoint, not memory a limit must hold.

transformers maps a safetensors checkpoint privately (copy-on-write) and, where a tensor is stored in
the dtype the run computes in, keeps the parameter as a view into that mapping. Those pages are
file-backed: under a memory limit (a cgroup, a container) the kernel drops them and reads them
again when they are next touched, so the run completes, slower, under a limit far below its peak
RSS (docs/benchmarks.md, `memory_limit.py`). What a limit must hold is the anonymous rest.

How each weight ends up, as lathe.model.load leaves it (checked on tiny llamas by comparing each
parameter's address with the file mappings of /proc/self/maps):

    frozen, checkpoint dtype == compute dtype, safetensors      file-backed (a view into the mapping)
    converted (bf16 checkpoint computed in fp32, or the reverse)  anonymous (transformers casts a copy)
    trained (full, GaLore, freeze's trainable layers)            anonymous: the first optimizer step
                                                                 writes them, and a written page of a
                                                                 private mapping becomes a private copy
    adapter weights (LoRA, ...)                                  anonymous (new tensors)
    quantized linear weights                                     anonymous (new tensors)
    a quantized base's embeddings, head and norms               file-backed from a local folder in fp32
                                                                 (`release_checkpoint_mapping` maps their
                                                                 bytes copy-on-write); anonymous from a hub
                                                                 id (owning copies there) or in bf16 / fp16
                                                                 (peft's prepare_model_for_kbit_training
                                                                 casts them to fp32 copies)
    ZeRO-3 / FSDP shards, train_from_scratch, non-safetensors    anonymous

Where the checkpoint is not on this machine (a hub id) the plan cannot read it and assumes
safetensors in the config's `dtype` (float32 where the config names none); `Checkpoint.note` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..model.memory import DTYPE_BYTES, Shape
from ..registry import METHODS
from .variants import Variant

if TYPE_CHECKING:
    from ..config import RunConfig

# Weight files transformers can load that are not memory-mapped safetensors.
OTHER_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.h5", "*.msgpack")


@dataclass(frozen=True)
class Checkpoint:
    """What the plan knows of the weights on disk: the dtype of most of their floating-point bytes
    (None: nothing of them stays mapped), whether they are a folder here, and where that comes from."""

    dtype: torch.dtype | None
    local: bool
    note: str


def checkpoint_of(name: str, config: Any, *, from_scratch: bool = False) -> Checkpoint:
    """The checkpoint `name` (a folder or a hub id) as the loader will map it; `config` is its transformers config."""
    from ..model.quantize import checkpoint_quant_method

    if from_scratch:
        return Checkpoint(None, False, "train_from_scratch: random weights, none mapped")
    if checkpoint_quant_method(config):
        return Checkpoint(None, False, "a quantized checkpoint: its weights are counted resident")
    folder = Path(name).expanduser()
    if folder.is_dir():
        dtype = _safetensors_dtype(folder)
        if dtype is not None:
            return Checkpoint(dtype, True, f"{_name(dtype)} safetensors in {folder}")
        if any(any(folder.glob(pattern)) for pattern in OTHER_WEIGHTS):
            return Checkpoint(None, True, f"{folder} holds no safetensors: its weights are counted resident")
    dtype = _config_dtype(config)
    where = f"{folder} holds no weights yet" if folder.is_dir() else "a hub id"
    return Checkpoint(dtype, folder.is_dir(), f"{where}: assumed {_name(dtype)} safetensors (the config's dtype"
                      + ("" if _config_dtype(config, None) else ", none named: float32") + ")")


def run_checkpoint(cfg: "RunConfig") -> Checkpoint:
    """`checkpoint_of` for a run's model, read as the loader reads it (a ModelScope / Modelers id: its download)."""
    from ..hub import model_snapshot
    from ..model.load import load_model_config

    return checkpoint_of(model_snapshot(cfg.model), load_model_config(cfg.model),
                         from_scratch=cfg.model.train_from_scratch)


def file_backed(shape: Shape, v: Variant, *, trainable: int, compute: torch.dtype, checkpoint: Checkpoint,
                devices: int = 1, shard: str = "none") -> int:
    """Bytes of `v`'s weights that stay file-backed through training (the module docstring's rules).

    `trainable`: the parameters the method trains (the estimate's); `compute`: the run's dtype."""
    if checkpoint.dtype != compute or (devices > 1 and shard in ("zero3", "fsdp")):
        return 0
    per = DTYPE_BYTES[compute]
    if v.quantization_bit:
        mapped = checkpoint.local and compute == torch.float32
        return (shape.total - shape.linear_params) * per if mapped else 0
    if METHODS[v.method].adapter:
        return shape.total * per
    return (shape.total - trainable) * per


def working_set(shape: Shape, v: Variant, *, compute: torch.dtype, mapped: int) -> int:
    """File pages a step needs resident beside the anonymous memory: the file-backed weights of one decoder
    layer (the largest), which the backward pass reads twice in a row (its forward recomputed, then its
    backward). With less room the kernel drops them between the two and the run thrashes (LoRA at 105M
    under 448 MiB: still running after 7x its time); the other layers' pages can be dropped and read again
    as the pass moves on. A quantized base maps only a layer's norms; `mapped`: the bytes that stay
    file-backed at all (measured against the limits in benchmarks/memory_limit.py, docs/efficiency.md)."""
    if not mapped or not shape.layers:
        return 0
    per = DTYPE_BYTES[compute]
    if v.quantization_bit:
        layer = (sum(shape.layer_params) - shape.linear_params) // shape.layers  # a layer's norms
    else:
        layer = max(shape.layer_params)
    return min(mapped, layer * per)


def _safetensors_dtype(folder: Path) -> torch.dtype | None:
    """The floating dtype holding most bytes of the folder's safetensors (headers only); None: none there."""
    from ..model.load import checkpoint_views

    counts: dict[torch.dtype, int] = {}
    for view in checkpoint_views(str(folder)).values():
        counts[view.dtype] = counts.get(view.dtype, 0) + view.shape.numel() * view.dtype.itemsize
    return max(counts, key=counts.__getitem__) if counts else None


def _config_dtype(config: Any, default: torch.dtype | None = torch.float32) -> torch.dtype | None:
    from ..model.load import DTYPES

    text_config = getattr(config, "get_text_config", lambda: config)()
    for source in (config, text_config):
        value = getattr(source, "dtype", None) or getattr(source, "torch_dtype", None)
        if isinstance(value, torch.dtype):
            return value
        if isinstance(value, str) and value in DTYPES:
            return DTYPES[value]
    return default


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
