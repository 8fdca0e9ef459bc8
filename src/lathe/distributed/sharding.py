"""Proof, at the start of training, of how the weights are actually held across processes.

accelerate quietly runs an FSDP config as DDP where it cannot shard (a CPU, for one), and a
ZeRO-3 config that partitions nothing would only show up as memory that never shrank. So
once the Trainer has wrapped the model, this callback looks at the parameters themselves
(DeepSpeed's `ds_numel`/`ds_tensor`, FSDP2's DTensors, FSDP1 wrappers), logs one line on the
main process, and stops the run when a sharding engine was asked for and nothing is sharded.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

import torch
from transformers import TrainerCallback

from ..errors import LatheError

logger = logging.getLogger(__name__)


def _zero3(param) -> tuple[int, int] | None:
    if hasattr(param, "ds_numel") and hasattr(param, "ds_tensor"):
        return int(param.ds_tensor.numel()), int(param.ds_numel)
    return None


def _dtensor(param) -> tuple[int, int] | None:
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        return int(param.to_local().numel()), int(param.numel())
    return None


# How a parameter may be split; the first that recognises it says how much this rank holds.
PARAM_KINDS: dict[str, Callable[[Any], tuple[int, int] | None]] = {"deepspeed-zero3": _zero3, "fsdp2": _dtensor}


def describe(model: torch.nn.Module) -> dict[str, Any]:
    """How `model`'s parameters are held by this process: which engine split them, and how much is local."""
    kinds: set[str] = set()
    local = total = 0
    for param in model.parameters():
        for kind, probe in PARAM_KINDS.items():
            held = probe(param)
            if held is not None:
                kinds.add(kind)
                break
        else:
            held = (param.numel(), param.numel())
        local += held[0]
        total += held[1]
    if not kinds and _has_fsdp1(model):
        kinds.add("fsdp1")  # flat parameters: the module shows only this rank's shard
    return {
        "params": "sharded" if kinds else "replicated",
        "by": sorted(kinds),
        "local_numel": local,
        "total_numel": total if "fsdp1" not in kinds else None,
    }


def _has_fsdp1(model: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - every torch lathe supports has it
        return False
    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class ShardingCallback(TrainerCallback):
    """Logs how the weights are held once training starts; fails if a sharding engine shards nothing."""

    def __init__(self, engine: str) -> None:
        self.engine = engine  # what the config asked for: ddp, fsdp, deepspeed-zero<N>
        self.report: dict[str, Any] | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        world = _world_size()
        self.report = {"engine": self.engine, "world_size": world, **describe(model)}
        if state.is_world_process_zero:
            logger.info("sharding: %s", json.dumps(self.report))
        wants_shards = self.engine == "fsdp" or self.engine == "deepspeed-zero3"
        if wants_shards and world > 1 and self.report["params"] == "replicated":
            raise LatheError(
                f"{self.engine} was asked for, but every process holds all {self.report['total_numel']:,} parameter "
                f"elements: the run fell back to plain data parallelism. Check the launcher config (an FSDP config "
                f"needs GPUs; on a CPU accelerate runs it as DDP)."
            )

    def on_train_end(self, args, state, control, **kwargs):
        """One line on the main process with every rank's peak GPU memory: what the engine actually saved."""
        import torch.distributed as dist

        if not torch.cuda.is_available():
            return
        peak = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        peaks = [peak]
        if dist.is_available() and dist.is_initialized():
            peaks = [None] * dist.get_world_size()
            dist.all_gather_object(peaks, peak)
        if state.is_world_process_zero:
            logger.info("peak GPU memory (GiB) per rank, %s: %s", self.engine, peaks)
