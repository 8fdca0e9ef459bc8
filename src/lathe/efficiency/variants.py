"""The ways to train that `lathe bench` runs side by side and `lathe plan` estimates, one table for both.

A variant is a finetuning method plus what sits around it (a quantized base, an optimizer),
named as `lathe bench --methods` takes it. Methods and optimizers are referred to through
their descriptors, so their names stay declared once, in their own modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import lookup
from ..model.adapters.freeze import FREEZE
from ..model.adapters.full import FULL
from ..model.adapters.lora import LORA
from ..registry import OPTIMIZERS
from ..train.optim import APOLLO, BADAM, GALORE


@dataclass(frozen=True)
class Variant:
    """A method (`finetuning_type`) with an optional quantized base and optimizer, as config overrides."""

    name: str
    help: str
    method: str
    quantization_bit: int | None = None
    optimizer: str | None = None  # a registered optimizer: its `use_` flag is set
    requires: tuple[str, ...] = field(default=())  # importable modules it needs
    default: bool = True  # in `lathe bench`'s default --methods

    @property
    def overrides(self) -> dict[str, object]:
        out: dict[str, object] = {"finetuning_type": self.method}
        if self.quantization_bit:
            out["quantization_bit"] = self.quantization_bit
        if self.optimizer:
            out[OPTIMIZERS[self.optimizer].flag] = True
        return out


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant(FULL.name, "all parameters, AdamW", FULL.name),
    Variant(FREEZE.name, "the last freeze_trainable_layers layers", FREEZE.name),
    Variant(GALORE.name, "full, GaLore-projected optimizer states", FULL.name, optimizer=GALORE.name,
            requires=("galore_torch",)),
    Variant(APOLLO.name, "full, APOLLO optimizer", FULL.name, optimizer=APOLLO.name, requires=("apollo_torch",),
            default=False),
    Variant(BADAM.name, "full, one block at a time (BAdam)", FULL.name, optimizer=BADAM.name, requires=("badam",),
            default=False),
    Variant(LORA.name, "LoRA adapters on a frozen base", LORA.name),
    Variant("qlora", "LoRA on a 4-bit base", LORA.name, quantization_bit=4, requires=("bitsandbytes",)),
    Variant("qlora8", "LoRA on an 8-bit base", LORA.name, quantization_bit=8, requires=("bitsandbytes",), default=False),
)}


def variant(name: str) -> Variant:
    return lookup(VARIANTS, name, "method", hint="Name them in --methods, separated by commas.")
