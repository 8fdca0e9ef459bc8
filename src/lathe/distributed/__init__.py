"""Scaling one run out over several processes: DDP, DeepSpeed ZeRO and FSDP.

The Hugging Face Trainer and accelerate do the distributing; lathe owns the glue around
them: the config resolves and checks what a run asks for (`lathe.config.engines`), `launch`
starts torchrun with LLaMA-Factory's environment variables, `start` prepares the training
process for its engine, and `sharding.ShardingCallback` proves at the start of training which
engine actually holds the weights, so asking for FSDP can never quietly run plain DDP.
"""

from .sharding import ShardingCallback, describe
from .start import check_launch, start_engine

__all__ = ["ShardingCallback", "check_launch", "describe", "start_engine"]
