"""The MLP of each decoder layer computed over tiles of the sequence, each tile recomputed in the backward pass.

An MLP's inner activations are the largest a layer keeps: gate, up, their activation and
product, 4 x ffn values per token (a 7B model's ffn is 11,008 against a hidden size of
4,096). Tokens pass through an MLP independently, so cutting the sequence into tiles and
checkpointing each tile (ALST, Bekman et al. 2025) changes no value: the backward pass
recomputes one tile at a time and the layer keeps only the MLP's input. A tile holds at most
`TILE_BYTES` of inner activations, so memory no longer grows with the MLP's width times the
sequence; the price is the MLP's forward pass run twice (about a fifth of a step).

Written on `torch.utils.checkpoint` (non-reentrant, so it nests inside layer checkpointing and
leaves each parameter's gradient to one accumulation, as DDP and ZeRO expect) rather than
DeepSpeed's `TiledMLP`, which needs DeepSpeed installed and carries ZeRO-specific state.
Mixture-of-experts blocks are left whole: their routers return more than the hidden states
and record their logits for the auxiliary loss, which tiles would split.
"""

from __future__ import annotations

import logging
import types

import torch
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

TILE_BYTES = 128 * 1024**2  # inner activations of one tile (the chunked logits' budget too)
MIN_ROWS = 256  # a tile shorter than this costs more in kernel launches than it saves
MLP_NAMES = ("mlp", "feed_forward", "ffn")  # the MLP's attribute on a decoder layer, per family
ROUTED = ("expert", "router")  # names inside a mixture-of-experts block


def tile_rows(width: int, hidden_states: torch.Tensor) -> int:
    """Tokens per tile: as many as keep 4 x `width` inner values per token of every row within TILE_BYTES."""
    rows_of_batch = hidden_states[..., 0, 0].numel() if hidden_states.dim() > 2 else 1
    return max(MIN_ROWS, TILE_BYTES // (4 * width * hidden_states.element_size() * rows_of_batch))


def _tiled_forward(self: torch.nn.Module, hidden_states: torch.Tensor, *args, **kwargs):
    plain = type(self).forward
    if not self.training or hidden_states.dim() < 2:
        return plain(self, hidden_states, *args, **kwargs)
    rows = tile_rows(self.lathe_tile_width, hidden_states)
    if hidden_states.shape[-2] <= rows:
        return plain(self, hidden_states, *args, **kwargs)
    parts = hidden_states.split(rows, dim=-2)
    if not torch.is_grad_enabled():  # a checkpointed layer's first pass: tiles keep its transient peak small too
        return torch.cat([plain(self, part, *args, **kwargs) for part in parts], dim=-2)
    return torch.cat([checkpoint(plain, self, part, *args, use_reentrant=False, **kwargs) for part in parts], dim=-2)


def _mlp_of(layer: torch.nn.Module) -> torch.nn.Module | None:
    for name in MLP_NAMES:
        module = getattr(layer, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def _routed(mlp: torch.nn.Module) -> bool:
    return any(word in name.lower() for name, _ in mlp.named_modules() for word in ROUTED)


def tile_mlps(model: torch.nn.Module, asked: bool) -> int:
    """Make every dense decoder-layer MLP of `model` run in tiles while training; returns how many.

    Call before adapters are attached: the inner width is read from the MLP's plain linear layers.
    `asked`: the config set `tiled_mlp: true`, so a model with nothing to tile is an error, not a note."""
    from ..errors import LatheError
    from .adapters.common import decoder_layers

    _, layers = decoder_layers(model)
    tiled = 0
    for layer in layers:
        mlp = _mlp_of(layer)
        if mlp is None or _routed(mlp):
            continue
        widths = [m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
        if not widths:
            continue
        mlp.lathe_tile_width = max(widths)
        mlp.forward = types.MethodType(_tiled_forward, mlp)
        tiled += 1
    if not tiled:
        why = f"{type(model).__name__} has no dense MLP in its decoder layers (mixture-of-experts blocks are not tiled)"
        if asked:
            raise LatheError(f"`tiled_mlp: true`: {why}; remove the option.")
        logger.info("tiled MLP: %s; its MLPs run whole.", why)
    else:
        logger.info("tiled MLP: %d decoder-layer MLPs run over tiles of %d MiB of inner activations.", tiled, TILE_BYTES >> 20)
    return tiled
