"""OFT's `module_dropout`: peft builds the dropout of each layer's rotation blocks but never applies it.

peft (0.21 to at least 0.22) makes `oft_dropout[adapter]`, a `MultiplicativeDropoutLayer`
that, while training, turns a random `module_dropout` share of a layer's rotation blocks into
the identity (Qiu et al. 2023), and its forward never calls it since OFT's rotation moved into
`OFTRotationModule`. The patch applies a rotation module's `module_dropout`, when it has one,
to the blocks its Cayley map returns; `link` gives each rotation module its layer's dropout.
Outside training (evaluation, merging) the dropout layer passes the blocks through.
"""

from __future__ import annotations

import torch


def install() -> bool:
    from peft.tuners.oft.layer import OFTRotationModule

    original = OFTRotationModule._cayley_batch

    def cayley_with_dropout(self, *args, **kwargs):
        blocks = original(self, *args, **kwargs)
        dropout = self._modules.get("module_dropout")
        return blocks if dropout is None else dropout(blocks)

    OFTRotationModule._cayley_batch = cayley_with_dropout
    return True


def link(model: torch.nn.Module) -> int:
    """Give each OFT rotation module the dropout peft built beside it; returns how many it linked."""
    linked = 0
    for module in model.modules():
        dropouts, rotations = getattr(module, "oft_dropout", None), getattr(module, "oft_R", None)
        if not isinstance(dropouts, torch.nn.ModuleDict) or not isinstance(rotations, torch.nn.ModuleDict):
            continue
        for adapter, dropout in dropouts.items():
            if adapter in rotations and not isinstance(dropout, torch.nn.Identity):
                rotations[adapter].module_dropout = dropout  # no parameters: the saved adapter is unchanged
                linked += 1
    return linked
