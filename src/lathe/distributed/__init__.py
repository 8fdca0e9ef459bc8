"""Scaling one run out over several processes: DDP, DeepSpeed ZeRO, FSDP, and Ray as the launcher.

The Hugging Face Trainer and accelerate do the distributing; lathe owns the glue around
them: the config resolves and checks what a run asks for (`lathe.config.engines`), `launch`
starts torchrun with LLaMA-Factory's environment variables, `ray` runs the same training
function in Ray Train's workers (USE_RAY=1), `start` prepares the training process for its
engine, and `sharding.ShardingCallback` proves at the start of training which engine actually
holds the weights, so asking for FSDP can never quietly run plain DDP.

The names below load on first use: a Ray controller or a launcher that imports only
`lathe.distributed.ray` or `.launch` does not pay for transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {"ShardingCallback": ".sharding", "describe": ".sharding", "check_launch": ".start", "start_engine": ".start"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
