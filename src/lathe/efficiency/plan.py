"""`lathe plan`: what a run will need in memory, worked out before any weight is downloaded.

The model is built on the meta device from its config alone (no weights), so parameter
counts are exact; memory is the sum of documented terms (docs/efficiency.md):

    weights      params x bytes of their dtype (quantized linear weights: bits/8 + scales)
    gradients    trainable x 4 (trainable weights are kept in fp32)
    optimizer    AdamW: trainable x 8 (two fp32 moments); GaLore: the projected moments
    activations  per layer and token: hidden x dtype bytes with gradient checkpointing,
                 else (34 x hidden + 5 x heads x seq) x dtype bytes / 2 (Korthikanti et al. 2022)
    logits       batch x seq x vocab x 4 bytes x 2 (fp32 logits and their gradient)
    overhead     a fixed 64 MiB of framework working memory (Trainer, data loader, autograd
                 bookkeeping), measured: a 0.3M-parameter model's run peaks ~60 MiB above its baseline

ZeRO-2 / FSDP-grad-op split gradients and optimizer state across devices; ZeRO-3 / full-shard
FSDP split the weights too. Estimates, not measurements: `lathe bench` measures.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import LatheError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..config import RunConfig

GiB = 1024**3
DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
METHODS = ("full", "freeze", "lora", "qlora8", "qlora4", "galore")
OVERHEAD = 64 * 1024**2  # framework working memory of a run, whatever the model (docs/efficiency.md)


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


def model_shape(model: torch.nn.Module) -> Shape:
    from ..model.adapters.common import decoder_layers, embedding_module_names

    prefix, layers = decoder_layers(model)
    config = model.config
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


def meta_model(cfg: "RunConfig") -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from ..model.load import load_model_config

    config = load_model_config(cfg.model)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.model.trust_remote_code)


def lora_params(shape: Shape, rank: int, targets: list[str] | None) -> int:
    """Trainable LoRA parameters: rank x (in + out) for every targeted linear layer."""
    return sum(rank * (i + o) for name, (i, o) in shape.linear_in_layers.items()
               if targets is None or name.split(".")[-1] in targets)


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


@dataclass
class Estimate:
    method: str
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int = OVERHEAD

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.overhead

    @property
    def static(self) -> int:
        return self.weights + self.gradients + self.optimizer


def estimate(shape: Shape, method: str, *, batch: int, seq: int, dtype_bytes: int = 4, checkpointing: bool = True,
             lora_rank: int = 8, freeze_layers: int = 2, galore_rank: int = 16, devices: int = 1,
             shard: str = "none") -> Estimate:
    """Peak memory per device of one training step of `method` (see the module docstring)."""
    linear_total = sum(i * o for i, o in shape.linear_in_layers.values())
    weights = shape.total * dtype_bytes
    if method == "full":
        trainable = shape.total
        optimizer = trainable * 8
    elif method == "freeze":
        trainable = sum(shape.layer_params[-freeze_layers:])
        optimizer = trainable * 8
    elif method in ("lora", "qlora8", "qlora4"):
        trainable = lora_params(shape, lora_rank, None)
        optimizer = trainable * 8
        weights += trainable * 4
        if method != "lora":
            # nf4: half a byte per weight plus an fp32 absmax per block of 64; int8: one byte
            # (its per-row scales are negligible). Embeddings and the head stay unquantized.
            per_weight = 0.5 + 4 / 64 if method == "qlora4" else 1.0
            weights += int(linear_total * (per_weight - dtype_bytes))
    elif method == "galore":
        trainable = shape.total
        projected = sum(2 * galore_rank * max(i, o) for i, o in shape.linear_in_layers.values())
        optimizer = (shape.total - linear_total) * 8 + projected * 4
    else:
        raise LatheError(f"unknown method {method!r}; plan knows {', '.join(METHODS)}.")
    gradients = trainable * 4
    if devices > 1 and shard in ("zero2", "zero3", "fsdp"):
        gradients //= devices
        optimizer //= devices
        if shard in ("zero3", "fsdp"):
            weights //= devices
    act = activation_bytes(shape, batch, seq, dtype_bytes, checkpointing)
    return Estimate(method, trainable, weights, gradients, optimizer, act, logits_bytes(shape, batch, seq))


def largest_batch(shape: Shape, method: str, memory: int, seq: int, **kwargs) -> int:
    one = estimate(shape, method, batch=1, seq=seq, **kwargs)
    per_sample = one.activations + one.logits
    room = memory - one.static - one.overhead
    return max(0, int(room // per_sample)) if per_sample else 0


def parse_memory(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        raise LatheError(f"--device-memory {text!r}: write it like 24GiB, 80GB or 16000MiB.")
    value, unit = float(m.group(1)), (m.group(2) or "GiB").upper()
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit[0]]
    if "I" not in unit and unit.endswith("B"):
        scale = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[unit[0]]
    return int(value * scale)


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
    from ..model.load import resolve_dtype

    chosen = checkpointing_choice(cfg)
    if chosen is not None:
        return chosen
    shape = model_shape(model)
    batch, seq = cfg.training.per_device_train_batch_size, cfg.data.cutoff_len
    needed = activation_bytes(shape, batch, seq, DTYPE_BYTES[resolve_dtype(cfg)], False) + logits_bytes(shape, batch, seq)
    free = free_memory()
    wanted = free is None or needed > free * ACTIVATION_SHARE
    where = "free memory unknown" if free is None else f"{size(needed)} of activations for a {batch} x {seq} batch, {size(free)} free"
    logger.info("gradient checkpointing %s (%s); `disable_gradient_checkpointing: true/false` decides it yourself.",
                "on" if wanted else "off", where)
    return wanted


def plan_kwargs(cfg: "RunConfig", devices: int = 1, shard: str = "none") -> dict:
    """`estimate`'s keyword arguments (all but the method and batch) as the config sets them."""
    from ..model.load import resolve_dtype

    f = cfg.finetuning
    return dict(seq=cfg.data.cutoff_len, dtype_bytes=DTYPE_BYTES[resolve_dtype(cfg)],
                checkpointing=bool(checkpointing_choice(cfg)),  # unset: off, as where memory is plenty
                lora_rank=f.lora_rank,
                freeze_layers=abs(f.freeze_trainable_layers), galore_rank=f.galore_rank, devices=devices, shard=shard)


def plan_totals(cfg: "RunConfig", methods: list[str]) -> dict[str, int]:
    """Estimated peak bytes per method for the config's batch (what `lathe bench` sets beside its measurements)."""
    shape = model_shape(meta_model(cfg))
    kwargs = plan_kwargs(cfg)
    return {m: estimate(shape, m, batch=cfg.training.per_device_train_batch_size, **kwargs).total for m in methods}


def plan(cfg: "RunConfig", memory: int | None, devices: int = 1, shard: str = "none") -> str:
    shape = model_shape(meta_model(cfg))
    t = cfg.training
    kwargs = plan_kwargs(cfg, devices, shard)
    batch = t.per_device_train_batch_size
    lines = [
        f"model {cfg.model.model_name_or_path}: {shape.total:,} parameters, {shape.layers} layers, hidden {shape.hidden}, "
        f"vocab {shape.vocab}; batch {batch} x {cfg.data.cutoff_len} tokens, gradient checkpointing "
        f"{'on' if kwargs['checkpointing'] else 'off'}" + (f", {devices} devices ({shard})" if devices > 1 else ""),
        "",
        f"{'method':<8} {'trainable':>14} {'weights':>9} {'grads':>8} {'optim':>8} {'activ.':>8} {'logits':>8} "
        f"{'total':>9} {'B/param':>8}" + ("  fits   max batch" if memory else ""),
    ]
    for method in METHODS:
        e = estimate(shape, method, batch=batch, **kwargs)
        row = (f"{method:<8} {e.trainable:>14,} {size(e.weights):>9} {size(e.gradients):>8} {size(e.optimizer):>8} "
               f"{size(e.activations):>8} {size(e.logits):>8} {size(e.total):>9} {e.static / shape.total:>8.2f}")
        if memory:
            row += f"  {'yes' if e.total <= memory else 'no':<5}  {largest_batch(shape, method, memory, **kwargs):>9}"
        lines.append(row)
    lines += ["", "B/param counts weights, gradients and optimizer state; activations and logits grow with the batch;",
              f"total adds {OVERHEAD // 1024**2} MiB of framework working memory.",
              "Formulas: docs/efficiency.md. Estimates: measure with a short run before renting hardware."]
    if memory:
        lines.insert(1, f"device memory: {memory / GiB:.1f} GiB")
    return "\n".join(lines)

