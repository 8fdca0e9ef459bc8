"""Tokens the config adds, and where their embedding rows start (`init_special_tokens`).

A new token's rows in the input embedding and the output head have never been trained.
LLaMA-Factory's three starts, kept here:
- noise_init: the mean of the existing rows plus Gaussian noise of std 1/sqrt(hidden size),
  so the new tokens are near "an average token" yet distinguishable from each other;
- desc_init: the mean of the rows of the tokens of the token's description, read from
  `new_special_tokens_config` (a YAML file `token: description`), so `<|START_OF_SVG|>` starts
  near "Marks the beginning of an SVG document";
- desc_init_w_noise: that, plus the same noise.
Each matrix starts from its own rows: the output head's new row is the mean of the head's
rows of the description tokens, so a tied model and an untied one get the same start.
"""

from __future__ import annotations

import contextlib

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import LatheError
from ..process import is_main_process

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..config.options import ModelArguments

logger = logging.getLogger(__name__)

DESCRIPTION_INITS = ("desc_init", "desc_init_w_noise")


def _split(value: str | None) -> list[str]:
    return [t.strip() for t in (value or "").split(",") if t.strip()]


def token_descriptions(m: "ModelArguments") -> dict[str, str] | None:
    """The `new_special_tokens_config` file as {token: description}, checked; None when not set."""
    if m.new_special_tokens_config is None:
        return None
    import yaml

    path = Path(m.new_special_tokens_config).expanduser()
    if not path.is_file():
        raise LatheError(f"`new_special_tokens_config`: {path} is not a file (expected YAML `token: description`).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LatheError(f"`new_special_tokens_config`: {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or not data:
        raise LatheError(f"`new_special_tokens_config`: {path} must map each new token to its description, "
                         f"e.g. `\"<|START_OF_SVG|>\": \"Marks the beginning of an SVG document\"`.")
    bad = [k for k, v in data.items() if not isinstance(k, str) or not k.strip() or not isinstance(v, str)]
    if bad:
        raise LatheError(f"`new_special_tokens_config`: {path}: every key must be a token and every value its "
                         f"description text; not so for {bad[:5]}.")
    return {k.strip(): v for k, v in data.items()}


def special_tokens(m: "ModelArguments") -> list[str]:
    """The special tokens the config adds: the YAML file's keys, else `add_special_tokens`."""
    descriptions = token_descriptions(m)
    return list(descriptions) if descriptions is not None else _split(m.add_special_tokens)


def config_tokens(m: "ModelArguments") -> list[str]:
    """Every token the config adds (plain, then special)."""
    return _split(m.add_tokens) + special_tokens(m)


def new_token_ids(tokenizer: "PreTrainedTokenizerBase", m: "ModelArguments") -> list[int]:
    """Ids of the config's tokens that the model's own tokenizer lacks (their rows are untrained).

    Asked of a fresh copy of the model's tokenizer rather than read from the embedding size,
    because a model may have spare rows (Qwen2.5: 151665 tokens, 151936 rows) that new tokens
    land in without a resize; and a listed token the tokenizer already had keeps its trained row.
    """
    tokens = config_tokens(m)
    if not tokens:
        return []
    from .load import load_tokenizer

    known = load_tokenizer(m).get_vocab()
    return sorted({tokenizer.convert_tokens_to_ids(t) for t in tokens if t not in known})


def initialize_rows(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", m: "ModelArguments",
                    ids: list[int]) -> None:
    """Set the input (and untied output) embedding rows of the new tokens `ids` by `init_special_tokens`."""
    if not ids:
        return
    descriptions = token_descriptions(m) if m.init_special_tokens in DESCRIPTION_INITS else None
    matrices = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not matrices[0]:
        matrices.append(head.weight)
    with _whole(matrices), torch.no_grad():
        if not _partitioned(matrices) or is_main_process():  # ZeRO-3: rank 0 writes, the others receive its rows
            for weight in matrices:
                _initialize(weight, ids, tokenizer, descriptions, noise=m.init_special_tokens != "desc_init")
    logger.info("init_special_tokens %s: %d new token rows set", m.init_special_tokens, len(ids))


def _partitioned(matrices: list[torch.Tensor]) -> bool:
    return any(hasattr(w, "ds_tensor") for w in matrices)


def _whole(matrices: list[torch.Tensor]):
    """ZeRO-3 holds each rank's slice only: gather the tables whole for the writes, and share rank 0's."""
    if not _partitioned(matrices):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([w for w in matrices if hasattr(w, "ds_tensor")], modifier_rank=0)


def _initialize(weight: torch.Tensor, ids: list[int], tokenizer, descriptions: dict[str, str] | None,
                noise: bool) -> None:
    new = set(ids)
    keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    keep[ids] = False
    mean = weight[keep].float().mean(dim=0)
    starts = {i: mean for i in ids}
    for token, text in (descriptions or {}).items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id not in new:
            continue
        rows = [t for t in tokenizer(text, add_special_tokens=False)["input_ids"] if t not in new]
        if rows:
            starts[token_id] = weight[rows].float().mean(dim=0)
        else:
            logger.warning("desc_init: the description of %s has no known token; it starts at the mean row.", token)
    std = 1.0 / math.sqrt(weight.shape[1])
    for token_id, start in starts.items():
        row = start + torch.randn_like(start) * std if noise else start
        weight[token_id] = row.to(weight.dtype)
