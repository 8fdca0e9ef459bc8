"""sdpa that attends inside each sample of a flattened row, instead of over the whole row.

Padding-free and packed batches put several samples in one row, with position ids that
restart at every sample. transformers turns that into a block-diagonal mask for sdpa, and
sdpa then computes the scores of the whole row against itself (the row length squared) and
throws the off-diagonal blocks away: for four samples, three quarters of the attention work.
flash-attention's variable-length kernel avoids that on GPUs; on a CPU (and wherever
flash-attn is absent) this function does the same by running causal sdpa on each sample's
span. It is exact (the same softmax over the same keys) and falls back to plain sdpa, with
the mask transformers built, for anything else: padded batches, several rows, generation
with a cache, and models whose attention is more than causal (sliding windows, soft-capping),
which are not registered for it at all.

Its mask function (`varlen_mask`) builds no length-squared mask where this attention needs
none: for one unpadded row without a cache (transformers would otherwise materialise the
row's block-diagonal mask, 4 GiB of booleans at 64k tokens, that this attention never reads),
and for right-padded rows without a cache (the preference stages' chosen and rejected rows):
those get the 2D padding mask, and each row runs causal sdpa over its own tokens. Everything
else (left padding, generation with a cache) gets exactly sdpa's mask.

Registered under its own name through transformers' `AttentionInterface` and
`AttentionMaskInterface`; no library function is replaced.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

NAME = "lathe_sdpa"
# Decoders whose attention is plain causal softmax attention over [batch, heads, seq, dim].
PLAIN_CAUSAL = ("llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "granite", "internlm2")


def segments(position_ids: torch.Tensor) -> list[int] | None:
    """Start offsets of the samples in one flattened row (position ids restart at 0), plus its end."""
    row = position_ids[0]
    starts = (row == 0).nonzero().flatten()
    if starts.numel() < 2 or starts[0] != 0:
        return None
    bounds = starts.tolist() + [row.numel()]
    return bounds


def varlen_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    length = query.shape[2]
    bounds = None
    if (position_ids is not None and query.shape[0] == 1 and key.shape[2] == length
            and position_ids.shape[-1] == length and kwargs.get("sliding_window") is None):
        bounds = segments(position_ids)
    if bounds is None and attention_mask is None and _packed(position_ids, query):
        from ...errors import LatheError

        raise LatheError("lathe_sdpa: a packed row whose position ids do not restart at 0 for each sample; its samples "
                         "cannot be kept apart. Pack with lathe's data pipeline, or set `flash_attn: sdpa`.")
    if bounds is None and attention_mask is not None and attention_mask.dim() == 2:  # right-padded rows
        return _per_row(module, query, key, value, attention_mask, dropout, scaling)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, rep), repeat_kv(value, rep)
    parts = [
        F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                       dropout_p=dropout if module.training else 0.0, scale=scaling)
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def _per_row(module, query, key, value, lengths_mask, dropout: float, scaling):
    """Causal sdpa over each row's own tokens (a right-padded batch); padded positions' outputs are zero."""
    from transformers.integrations.sdpa_attention import repeat_kv

    rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, rep), repeat_kv(value, rep)
    out = query.new_zeros(query.shape)
    for row, n in enumerate(lengths_mask.sum(-1).tolist()):
        if n:
            out[row:row + 1, :, :n] = F.scaled_dot_product_attention(
                query[row:row + 1, :, :n], key[row:row + 1, :, :n], value[row:row + 1, :, :n], is_causal=True,
                dropout_p=dropout if module.training else 0.0, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _right_padded(mask) -> bool:
    """A 2D padding mask whose rows are all tokens first, then all padding."""
    mask = mask.bool()
    return mask.dim() == 2 and bool((mask[:, 1:] <= mask[:, :-1]).all())


def _packed(position_ids, query) -> bool:
    """Whether a one-row batch holds several samples by its position ids (any step other than +1)."""
    if position_ids is None or query.shape[0] != 1 or position_ids.shape[-1] != query.shape[2]:
        return False
    return bool((position_ids[0].diff() != 1).any())


def varlen_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                attention_mask=None, **kwargs):
    """No mask for one unpadded row without a cache (varlen_sdpa separates its samples by position ids), the 2D
    padding mask for right-padded rows without a cache (varlen_sdpa runs each row alone); sdpa's own mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    whole = q_length == kv_length and not q_offset and not kv_offset  # no cache: the rows are whole
    if whole and batch_size == 1 and (attention_mask is None or bool(attention_mask.all())):
        return None
    if whole and attention_mask is not None and attention_mask.shape[-1] == kv_length and _right_padded(attention_mask):
        return attention_mask.bool()  # varlen_sdpa runs each row over its own tokens
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, **kwargs)


def usable(config) -> bool:
    """Only decoders whose attention is causal softmax and nothing more (see the module docstring)."""
    if getattr(config, "model_type", None) not in PLAIN_CAUSAL:
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    return not getattr(config, "attn_logit_softcapping", None)


def register() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_sdpa)
    AttentionMaskInterface.register(NAME, varlen_mask)
    return NAME
