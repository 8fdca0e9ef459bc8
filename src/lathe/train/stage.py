"""What a training stage (`stage`) is: one descriptor, declared in the stage's own module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..registry import Choice

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..data.processors import Processor


@dataclass
class StageResult:
    """What a stage leaves behind in memory: its metrics and the trained model."""

    metrics: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    tokenizer: Any = None
    extras: dict[str, Any] = field(default_factory=dict)  # stage-specific objects (e.g. the reference model)


@dataclass(frozen=True, kw_only=True)
class Stage(Choice):
    """A training stage: `run(cfg) -> StageResult` trains, the rest says what the others need to know.

    - `processor`: how the data's canonical samples become this stage's model inputs;
    - `packs_by_default`: `packing` unset means on (pre-training, where samples seeing each
      other is harmless);
    - `trainer`: it runs on the Hugging Face Trainer, so DeepSpeed and FSDP can shard it;
    - `perplexity`: its samples are texts with learned tokens, which `lathe eval --ppl` scores;
    - `model_loss`: it trains on the loss the model returns, so what the model adds to it (an
      MoE router's load-balancing loss) is trained too.

    `options` are the keys that apply to this stage alone and make no sense elsewhere: refused under
    another stage when set away from their default, as LLaMA Board writes every key at its default.
    """

    run: Callable[["RunConfig"], StageResult] = field(compare=False)
    processor: "Processor" = field(compare=False)
    packs_by_default: bool = False
    trainer: bool = True
    perplexity: bool = False
    model_loss: bool = False
    media: bool = False  # its batches carry a multimodal model's images, video or audio (data/media)
