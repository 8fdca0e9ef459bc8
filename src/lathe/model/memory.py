"""How much memory the parts of a training step take, from a model's shape: the formulas the run and `lathe plan` share.

Terms (docs/efficiency.md):

    activations  per layer and token, what the backward pass needs of a decoder layer:
                 (8 x hidden + 6 x kv + 4 x ffn) x dtype bytes (norm inputs and outputs, q/k/v
                 before and after RoPE, the attention output; the MLP's gate, up, activation and
                 product), plus 5 x heads x seq x dtype bytes / 2 of attention scores where the
                 attention is eager (sdpa and flash kernels never hold them); a tiled MLP
                 (model/tiled_mlp.py) drops the 4 x ffn; a checkpointed layer keeps only its
                 input (hidden x dtype bytes) and one layer is recomputed at a time
    logits       batch x seq x vocab x 4 bytes x 2 (fp32 logits and their gradient)

The run uses them to decide how many layers to checkpoint and whether to tile the MLP
(`checkpointing_plan`); `lathe plan` (efficiency/plan.py) adds weights, gradients and optimizer
states per method.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path  # noqa: F401  (tests/model/test_memory_saving.py reaches Path through this module)
from typing import TYPE_CHECKING

import torch

# /proc and cgroup reading lives in the torch-free lathe.sysmem (the Board reads it too); named here as before
from ..sysmem import CGROUP_ROOT, NO_LIMIT, GiB, available_memory, cgroup_available, size  # noqa: F401

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


@dataclass
class Shape:
    """What the estimate needs to know about a model, read from its meta-device build."""

    total: int  # all parameters
    linear_in_layers: dict[str, tuple[int, int]]  # "layers.3.self_attn.q_proj" -> (in, out)
    layer_params: list[int]  # parameters per decoder layer
    embedding: int  # input embedding (+ untied output head) parameters
    hidden: int
    layers: int
    heads: int
    vocab: int
    kv: int = 0  # width of the key (and value) projection: KV heads x head size; 0 = hidden
    ffn: int = 0  # the MLP's inner width; 0 = 4 x hidden
    frozen: int = 0  # parameters no method trains: a multimodal model's frozen encoder / projector (plan.planned_shape)

    @property
    def linear_params(self) -> int:
        """Weights of the decoder layers' linear layers (what quantization and GaLore's projection act on)."""
        return sum(i * o for i, o in self.linear_in_layers.values())


def model_shape(model: torch.nn.Module) -> Shape:
    from .adapters.common import decoder_layers, embedding_module_names

    prefix, layers = decoder_layers(model)
    config = model.config
    config = getattr(config, "get_text_config", lambda: config)()  # a multimodal model's language model
    head_names = set(embedding_module_names(model))
    linear = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith(prefix + ".") and name.split(".")[-1] not in head_names:
            linear[name] = (module.in_features, module.out_features)
    embedding = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(prefix + "."))
    return Shape(
        total=sum(p.numel() for p in model.parameters()),
        linear_in_layers=linear,
        layer_params=[sum(p.numel() for p in layer.parameters()) for layer in layers],
        embedding=embedding,
        hidden=config.hidden_size,
        layers=len(layers),
        heads=config.num_attention_heads,
        vocab=config.vocab_size,
        kv=_kv_width(config),
        ffn=getattr(config, "intermediate_size", None) or 4 * config.hidden_size,
    )


def _kv_width(config) -> int:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (getattr(config, "num_key_value_heads", None) or heads) * head_dim


def layer_bytes(shape: Shape, batch: int, seq: int, dtype_bytes: int, *, scores: bool = False,
                tiled: bool = False) -> int:
    """What one decoder layer keeps for its backward pass without checkpointing (see the module docstring)."""
    kv = shape.kv or shape.hidden
    mlp = 0 if tiled else 4 * (shape.ffn or 4 * shape.hidden)
    kept = batch * seq * (8 * shape.hidden + 6 * kv + mlp) * dtype_bytes
    if scores:
        kept += batch * seq * 5 * shape.heads * seq * dtype_bytes // 2
    return kept


def activation_bytes(shape: Shape, batch: int, seq: int, dtype_bytes: int, checkpointing: bool | int, *,
                     scores: bool = False, tiled: bool = False) -> int:
    """Peak activation memory with `checkpointing` layers checkpointed (True: all, False: none).

    The first k layers are the checkpointed ones: the backward pass has freed the others' activations
    by the time it recomputes those, so the peak is the larger of the two moments."""
    k = shape.layers if checkpointing is True else int(checkpointing)
    full = layer_bytes(shape, batch, seq, dtype_bytes, scores=scores, tiled=tiled)
    if k == 0:
        return shape.layers * full
    kept = batch * seq * shape.hidden * dtype_bytes  # a checkpointed layer's input
    return max((shape.layers - k) * full + k * kept, k * kept + full)


def logits_bytes(shape: Shape, batch: int, seq: int) -> int:
    return batch * seq * shape.vocab * 4 * 2


# The output layer in chunks (train/chunked_logits.py): sized here, where the plan and the
# checkpointing decision can read it without importing the training code.
CHUNK_BYTES = 128 * 1024**2  # float32 logits of one chunk (a 152k vocabulary: 220 positions)
MIN_CHUNK, MAX_CHUNK = 16, 4096
# Scored logits (float32) at or above this per micro-batch take the chunked path: below it the
# logits are small next to the weights and the plain path is as fast (docs/efficiency.md).
CHUNK_THRESHOLD_BYTES = 64 * 1024**2


def chunk_rows(vocab: int, budget: int = CHUNK_BYTES) -> int:
    """Positions per chunk: as many as fit `budget` bytes of float32 logits, within [16, 4096]."""
    return max(MIN_CHUNK, min(MAX_CHUNK, budget // (4 * vocab)))


def worth_chunking(positions: int, vocab: int) -> bool:
    """Whether `positions` scored logits over `vocab` words are big enough to chunk (see CHUNK_THRESHOLD_BYTES)."""
    return positions * vocab * 4 >= CHUNK_THRESHOLD_BYTES


def planned_logits(shape: Shape, batch: int, seq: int) -> int:
    """The logits term: whole (fp32 logits + gradient), or, where training chunks them, one chunk of each
    plus the fp32 gradient of the hidden states that the chunked loss keeps from its forward pass."""
    positions = batch * seq
    if not worth_chunking(positions, shape.vocab):
        return logits_bytes(shape, batch, seq)
    rows = min(positions, chunk_rows(shape.vocab))
    return rows * shape.vocab * 4 * 2 + positions * shape.hidden * 4


def free_memory() -> int | None:
    """Bytes free on the training device now: CUDA's free memory; on a CPU the kernel's MemAvailable,
    capped by what the process's memory cgroup still allows (a container's or a job's limit)."""
    if torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    return available_memory()


ACTIVATION_SHARE = 0.5  # of the free memory, for one batch's activations and logits


def checkpointing_choice(cfg: "RunConfig") -> bool | None:
    """Gradient checkpointing as the config decides it: on, off, or None (unset: memory decides).
    Offloading checkpointed activations means checkpointing every layer."""
    if "disable_gradient_checkpointing" in cfg.explicit:
        return not cfg.model.disable_gradient_checkpointing
    if offloads_activations(cfg):
        return True
    return None


def offloads_activations(cfg: "RunConfig") -> bool:
    """`offload_activations`, or LLaMA-Factory's `use_unsloth_gc` without unsloth (the same thing there)."""
    return cfg.model.offload_activations or (cfg.model.use_unsloth_gc and not cfg.model.use_unsloth)


def eager_attention(cfg: "RunConfig") -> bool:
    """Whether the attention holds its scores (`flash_attn: disabled`); sdpa and flash kernels do not."""
    return cfg.model.flash_attn == "disabled"


@dataclass(frozen=True)
class Checkpointing:
    """How a run trades compute for memory: which layers it recomputes and whether the MLP runs in tiles."""

    layers: int  # the first `layers` decoder layers are checkpointed (0: none)
    total: int  # the model's decoder layers
    tiled_mlp: bool
    offload: bool  # checkpointed inputs wait in host memory (GPU runs)
    why: str

    def describe(self) -> str:
        total = self.total
        which = "off" if not self.layers else "on" if self.layers >= total else f"on for {self.layers} of {total} layers"
        tiles = ", MLP in tiles" if self.tiled_mlp else ""
        offload = ", checkpointed activations offloaded to host memory" if self.offload else ""
        return f"gradient checkpointing {which}{tiles}{offload} ({self.why})"


def checkpointing_plan(cfg: "RunConfig", model: torch.nn.Module, seq: int | None = None, rows: int = 1) -> Checkpointing:
    """How many layers to checkpoint and whether to tile the MLP: as the config says, or (unset) as
    little as memory allows.

    Recomputing a layer in the backward pass costs about a third of its step time, and
    recomputing an MLP tile about a fifth. LLaMA-Factory checkpoints every layer always; lathe
    estimates a batch's activations and logits (the plan's formulas, `per_device_train_batch_size`
    x `rows` sequences of the longest sample `seq`, at most `cutoff_len`, cut over the
    `sequence_parallel_size` processes that share it) and, while they would
    take more than half of the free memory, checkpoints one more layer; when even every layer
    checkpointed does not fit, the MLP runs in tiles too (`tiled_mlp` unset).
    """
    from .load import resolve_dtype

    shape = model_shape(model)
    batch = cfg.training.per_device_train_batch_size * rows
    seq = min(seq, cfg.data.cutoff_len) if seq else cfg.data.cutoff_len
    seq = math.ceil(seq / cfg.run.sequence_parallel_size)  # each process of a group holds its slice
    dtype = DTYPE_BYTES[resolve_dtype(cfg)]
    scores = eager_attention(cfg)
    tiled = cfg.model.tiled_mlp

    def needed(layers: int, tiles: bool) -> int:
        return activation_bytes(shape, batch, seq, dtype, layers, scores=scores, tiled=tiles) + planned_logits(shape, batch, seq)

    offload = offloads_activations(cfg)
    chosen = checkpointing_choice(cfg)
    free = free_memory()
    budget = None if free is None else int(free * ACTIVATION_SHARE)
    where = "free memory unknown" if free is None else f"{size(free)} free"
    if chosen is not None:
        layers = shape.layers if chosen else 0
        auto_tiles = tiled is None and layers and budget is not None and needed(layers, False) > budget
        tiles = bool(tiled or auto_tiles)
        why = "as configured" + (f"; {size(needed(layers, False))} of activations, {where}" if auto_tiles else "")
        return Checkpointing(layers, shape.layers, tiles, offload and bool(layers), why)
    tiles = bool(tiled)
    if budget is None:
        return Checkpointing(shape.layers, shape.layers, tiles, False, where)
    for layers in range(shape.layers + 1):
        if needed(layers, tiles) <= budget:
            return Checkpointing(layers, shape.layers, tiles, False,
                                 f"{size(needed(layers, tiles))} of activations for a {batch} x {seq} batch, {where}")
    tiles = tiled is not False
    return Checkpointing(shape.layers, shape.layers, tiles, False,
                         f"{size(needed(shape.layers, tiles))} of activations for a {batch} x {seq} batch even so, "
                         f"{where}: it may not fit")
