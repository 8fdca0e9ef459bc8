"""`lathe plan`: what a run will need in memory, worked out before any weight is downloaded.

The model is built on the meta device from its config alone (no weights), so parameter
counts are exact; memory is the sum of documented terms (docs/efficiency.md):

    weights      params x bytes of their dtype (quantized linear weights: bits/8 + scales)
    gradients    trainable x 4 (trainable weights are kept in fp32)
    optimizer    AdamW: trainable x 8 (two fp32 moments); GaLore: the projected moments
    activations  per layer and token: (8 x hidden + 6 x kv + 4 x ffn) x dtype bytes, plus attention
                 scores where the attention is eager; hidden x dtype bytes for a checkpointed layer
                 (model/memory.py says which tensors, and what a tiled MLP drops)
    logits       batch x seq x vocab x 4 bytes x 2 (fp32 logits and their gradient); where the
                 training loop chunks the output layer (train/chunked_logits.py: scored logits of
                 at least 64 MiB), one chunk's logits and gradient (chunk x vocab x 4 x 2) plus the
                 hidden states' gradient taken in the forward pass (batch x seq x hidden x 4)
    overhead     a fixed 64 MiB of framework working memory (Trainer, data loader, autograd
                 bookkeeping), measured: a 0.3M-parameter model's run peaks ~60 MiB above its baseline

ZeRO-2 / FSDP-grad-op split gradients and optimizer state across devices; ZeRO-3 / full-shard
FSDP split the weights too. Estimates, not measurements: `lathe bench` measures.

On a CPU the plan adds a second figure, `limit`: the smallest memory limit (a cgroup's, a
container's) the run completes under. A frozen weight stored in the checkpoint in the dtype the
run computes in stays a view into the memory-mapped safetensors file: file-backed pages that the
kernel drops and reads again under a limit (efficiency/file_backed.py says which weights, as the
loader decides). So the limit is the total of a run short of memory (every layer checkpointed and
the MLP tiled where the config leaves it to memory, as `checkpointing_plan` then chooses), less
those file-backed weights, plus one decoder layer of them: the working set of file pages a step
needs (the backward pass reads a layer's weights twice in a row; with less room it thrashes).
Like the total it leaves out the process's baseline, of which a limit holds only the anonymous
part (~0.37 GiB: Python's and the libraries' heap); the libraries' code (~0.13 GiB) is
file-backed too. Measured (benchmarks/memory_limit.py, docs/benchmarks.md), baseline anon +
limit against the smallest limit: 0.92-1.17 for LoRA, QLoRA, freeze and full at 105M-1.1B.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..config.options import FinetuningArguments
from ..errors import LatheError
from ..model.memory import (DTYPE_BYTES, GiB, Shape, activation_bytes, checkpointing_choice, eager_attention,
                            model_shape, planned_logits, size)
from ..registry import METHODS, OPTIMIZERS
from .file_backed import Checkpoint, file_backed, run_checkpoint, working_set
from .variants import VARIANTS, Variant, variant

if TYPE_CHECKING:
    from ..config import RunConfig

OVERHEAD = 64 * 1024**2  # framework working memory of a run, whatever the model (docs/efficiency.md)


def meta_model(cfg: "RunConfig") -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from ..model.load import load_model_config

    from ..model.multimodal import is_multimodal, model_class

    config = load_model_config(cfg.model)
    auto = model_class(config) if is_multimodal(config) else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config, trust_remote_code=cfg.model.trust_remote_code)


@dataclass
class Estimate:
    method: str  # the variant's name
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int = OVERHEAD
    accumulates: bool = False  # gradient_accumulation_steps > 1: gradients live through the next forward pass

    @property
    def total(self) -> int:
        """The step's peak. The Trainer frees the gradients after each optimizer step (set to None), and the
        backward pass makes them as it frees the activations, so without accumulation the two never add up
        (full fine-tuning at ~500M: the sum overstated the measured peak by 14%)."""
        step = (self.gradients + self.activations + self.logits if self.accumulates
                else max(self.gradients, self.activations + self.logits))
        return self.weights + self.optimizer + step + self.overhead

    @property
    def static(self) -> int:
        return self.weights + self.gradients + self.optimizer


def estimate(shape: Shape, name: str | Variant, *, batch: int, seq: int, dtype_bytes: int = 4, checkpointing: bool = True,
             scores: bool = False, tiled: bool = False, lora_rank: int = 8, freeze_layers: int = 2, galore_rank: int = 16,
             devices: int = 1, shard: str = "none", accumulates: bool = False) -> Estimate:
    """Peak memory per device of one training step of a variant (a name of `variants.VARIANTS`; see the module docstring).

    The method says how many parameters it trains (`Method.planned_trainable`), an adapter's
    weights come on top of the model's, a quantized base stores its linear weights in
    `quantization_bit` bits, and an optimizer with its own state size says it
    (`Optimizer.planned_state`); AdamW keeps two fp32 moments per trainable parameter.
    """
    v = variant(name) if isinstance(name, str) else name
    if not plannable(v):
        raise LatheError(f"`lathe plan` has no estimate for `{v.name}`; it estimates {', '.join(plannable_names())}.")
    f = FinetuningArguments(lora_rank=lora_rank, freeze_trainable_layers=freeze_layers, galore_rank=galore_rank)
    method = METHODS[v.method]
    trainable = method.planned_trainable(shape, f)
    weights = shape.total * dtype_bytes
    optimizer = trainable * 8
    if method.adapter:
        weights += trainable * 4
    if v.quantization_bit:
        # nf4: half a byte per weight plus an fp32 absmax per block of 64; int8: one byte
        # (its per-row scales are negligible). Embeddings and the head stay unquantized.
        per_weight = 0.5 + 4 / 64 if v.quantization_bit == 4 else 1.0
        weights += int(shape.linear_params * (per_weight - dtype_bytes))
    if v.optimizer:
        optimizer = OPTIMIZERS[v.optimizer].planned_state(shape, f)
    gradients = trainable * 4
    if devices > 1 and shard in ("zero2", "zero3", "fsdp"):
        gradients //= devices
        optimizer //= devices
        if shard in ("zero3", "fsdp"):
            weights //= devices
    backward = method.planned_backward_layers(shape, f) if method.planned_backward_layers else shape.layers
    act = activation_bytes(dataclasses.replace(shape, layers=backward), batch, seq, dtype_bytes, checkpointing,
                           scores=scores, tiled=tiled)
    return Estimate(v.name, trainable, weights, gradients, optimizer, act, planned_logits(shape, batch, seq),
                    accumulates=accumulates)


def smallest_limit(shape: Shape, name: str | Variant, checkpoint: Checkpoint, compute: torch.dtype, *, batch: int,
                   **kwargs) -> int:
    """The smallest memory limit a CPU run completes under, over the process's baseline: the estimate's total less
    the weights that stay file-backed (`file_backed`), plus the file pages a step works in (`working_set`: one
    layer of them). `kwargs`: `estimate`'s, as a run short of memory sets them (`short_of_memory`)."""
    v = variant(name) if isinstance(name, str) else name
    e = estimate(shape, v, batch=batch, **kwargs)
    mapped = file_backed(shape, v, trainable=e.trainable, compute=compute, checkpoint=checkpoint,
                         devices=kwargs.get("devices", 1), shard=kwargs.get("shard", "none"))
    return e.total - mapped + working_set(shape, v, compute=compute, mapped=mapped)


def short_of_memory(cfg: "RunConfig", kwargs: dict) -> dict:
    """`estimate`'s kwargs for a run that memory decides (`checkpointing_plan`) and finds short: every layer
    checkpointed and the MLP tiled, unless the config decides them itself."""
    if checkpointing_choice(cfg) is not None:
        return kwargs
    return {**kwargs, "checkpointing": True, "tiled": cfg.model.tiled_mlp is not False}


def longest_cutoff(shape: Shape, name: str, memory: int, batch: int = 1, limit: int = 1 << 21, **kwargs) -> int:
    """The longest `cutoff_len` whose estimate fits `memory` (0: not even one token), by bisection:
    the estimate grows with the sequence (activations, logits)."""
    def fits(seq: int) -> bool:
        return estimate(shape, name, batch=batch, seq=seq, **kwargs).total <= memory

    if not fits(1):
        return 0
    low, high = 1, limit
    if fits(high):
        return high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def plannable(v: Variant) -> bool:
    """Whether the plan can estimate `v`: its method counts its trainable parameters, its optimizer its state."""
    return (METHODS[v.method].planned_trainable is not None
            and (v.optimizer is None or OPTIMIZERS[v.optimizer].planned_state is not None))


def plannable_names() -> list[str]:
    return [name for name, v in VARIANTS.items() if plannable(v)]


def largest_batch(shape: Shape, name: str, memory: int, seq: int, **kwargs) -> int:
    one = estimate(shape, name, batch=1, seq=seq, **kwargs)
    per_sample = one.activations + one.logits
    room = memory - one.weights - one.optimizer - one.overhead - (one.gradients if one.accumulates else 0)
    if not per_sample or room < one.gradients:  # without accumulation the gradients take the activations' place
        return 0
    return max(0, int(room // per_sample))


def parse_memory(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        raise LatheError(f"--device-memory {text!r}: write it like 24GiB, 80GB or 16000MiB.")
    value, unit = float(m.group(1)), (m.group(2) or "GiB").upper()
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit[0]]
    if "I" not in unit and unit.endswith("B"):
        scale = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[unit[0]]
    return int(value * scale)


@dataclass(frozen=True)
class Lengths:
    """How long a step's sequences are: the longest sample (at most cutoff_len), and sequences per sample."""

    seq: int
    rows: int = 1
    note: str = ""  # where the numbers come from, for the plan's header


def data_lengths(cfg: "RunConfig") -> Lengths:
    """The run's real longest sample, read and tokenized as `lathe train` reads it (and cached for it);
    every sample `cutoff_len` long where the config names no data or it cannot be read here."""
    cutoff = cfg.data.cutoff_len
    if not cfg.data.dataset or cfg.data.streaming:
        why = "no dataset in the config" if not cfg.data.dataset else "streaming data is not read ahead"
        return Lengths(cutoff, note=f"every sample counted as cutoff_len ({why})")
    from ..data.lengths import longest_sample, rows_per_sample
    from ..train.base import read_data

    try:
        train = read_data(cfg).data.train
    except (LatheError, OSError) as e:
        return Lengths(cutoff, note=f"every sample counted as cutoff_len (the data could not be read here: {e})")
    longest = longest_sample(train)
    if longest is None:
        return Lengths(cutoff, note="every sample counted as cutoff_len")
    rows = rows_per_sample(train)
    pairs = ", chosen and rejected in one batch" if rows == 2 else ""
    return Lengths(min(longest, cutoff), rows,
                   f"the longest of {len(train):,} samples is {longest:,} tokens (cutoff_len {cutoff:,}){pairs}")


def plan_kwargs(cfg: "RunConfig", devices: int = 1, shard: str = "none", lengths: Lengths | None = None) -> dict:
    """`estimate`'s keyword arguments (all but the variant and batch) as the config sets them."""
    from ..model.load import resolve_dtype

    f = cfg.finetuning
    return dict(seq=lengths.seq if lengths else cfg.data.cutoff_len, dtype_bytes=DTYPE_BYTES[resolve_dtype(cfg)],
                checkpointing=bool(checkpointing_choice(cfg)),  # unset: off, as where memory is plenty
                scores=eager_attention(cfg), tiled=cfg.model.tiled_mlp is True, lora_rank=f.lora_rank,
                freeze_layers=f.freeze_trainable_layers, galore_rank=f.galore_rank, devices=devices, shard=shard,
                accumulates=cfg.training.gradient_accumulation_steps > 1)


def planned_shape(cfg: "RunConfig", model: torch.nn.Module | None = None) -> Shape:
    """The model's shape (built on the meta device when not given) with the parameters the config keeps frozen
    whatever the method: a multimodal model's encoder and projector under freeze_vision_tower /
    freeze_multi_modal_projector (full fine-tuning trains the rest)."""
    from ..model.multimodal import frozen_parts, is_multimodal, part_params

    model = meta_model(cfg) if model is None else model
    shape = model_shape(model)
    if not is_multimodal(model.config):
        return shape
    counts = part_params(model)
    return dataclasses.replace(shape, frozen=sum(counts.get(part, 0) for part in frozen_parts(cfg)))


def plan_totals(cfg: "RunConfig", names: list[str], lengths: Lengths | None = None) -> dict[str, int]:
    """Estimated peak bytes per variant for the config's batch (what `lathe bench` sets beside its measurements)."""
    shape = planned_shape(cfg)
    kwargs = plan_kwargs(cfg, lengths=lengths)
    rows = lengths.rows if lengths else 1
    return {n: estimate(shape, n, batch=cfg.training.per_device_train_batch_size * rows, **kwargs).total for n in names}


def plan_limits(cfg: "RunConfig", names: list[str], lengths: Lengths | None = None) -> dict[str, int]:
    """`smallest_limit` per variant for the config's batch, over the baseline (what memory_limit.py sets beside
    its measured limits)."""
    from ..model.load import resolve_dtype

    shape, checkpoint, compute = planned_shape(cfg), run_checkpoint(cfg), resolve_dtype(cfg)
    kwargs = short_of_memory(cfg, plan_kwargs(cfg, lengths=lengths))
    batch = cfg.training.per_device_train_batch_size * (lengths.rows if lengths else 1)
    return {n: smallest_limit(shape, n, checkpoint, compute, batch=batch, **kwargs) for n in names}


def checkpoint_line(checkpoint: Checkpoint, compute: torch.dtype) -> str:
    """The plan's header line on the checkpoint: what it is, and whether its frozen weights can stay mapped."""
    if checkpoint.dtype is None:
        return f"checkpoint: {checkpoint.note}"
    mapped = ("its frozen weights stay memory-mapped" if checkpoint.dtype == compute
              else "every weight is converted, none stays memory-mapped")
    return f"checkpoint: {checkpoint.note}; the run computes in {str(compute).removeprefix('torch.')}: {mapped}"


def media_lines(cfg: "RunConfig", model) -> list[str]:
    """A multimodal model's encoder and projector, whether they train, and what a typical image costs in tokens."""
    from ..model.multimodal import frozen_parts, image_tokens, is_multimodal, part_params

    if not is_multimodal(model.config):
        return []
    counts, frozen = part_params(model), frozen_parts(cfg)
    parts = ", ".join(f"{part} {counts.get(part, 0):,} ({'frozen' if part in frozen else 'trains'})"
                      for part in ("vision", "projector"))
    tokens = image_tokens(model.config, cfg.data.image_max_pixels)
    per_image = (f"; an image of image_max_pixels ({cfg.data.image_max_pixels:,}) becomes about {tokens:,} tokens "
                 "of cutoff_len" if tokens else "")
    return [f"multimodal: {parts}{per_image}. `full` trains the parts not frozen (freeze_vision_tower, "
            "freeze_multi_modal_projector); the weights counted are the whole model's."]


def plan(cfg: "RunConfig", memory: int | None, devices: int = 1, shard: str = "none",
         lengths: Lengths | None = None, cpu: bool | None = None) -> str:
    """The plan's table. `lengths`: the data's real sequence lengths (`data_lengths`); None: cutoff_len.
    `cpu`: whether the run trains on a CPU, which adds the `limit` column (None: this machine's, no CUDA
    device); a GPU holds every weight in its own memory, so there the total is the figure."""
    from ..model.load import resolve_dtype

    model = meta_model(cfg)
    shape = planned_shape(cfg, model)
    t = cfg.training
    kwargs = plan_kwargs(cfg, devices, shard, lengths)
    rows = lengths.rows if lengths else 1
    batch = t.per_device_train_batch_size * rows
    cpu = not torch.cuda.is_available() if cpu is None else cpu
    checkpoint = run_checkpoint(cfg) if cpu else None
    compute = resolve_dtype(cfg)
    lines = [
        f"model {cfg.model.model_name_or_path}: {shape.total:,} parameters, {shape.layers} layers, hidden {shape.hidden}, "
        f"vocab {shape.vocab}; batch {batch} x {kwargs['seq']:,} tokens, gradient checkpointing "
        f"{'on' if kwargs['checkpointing'] else 'off'}" + (f", {devices} devices ({shard})" if devices > 1 else ""),
        *([f"sequences: {lengths.note}"] if lengths and lengths.note else []),
        *([checkpoint_line(checkpoint, compute)] if checkpoint else []),
        "",
        f"{'method':<8} {'trainable':>14} {'weights':>9} {'grads':>8} {'optim':>8} {'activ.':>8} {'logits':>8} "
        f"{'total':>9}" + (f" {'limit':>9}" if cpu else "") + f" {'B/param':>8}"
        + ("  fits   max batch  max cutoff" if memory else ""),
    ]
    starved = short_of_memory(cfg, kwargs)
    no_seq = {k: v for k, v in starved.items() if k != "seq"}
    for method in plannable_names():
        e = estimate(shape, method, batch=batch, **kwargs)
        row = (f"{method:<8} {e.trainable:>14,} {size(e.weights):>9} {size(e.gradients):>8} {size(e.optimizer):>8} "
               f"{size(e.activations):>8} {size(e.logits):>8} {size(e.total):>9}")
        if checkpoint:
            row += f" {size(smallest_limit(shape, method, checkpoint, compute, batch=batch, **starved)):>9}"
        row += f" {e.static / shape.total:>8.2f}"
        if memory:
            row += (f"  {'yes' if e.total <= memory else 'no':<5}  {largest_batch(shape, method, memory, **kwargs):>9}"
                    f"  {longest_cutoff(shape, method, memory, batch=batch, **no_seq):>10,}")
        lines.append(row)
    lines += ["", "B/param counts weights, gradients and optimizer state; activations and logits grow with the batch;",
              f"total adds {OVERHEAD // 1024**2} MiB of framework working memory. Logits are chunked where big "
              "(train/chunked_logits.py).",
              *(["limit (CPU): the smallest memory limit (cgroup, container) the run completes under, slower: the",
                 "total with every layer checkpointed (as a run short of memory chooses, unless the config decides)",
                 "less the frozen weights that stay file-backed in the memory-mapped checkpoint (the kernel drops and",
                 "re-reads them), plus one layer of them for the step to work in. Both figures leave out the process's",
                 "baseline (~0.5 GiB), of which a limit must hold the anonymous part (~0.37 GiB)."] if checkpoint else []),
              *(["max cutoff: the longest cutoff_len that fits the memory at this batch (with every layer checkpointed "
                 "and the MLP tiled, as the run does when memory needs it, unless the config decides)."] if memory else []),
              "Formulas: docs/efficiency.md. Estimates: measure with a short run before renting hardware.",
              *media_lines(cfg, model)]
    if memory:
        lines.insert(1, f"device memory: {memory / GiB:.1f} GiB")
    return "\n".join(lines)
