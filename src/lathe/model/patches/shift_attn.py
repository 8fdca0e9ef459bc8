"""LongLoRA's shifted sparse attention (S2-Attn, Chen et al. 2023) as a transformers attention function.

While training, each sequence is cut into groups of `group_size` tokens and attention runs
inside each group only, so the score matrices shrink from L x L to L x G per head. Half of the
heads use groups shifted by half a group, so information still flows across group borders.
LongLoRA takes a group of a quarter of the training context; lathe uses cutoff_len // 4, fixed
for the run, so a sample's attention never depends on what else landed in its batch, and a
sequence no longer than one group gets exactly the normal attention.

Where LongLoRA rolls the shifted heads (wrapping the last tokens round to the front, where the
causal mask inside the group lets the first tokens see the last ones), the shifted groups here
are padded with masked positions instead: nothing attends to the future.

transformers 5 looks attention up by name (`AttentionInterface`), so this is registered under
a name of its own and the model's `attn_implementation` is set to it; no library method is
replaced. In eval mode (and at inference) it is plain sdpa.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from ...errors import LatheError

logger = logging.getLogger(__name__)

# Decoders whose attention takes (query, key, value) as [batch, heads, seq, dim] with a causal
# mask and nothing else (no sliding window, sinks or soft-capping): the layout S2-Attn regroups.
SUPPORTED = {
    "llama": "LLaMA",
    "mistral": "Mistral without a sliding window",
    "qwen2": "Qwen2 without a sliding window",
    "qwen3": "Qwen3 without a sliding window",
}


def group_size(cutoff_len: int) -> int:
    return max(2, cutoff_len // 4)


def _grouped(x: torch.Tensor, front: int, size: int) -> tuple[torch.Tensor, int]:
    """[b, h, L, d] -> [b * groups, h, size, d], after `front` masked positions before the sequence."""
    b, h, length, d = x.shape
    total = math.ceil((length + front) / size) * size
    x = F.pad(x, (0, 0, front, total - length - front))
    n = total // size
    return x.view(b, h, n, size, d).transpose(1, 2).reshape(b * n, h, size, d), n


def _ungrouped(x: torch.Tensor, b: int, n: int, front: int, length: int) -> torch.Tensor:
    _, h, size, d = x.shape
    return x.view(b, n, h, size, d).transpose(1, 2).reshape(b, h, n * size, d)[:, :, front:front + length]


def _group_masks(mask: torch.Tensor | None, b: int, length: int, front: int, size: int, device) -> torch.Tensor:
    """The diagonal blocks of the run's [b, 1, L, L] mask (None = causal), pads masked, each row seeing itself."""
    total = math.ceil((length + front) / size) * size
    n = total // size
    if mask is None:
        real = torch.zeros(total, dtype=torch.bool, device=device)
        real[front:front + length] = True
        causal = torch.ones(size, size, dtype=torch.bool, device=device).tril()
        blocks = causal & real.view(n, 1, size)  # [n, size(q), size(k)]: keys must be real tokens
        blocks = blocks.unsqueeze(0).expand(b, n, size, size).reshape(b * n, 1, size, size)
    else:
        if mask.dtype != torch.bool:  # an additive float mask: 0 where attention is allowed
            mask = mask == 0
        mask = mask[:, :1, :length, :length]
        padded = F.pad(mask, (front, total - length - front, front, total - length - front), value=False)
        blocks = padded.view(b, 1, n, size, n, size).diagonal(dim1=2, dim2=4)  # [b, 1, size, size, n]
        blocks = blocks.permute(0, 4, 1, 2, 3).reshape(b * n, 1, size, size)
    # A padded row that sees nothing would give NaN; letting it see itself changes no real token.
    return blocks | torch.eye(size, dtype=torch.bool, device=device)


def s2_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, *,
                 size: int, **kwargs):
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    length = query.shape[2]
    if not module.training or length <= size or key.shape[2] != length:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, rep), repeat_kv(value, rep)
    b, heads = query.shape[:2]
    half = heads // 2
    outputs = []
    for sl, front in ((slice(0, half), 0), (slice(half, heads), size // 2)):
        q, n = _grouped(query[:, sl], front, size)
        k, _ = _grouped(key[:, sl], front, size)
        v, _ = _grouped(value[:, sl], front, size)
        masks = _group_masks(attention_mask, b, length, front, size, query.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=masks, dropout_p=dropout, scale=scaling)
        outputs.append(_ungrouped(out, b, n, front, length))
    return torch.cat(outputs, dim=1).transpose(1, 2).contiguous(), None


def check_model(config) -> None:
    """Refuse models whose attention S2-Attn does not fit, naming why."""
    kind = getattr(config, "model_type", "?")
    if kind not in SUPPORTED:
        raise LatheError(
            f"`shift_attn` (LongLoRA S2-Attn) works on llama-family decoders ({', '.join(SUPPORTED)}); "
            f"this model is `{kind}`, whose attention layout it has not been checked against. Remove `shift_attn`."
        )
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        raise LatheError(
            f"`shift_attn` cannot go with this {kind} model's sliding-window attention "
            f"(sliding_window={config.sliding_window}); it already limits the attention span."
        )


def register(cutoff_len: int) -> str:
    """Register S2-Attn for this run's group size; returns the attn_implementation name to load with."""
    from functools import partial

    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    size = group_size(cutoff_len)
    name = f"lathe_s2_{size}"
    AttentionInterface.register(name, partial(s2_attention, size=size))
    AttentionMaskInterface.register(name, sdpa_mask)
    logger.info("shift_attn: S2-Attn while training, groups of %d tokens (cutoff_len / 4), half the heads shifted", size)
    return name
