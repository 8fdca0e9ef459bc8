"""How much memory the parts of a training step take, from a model's shape: the formulas the run and `lathe plan` share.

Terms (docs/efficiency.md):

    activations  per layer and token: hidden x dtype bytes with gradient checkpointing,
                 else (34 x hidden + 5 x heads x seq) x dtype bytes / 2 (Korthikanti et al. 2022)
    logits       batch x seq x vocab x 4 bytes x 2 (fp32 logits and their gradient)

The run uses them to decide whether gradient checkpointing is needed (`gradient_checkpointing_wanted`);
`lathe plan` (efficiency/plan.py) adds weights, gradients and optimizer states per method.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

GiB = 1024**3
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
    )


def activation_bytes(shape: Shape, batch: int, seq: int, dtype_bytes: int, checkpointing: bool) -> int:
    tokens = batch * seq
    if checkpointing:  # only each layer's input is kept; one layer is recomputed at a time
        per_token_layer = shape.hidden * dtype_bytes
        recompute = tokens * (34 * shape.hidden + 5 * shape.heads * seq) * dtype_bytes // 2
        return tokens * per_token_layer * shape.layers + recompute
    per_token_layer = (34 * shape.hidden + 5 * shape.heads * seq) * dtype_bytes // 2
    return tokens * per_token_layer * shape.layers


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


def size(n: int) -> str:
    return f"{n / GiB:.2f}G" if n >= GiB / 10 else f"{n / 1024**2:.1f}M"


def free_memory() -> int | None:
    """Bytes free on the training device now: CUDA's free memory, or the kernel's MemAvailable on a CPU."""
    if torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


ACTIVATION_SHARE = 0.5  # of the free memory, for one batch's activations and logits without checkpointing


def checkpointing_choice(cfg: "RunConfig") -> bool | None:
    """Gradient checkpointing as the config decides it: on, off, or None (unset: memory decides)."""
    if "disable_gradient_checkpointing" in cfg.explicit:
        return not cfg.model.disable_gradient_checkpointing
    return None


def gradient_checkpointing_wanted(cfg: "RunConfig", model: torch.nn.Module) -> bool:
    """Whether to trade compute for memory: as the config says, or (unset) only when memory needs it.

    Recomputing every layer in the backward pass costs about a third of a step. LLaMA-Factory
    always pays it; lathe pays it when a batch's activations and logits without checkpointing
    (the plan's formulas, `per_device_train_batch_size` x `cutoff_len`) would take more than
    half of the device's free memory, and says which way it went and why.
    """
    from .load import resolve_dtype

    chosen = checkpointing_choice(cfg)
    if chosen is not None:
        return chosen
    shape = model_shape(model)
    batch, seq = cfg.training.per_device_train_batch_size, cfg.data.cutoff_len
    needed = activation_bytes(shape, batch, seq, DTYPE_BYTES[resolve_dtype(cfg)], False) + planned_logits(shape, batch, seq)
    free = free_memory()
    wanted = free is None or needed > free * ACTIVATION_SHARE
    where = "free memory unknown" if free is None else f"{size(needed)} of activations for a {batch} x {seq} batch, {size(free)} free"
    logger.info("gradient checkpointing %s (%s); `disable_gradient_checkpointing: true/false` decides it yourself.",
                "on" if wanted else "off", where)
    return wanted
