"""Tokenization for each kind of stage: canonical samples in, model inputs and labels out.

Each processor is a `datasets.map(batched=True)` function plus the keyword arguments it needs
from the run; its output always has `_truncated` and `_drop` (the reason a sample has nothing
to learn, or "") so the loader can count and report what it drops. A stage names its
processor in its descriptor (`lathe.train.stage.Stage.processor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .feedback import encode_feedback_batch
from .pairwise import encode_pairwise_batch
from .pretrain import encode_pretrain_batch
from .supervised import encode_supervised_batch

if TYPE_CHECKING:
    from ...config import RunConfig

# The columns of a canonical sample as the loader stores it (see lathe.data.sample).
SAMPLE_COLUMNS = ("messages", "system", "tools", "chosen", "rejected", "kto_tag", "reference", "images", "videos", "audios")


def sample_features():
    """Arrow types of a stored sample, fixed so that datasets of different formats concatenate."""
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    return Features({
        "messages": List(message),
        "system": Value("string"),
        "tools": Value("string"),
        "chosen": List(message),
        "rejected": List(message),
        "kto_tag": Value("bool"),
        "reference": Value("string"),
        "images": List(Value("string")),  # media paths (multimodal data), resolved against the media folder
        "videos": List(Value("string")),
        "audios": List(Value("string")),
    })


def sample_row(sample: dict[str, Any]) -> dict[str, Any]:
    """A canonical sample with every stored column present (empty when the format has none)."""
    return {
        "messages": sample.get("messages", []),
        "system": sample.get("system", ""),
        "tools": sample.get("tools", ""),
        "chosen": sample.get("chosen", []),
        "rejected": sample.get("rejected", []),
        "kto_tag": sample.get("kto_tag"),
        "reference": sample.get("reference", ""),
        "images": sample.get("images", []),
        "videos": sample.get("videos", []),
        "audios": sample.get("audios", []),
    }


def _template_kwargs(cfg: "RunConfig", tokenizer, template) -> dict[str, Any]:
    return {"template": template, "tokenizer": tokenizer, "data_args": cfg.data}


def _pretrain_kwargs(cfg: "RunConfig", tokenizer, template) -> dict[str, Any]:
    from ..packing import packing_enabled

    return {"tokenizer": tokenizer, "cutoff_len": cfg.data.cutoff_len, "packing": packing_enabled(cfg)}


@dataclass(frozen=True)
class Processor:
    encode: Callable[..., dict[str, list]]
    kwargs: Callable[["RunConfig", Any, Any], dict[str, Any]]
    parallel: bool = True  # False when rows depend on each other (packing across samples)
    packs: bool = False  # packs samples into blocks itself while tokenizing


PRETRAIN = Processor(encode_pretrain_batch, _pretrain_kwargs, parallel=False, packs=True)  # texts, packed into blocks
SUPERVISED = Processor(encode_supervised_batch, _template_kwargs)  # conversations, answers learned
PAIRWISE = Processor(encode_pairwise_batch, _template_kwargs)  # a prompt with a chosen and a rejected answer
FEEDBACK = Processor(encode_feedback_batch, _template_kwargs)  # one answer labelled desirable or not
