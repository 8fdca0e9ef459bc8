"""Batches with media: the stage's own collator for the tokens, the family's processor for the media.

The media tensors are made here, per batch, from the paths the tokenized samples keep (plugins.py says why they
are not cached). `rows` says which sample each row of the batch is: a preference batch is [chosen..., rejected...],
so each sample's media come twice, in that order, as the model meets their placeholders. The family's plugin makes
the tensors from the rows' items and the padded ids (`MediaPlugin.batch_inputs`): most families take one flat list
of the batch's items, mllama takes them per row with a per-token cross-attention mask. Each sample's media are
decoded once per batch (`MediaContext.load_row`), also when a preference batch meets them twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .encode import MediaContext
from .plugins import COLUMNS, KINDS


# Seconds per temporal patch of each video (Qwen2.5-VL, Qwen2.5-Omni): the model multiplies them into position ids
# and truncates, so they keep their float32 value (in bfloat16, 2/3 s would number some frames one position off).
TIMES = frozenset({"second_per_grid_ts", "video_second_per_grid"})


def same_rows(n: int) -> list[int]:
    return list(range(n))


def pair_rows(n: int) -> list[int]:
    """Preference batches: the chosen rows, then the rejected rows of the same samples."""
    return list(range(n)) * 2


@dataclass
class MediaCollator:
    inner: Callable[[list[dict[str, Any]]], dict[str, Any]]
    media: MediaContext
    rows: Callable[[int], list[int]] = same_rows
    dtype: Any = None  # the model's: floating media tensors are cast to it (Llama 4's processor gives bfloat16)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        paths = [{kind: list(f.get(COLUMNS[kind]) or []) for kind in KINDS} for f in features]
        batch = self.inner([{k: v for k, v in f.items() if k not in COLUMNS.values()} for f in features])
        loaded = [self.media.load_row(row) for row in paths]  # a preference batch meets each sample twice
        rows = [loaded[row] for row in self.rows(len(features))]
        media = self.media.plugin.batch_inputs(self.media.processor, rows, batch["input_ids"], self.media.kwargs,
                                               labels=batch.get("labels"))
        if "kl_input_ids" in batch:  # KTO: its KL rows pair each prompt (and its media) with another answer
            media.update(self.kl_inputs(rows, batch))
        if self.dtype is not None:
            media = {k: v.to(self.dtype) if torch.is_tensor(v) and v.is_floating_point() and k not in TIMES else v
                     for k, v in media.items()}
        batch.update(media)
        return batch

    def kl_inputs(self, rows: list[dict[str, list]], batch: dict[str, Any]) -> dict[str, Any]:
        """The per-token media inputs of KTO's KL rows (`kl_` + name), made from their own ids: a KL row's media
        are its prompt's, so the media tensors themselves are the batch's."""
        plugin, processor, ids = self.media.plugin, self.media.processor, batch["kl_input_ids"]
        if plugin.batch_features is None:
            types = plugin.token_type_ids(processor, ids.tolist(), batch.get("kl_labels"))
            return {} if types is None else {f"kl_{plugin.token_types}": torch.tensor(types, dtype=torch.long)}
        full = plugin.batch_inputs(processor, rows, ids, self.media.kwargs, labels=batch.get("kl_labels"))
        return {f"kl_{k}": v for k, v in full.items()
                if torch.is_tensor(v) and v.dim() >= 2 and tuple(v.shape[:2]) == tuple(ids.shape)}
