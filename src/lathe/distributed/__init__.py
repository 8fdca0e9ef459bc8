"""Scaling one run out over several processes: DDP, DeepSpeed ZeRO and FSDP.

The Hugging Face Trainer and accelerate do the distributing; lathe owns the glue around
them: finding the DeepSpeed config a YAML names (`engines.resolve_deepspeed`), refusing
combinations that would fail late or silently do something else (`engines.check`), and
proving at the start of training which engine actually holds the weights
(`sharding.ShardingCallback`), so asking for FSDP can never quietly run plain DDP.
"""

from .engines import check, check_launch, deepspeed_stage, fsdp_requested, requested_engine, resolve_deepspeed
from .sharding import ShardingCallback, describe

__all__ = [
    "ShardingCallback",
    "check",
    "check_launch",
    "deepspeed_stage",
    "describe",
    "fsdp_requested",
    "requested_engine",
    "resolve_deepspeed",
]
