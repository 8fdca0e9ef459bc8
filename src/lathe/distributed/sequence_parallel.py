"""One sequence over several processes: `sequence_parallel_size: N` (Ulysses attention, through DeepSpeed).

Why this module is glue and no more: DeepSpeed's ALST ships Ulysses sequence parallelism for
Hugging Face models (`deepspeed.runtime.sequence_parallel.ulysses_sp`: `UlyssesSPAttentionHF`
swaps the model's attention function for one that exchanges heads for sequence with an
all-to-all, `UlyssesSPDataLoaderAdapter` cuts every batch along the sequence), accelerate
drives it from `ParallelismConfig(sp_size=N, sp_backend="deepspeed")`, and the Trainer averages
the loss over the group's shards by their learned tokens (`deepspeed_sp_compute_loss`) and
gives the DeepSpeed engine the sequence-parallel groups, so ZeRO (or its stage 0, plain data
parallelism) runs over the remaining `world_size / N` processes. All of it runs on a CPU
over gloo, which is how lathe tests it (tests/distributed/test_sequence_parallel.py).

lathe adds what those pieces assume and do not check, so a run that cannot be exact is refused
before it starts instead of training on a wrong loss:

- accelerate only wires sequence parallelism inside its DeepSpeed set-up: the run needs
  `deepspeed:` (ZeRO-0 is plain data parallelism over the other processes);
- the attention function sees no mask (DeepSpeed drops it: a full-length 4D mask is O(n^2)),
  only the whole sequence's position ids, gathered over the group. FlashAttention-2/3 and
  lathe's own `lathe_sdpa` (model/patches/varlen_sdpa.py: causal sdpa inside each sample of a
  one-row batch, what lathe loads for plain causal decoders) keep the samples of a flattened
  row (`padding_free`, packing) apart by those positions; plain `sdpa` does not, so there every
  row must be one causal sequence padded at its end, and a flattened batch is refused;
- DeepSpeed's attention is built for `per_device_train_batch_size` rows per batch, so a batch
  that flattens its samples into one row (`padding_free`, packing) needs a batch size of 1
  (more samples per step: `gradient_accumulation_steps`, or longer packed rows);
- every batch's length must divide by N, and it must carry position ids
  (`SequenceParallelCollator` pads and adds them). Over gloo (a CPU) the batches of the group
  must also have one length: DeepSpeed's loader gathers each process's batch before cutting
  it, and gloo's all-gather takes equal sizes only (NCCL's takes uneven ones), so there every
  batch is padded to the longest a row can be (`cutoff_len`);
- the heads are split over the group: the attention heads must divide by N, and the key/value
  heads divide by N or N by them; the processes must divide by N;
- the Trainer's sequence-parallel loss is the model's own cross-entropy: SFT's reweighted losses,
  label smoothing and the stages with their own losses are refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import LatheError
from ..registry import STAGES as STAGE_REGISTRY

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

KEY = "sequence_parallel_size"
VARLEN_SDPA = "lathe_sdpa"  # model/patches/varlen_sdpa.py: separates the samples of a one-row batch
OWN_LOSSES = ("use_dft_loss", "use_asft_loss", "use_eaft_loss")


def sequence_parallel_size(cfg: "RunConfig") -> int:
    """The run's `sequence_parallel_size` (1: off)."""
    return cfg.run.sequence_parallel_size


def check_sequence_parallel(cfg: "RunConfig", world_size: int | None = None) -> None:
    """Refuse what cannot be exact under sequence parallelism, naming the key (no model or process needed).

    `world_size`: the number of training processes where it is known (a launched process), else unchecked.
    """
    n = sequence_parallel_size(cfg)
    if n == 1:
        return
    src, f = cfg.source, cfg.finetuning
    if n < 1:
        raise LatheError(f"{src}: `{KEY}` must be positive, got {n}.")
    if not cfg.training.deepspeed:
        raise LatheError(
            f"{src}: `{KEY}: {n}` runs through DeepSpeed's Ulysses attention, which accelerate wires only into a "
            f"DeepSpeed engine: add `deepspeed: examples/deepspeed/ds_z0_config.json` (plain data parallelism over "
            f"the other processes) or a ZeRO-2/3 config.")
    if not STAGE_REGISTRY[f.stage].model_loss:  # the Trainer's sequence-parallel loss is the model's own
        own = ", ".join(name for name in STAGE_REGISTRY.names() if STAGE_REGISTRY[name].model_loss)
        raise LatheError(f"{src}: `{KEY}` works for the stages whose loss is the model's own cross-entropy "
                         f"({own}); `stage: {f.stage}` computes its own. Remove `{KEY}`.")
    for flag in OWN_LOSSES:
        if getattr(f, flag, False):
            raise LatheError(f"{src}: `{flag}` computes its own token loss from the logits; under `{KEY}` the loss "
                             f"is the model's cross-entropy averaged over the sequence's shards. Remove one.")
    flattening = [key for key in ("padding_free", "neat_packing", "packing") if getattr(cfg.data, key, None)]
    if not flattening and cfg.data.packing is None and STAGE_REGISTRY[f.stage].packs_by_default:
        flattening = ["packing (the default of `stage: pt`)"]
    if flattening and cfg.training.per_device_train_batch_size > 1:
        raise LatheError(
            f"{src}: `{flattening[0]}` puts a batch's samples into one row, and under `{KEY}` DeepSpeed's attention "
            f"takes `per_device_train_batch_size` ({cfg.training.per_device_train_batch_size}) rows: set it to 1 "
            f"(more samples per step with `gradient_accumulation_steps`), or turn `{flattening[0].split()[0]}` off.")
    if cfg.training.label_smoothing_factor:
        raise LatheError(f"{src}: `label_smoothing_factor` cannot go with `{KEY}` (its loss is the model's own "
                         f"cross-entropy over the shards). Remove one.")
    if cfg.model.shift_attn:
        raise LatheError(f"{src}: `shift_attn` (LongLoRA's shifted sparse attention) shifts head groups along a "
                         f"sequence that `{KEY}` cuts over processes; use one of them.")
    attention = cfg.model.flash_attn
    if attention == "disabled":
        raise LatheError(f"{src}: `flash_attn: disabled` (eager attention) needs a full 4D mask, which `{KEY}` "
                         f"cannot shard; use `flash_attn: sdpa` (or fa2/fa3 on a GPU).")
    if world_size is not None and world_size % n:
        raise LatheError(f"{src}: `{KEY}: {n}` splits each sequence over {n} processes, but the run has {world_size}; "
                         f"start a multiple of {n} (NPROC_PER_NODE x NNODES).")


def launched_world_size() -> int | None:
    """The number of training processes, in a process a launcher started (WORLD_SIZE), else None."""
    value = os.environ.get("WORLD_SIZE")
    return int(value) if value else None


def check_model(cfg: "RunConfig", model) -> str:
    """The model's heads and attention against the group size; returns the attention implementation to shard."""
    n = sequence_parallel_size(cfg)
    config = getattr(model, "config", None)
    if config is None:
        raise LatheError(f"{cfg.source}: `{KEY}` needs a Hugging Face model with a config.")
    text = config.get_text_config()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    if heads % n:
        raise LatheError(f"{cfg.source}: `{KEY}: {n}` splits the attention heads over {n} processes, but the model has "
                         f"{heads}; use a divisor of {heads}.")
    if kv_heads % n and n % kv_heads:
        raise LatheError(f"{cfg.source}: `{KEY}: {n}`: the model's {kv_heads} key/value heads must divide by {n}, or "
                         f"{n} by them.")
    attention = getattr(config, "_attn_implementation", None) or "eager"
    if attention in ("eager", "paged|eager"):
        raise LatheError(f"{cfg.source}: the model runs eager attention, which `{KEY}` cannot shard (it needs a full "
                         f"4D mask); use `flash_attn: sdpa` (or fa2/fa3 on a GPU).")
    if flattened_rows_kept_apart(attention) == 0:
        for key in ("padding_free", "neat_packing"):
            if getattr(cfg.data, key, False):
                raise LatheError(
                    f"{cfg.source}: `{key}: true` flattens samples into one row kept apart by position ids; under "
                    f"`{KEY}` the model's `{attention}` attention sees no mask and would let them attend to each other "
                    f"(FlashAttention, or lathe's varlen sdpa for plain causal decoders, keeps them apart). Remove "
                    f"`{key}`.")
    return attention


def flattened_rows_kept_apart(attention: str) -> int | None:
    """In how many rows of a batch `attention` keeps flattened samples apart by position ids alone (no mask):
    any (None) for FlashAttention, one for lathe's varlen sdpa, none (0) for plain sdpa."""
    if "flash" in attention:
        return None
    return 1 if attention == VARLEN_SDPA else 0


def parallelism_config(cfg: "RunConfig", attention: str, world_size: int):
    """accelerate's `ParallelismConfig` for the run: N-way DeepSpeed sequence parallelism, data parallel over the rest.

    The sequence length may change from batch to batch; evaluation runs each sequence whole on
    one process (`sp_disable_in_eval`), as the eval loader is not cut along the sequence.
    """
    from accelerate import ParallelismConfig
    from accelerate.utils import DeepSpeedSequenceParallelConfig

    n = sequence_parallel_size(cfg)
    # accelerate checks the name against the attention functions it knows (flash, sdpa, hub kernels); lathe's
    # varlen sdpa is registered with transformers' AttentionInterface like them, and DeepSpeed wraps whatever is
    # registered under the model's name, so the handler is built with sdpa and then given the model's own.
    handler = DeepSpeedSequenceParallelConfig(sp_seq_length_is_variable=True, sp_attn_implementation="sdpa",
                                              sp_disable_in_eval=True)
    handler.sp_attn_implementation = attention
    return ParallelismConfig(sp_size=n, sp_backend="deepspeed", sp_handler=handler, dp_shard_size=world_size // n)


class SequenceParallelCollator:
    """Wraps a stage's collator for DeepSpeed's sequence cutting: each batch padded at its end to a multiple of
    N, with position ids, and refused where its rows are not one causal sequence each (see the module docstring).

    The padding is ignored by the loss (-100) and, coming after every real token, is never attended to
    by one under causal attention.
    """

    def __init__(self, collator: Callable, size: int, pad_id: int, kept_apart: int | None,
                 fixed_length: int | None = None):
        self.collator = collator
        self.size = size
        self.pad_id = pad_id
        self.kept_apart = kept_apart  # flattened_rows_kept_apart of the model's attention
        self.fixed_length = fixed_length  # over gloo: every batch padded to this length

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = dict(self.collator(features))
        ids = batch["input_ids"]
        rows, length = ids.shape
        mask = batch.get("attention_mask")
        if mask is not None and bool((mask[:, 1:] > mask[:, :-1]).any()):
            raise LatheError(f"`{KEY}`: a batch is padded on the left or has holes in its attention mask; under "
                             f"sequence parallelism the attention sees no mask, only positions. Pad on the right.")
        if "position_ids" not in batch:
            batch["position_ids"] = torch.arange(length, dtype=torch.long).expand(rows, length).clone()
        positions = batch["position_ids"]
        flattened = bool((positions[:, 1:] != positions[:, :-1] + 1).any())
        if flattened and self.kept_apart is not None and rows > self.kept_apart:
            raise LatheError(
                f"`{KEY}`: a batch holds several samples in one row (packing or padding-free batches), which this "
                f"attention would let attend to each other under sequence parallelism (it sees no mask). Use "
                f"`per_device_train_batch_size: 1` with packing, turn off `padding_free`/`neat_packing`, or use "
                f"FlashAttention (`flash_attn: fa2`).")
        target = length
        if self.fixed_length is not None:
            target = self.fixed_length
            if length > target:
                raise LatheError(f"`{KEY}`: a batch of {length} tokens is longer than `cutoff_len` allows ({target}); "
                                 f"over gloo every batch of the group is padded to that length.")
        extra = target - length + (-target % self.size)
        if extra:
            pad = {"input_ids": self.pad_id, "labels": -100, "attention_mask": 0}
            for key, value in list(batch.items()):
                if torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == length:
                    if key == "position_ids":
                        tail = value[:, -1:] + torch.arange(1, extra + 1, dtype=value.dtype)
                    else:
                        tail = torch.full((rows, extra), pad.get(key, 0), dtype=value.dtype)
                    batch[key] = torch.cat([value, tail], dim=1)
        return batch


def prepare(cfg: "RunConfig", model, args, collator: Callable, pad_id: int | None) -> Callable:
    """Set the run's Trainer arguments up for sequence parallelism; returns the collator to train with.

    Called with the model loaded and before the Trainer is built: accelerate registers the Ulysses
    attention for the model's own attention implementation when the Trainer prepares the engine.
    """
    world_size = launched_world_size() or 1
    check_sequence_parallel(cfg, world_size)
    attention = check_model(cfg, model)
    args.parallelism_config = parallelism_config(cfg, attention, world_size)
    n = sequence_parallel_size(cfg)
    logger.info("sequence parallel: each sequence over %d processes (DeepSpeed Ulysses, %s attention), data parallel "
                "over %d group(s)", n, attention, world_size // n)
    check_collator(cfg, collator, args.per_device_train_batch_size)
    kept_apart = flattened_rows_kept_apart(attention)
    fixed = cfg.data.cutoff_len if _backend() == "gloo" else None
    return SequenceParallelCollator(collator, n, pad_id or 0, kept_apart, fixed)


def check_collator(cfg: "RunConfig", collator: Callable, batch_size: int) -> None:
    """A collator that flattens a batch into one row needs batch size 1 (DeepSpeed's attention takes
    `per_device_train_batch_size` rows): sft's padding-free batches, on by default where the model keeps
    flattened samples apart, are refused here before training rather than by DeepSpeed's shape assertion."""
    from transformers import DataCollatorWithFlattening

    if isinstance(collator, DataCollatorWithFlattening) and batch_size > 1:
        raise LatheError(
            f"{cfg.source}: padding-free batches put a batch's samples into one row, and under `{KEY}` DeepSpeed's "
            f"attention takes `per_device_train_batch_size` ({batch_size}) rows: set it to 1 (more samples per step "
            f"with `gradient_accumulation_steps`), or `padding_free: false`.")


def _backend() -> str | None:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None
