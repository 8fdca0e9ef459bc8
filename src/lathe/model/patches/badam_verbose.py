"""BAdam's `verbose`: its BlockOptimizer stores the level but switches blocks at its own default, 1.

`switch_trainable_params(verbose=1)` falls back to the stored level only when given None,
and BAdam 1.4 calls it with no argument, so every switch prints the block's prefix (level 1)
whatever was asked: 0 does not quiet it and 2 never lists the parameters. The patch makes no
argument mean the stored level.
"""

from __future__ import annotations


def install() -> bool:
    from badam import BlockOptimizer

    original = BlockOptimizer.switch_trainable_params

    def switch_trainable_params(self, verbose: int | None = None) -> None:
        return original(self, verbose)  # None: the optimizer's own `verbose`

    BlockOptimizer.switch_trainable_params = switch_trainable_params
    return True
