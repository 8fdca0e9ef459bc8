"""lathe's own RL loops (grpo, rloo) over several processes: torchrun starts them, DDP joins their gradients.

Each process samples its own share of a step's prompts and generates their completions, so generation
is split between the processes, never repeated. A prompt's group of completions stays in one process.
The policy's log-probs run as the forward of one module wrapped in torch's DistributedDataParallel
(`PolicyLogps`), so the backward pass averages the processes' gradients the way the Trainer's stages
do. lathe writes no all-reduce of its own. Only small numbers cross between processes besides that:
the rewards (for the advantages and the log), token counts, and one flag per sampling round. They go
through `all_gather_object`, which works on every backend.

One process (no launcher) takes the same code path with a world of 1. There, every collective returns
at once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (rank 0 of 1 without a launcher)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> "Ranks":
        """Read from the process group that the run's TrainingArguments set up (torchrun: gloo on CPUs, nccl on GPUs)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order (small, picklable values only)."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def total(self, value: float) -> float:
        return float(sum(self.gather(float(value))))

    def every(self, flag: bool) -> bool:
        """True when `flag` holds in every process: a decision all processes then take together."""
        return all(self.gather(bool(flag)))

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


class PolicyLogps(torch.nn.Module):
    """The policy's completion log-probs as one module's forward.

    DDP prepares its gradient hooks in its own forward. The loss reaches the output layer through
    `completion_logps`, which may run that layer chunk by chunk outside the model's forward. Wrapping
    the whole computation keeps it inside DDP's forward.
    """

    def __init__(self, policy: torch.nn.Module, temperature: float) -> None:
        super().__init__()
        self.policy = policy
        self.temperature = temperature

    def forward(self, ids: torch.Tensor, attn: torch.Tensor, prompt_len: int, with_entropy: bool = False):
        from .grpo_rollout import completion_logps

        return completion_logps(self.policy, ids, attn, prompt_len, self.temperature, with_entropy=with_entropy)


def policy_logps(policy: torch.nn.Module, temperature: float, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """`PolicyLogps`, wrapped in DistributedDataParallel when several processes train.

    DDP copies rank 0's weights to the other ranks once, when it is built. After that, every rank
    applies the same averaged gradients, so the weights stay equal.
    """
    scorer = PolicyLogps(policy, temperature)
    if ranks.world == 1:
        return scorer
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(scorer, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def accumulating(scorer: torch.nn.Module, last: bool):
    """The context of one micro-batch's forward and backward. The processes average their gradients once
    per optimiser step, in the last micro-batch's backward."""
    no_sync = getattr(scorer, "no_sync", None)
    return contextlib.nullcontext() if last or no_sync is None else no_sync()


def shuffled(rows: int, full: int, generator: torch.Generator) -> torch.Tensor:
    """A random order of `rows` rows, drawn as a permutation of the step's `full` rows.

    The draw takes the same numbers from `generator` in every process, even where dynamic sampling
    kept fewer rows in one of them. The generator also picks the prompts, so the processes keep
    drawing distinct prompts in step.
    """
    order = torch.randperm(max(rows, full), generator=generator)
    return order[order < rows]
