"""What a finetuning method (`finetuning_type`) is: one descriptor, declared in the method's own module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ...registry import Choice

if TYPE_CHECKING:
    from ...config import RunConfig


@dataclass(frozen=True, kw_only=True)
class Method(Choice):
    """A finetuning method: `apply(model, cfg, new_token_rows) -> model` decides which parameters train.

    `new_token_rows` says the tokenizer grew, so the embedding and output rows must train too.
    The flags answer what the rest of lathe asks about a method:

    - `adapter`: it trains a peft adapter beside the frozen model: the adapter alone is saved,
      `adapter_name_or_path` continues it, and the model with the adapter switched off serves as
      the reference of the preference stages (no second copy);
    - `quantized_base`: the frozen base may be loaded quantized (QLoRA);
    - `unsloth`: unsloth can build it (`use_unsloth`);
    - `trainer_defaults`: Trainer arguments it needs unless the config sets them;
    - `after_save(model, cfg)`: a step of the final save beyond `save_pretrained` (PiSSA's conversion);
    - `planned_trainable(shape, finetuning)`: the parameters it trains, from the model's shape alone
      (`lathe plan`; None: not estimated);
    - `planned_backward_layers(shape, finetuning)`: the decoder layers whose activations the backward
      pass needs (autograd keeps none below the first layer that trains); None: all of them.
    """

    apply: Callable[..., Any] = field(compare=False)
    adapter: bool = False
    quantized_base: bool = False
    unsloth: bool = False
    trainer_defaults: Mapping[str, Any] = field(default_factory=dict)
    after_save: Callable[[Any, "RunConfig"], None] | None = field(default=None, compare=False)
    planned_trainable: Callable[..., int] | None = field(default=None, compare=False)
    planned_backward_layers: Callable[..., int] | None = field(default=None, compare=False)
