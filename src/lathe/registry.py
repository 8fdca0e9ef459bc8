"""The registries of lathe's choices: one per family, name -> descriptor.

A descriptor carries everything the rest of the code asks about one member (its options, its
checks, whether it needs a reference model, how it trains...), so no list elsewhere repeats a
stage, method or loss name. The member is declared once, beside the code that implements it
(`train/dpo.py` declares the `dpo` stage), and registers itself there.

The registries themselves are declared here, below every other layer: the config checks a
name and lists the choices of an option through them without importing the code above it.
Each registry knows the one module that registers its built-in members and imports it the
first time it is read; a plugin (or a test) adds a member with `register` at any time.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Generic, Iterator, Mapping, TypeVar

from .errors import lookup

if TYPE_CHECKING:
    from .config import RunConfig

T = TypeVar("T", bound="Choice")


@dataclass(frozen=True, kw_only=True)
class Choice:
    """What every registered member says about itself to the config.

    `options` are the config keys that belong to this member alone: the validator refuses them,
    set away from their default, when the run picked another member of the family
    (`config/validate.py`). `check` raises a LatheError for settings this member cannot run.
    """

    name: str
    help: str
    options: tuple[str, ...] = ()
    check: Callable[["RunConfig"], None] | None = field(default=None, compare=False)


class Registry(Mapping[str, T], Generic[T]):
    """Name -> descriptor; an unknown name fails with the close names and the registered ones."""

    def __init__(self, what: str, key: str, members: str, plural: str | None = None) -> None:
        self.what = what  # "stage"
        self.key = key  # the config option that picks a member: "stage"
        self.plural = plural or what + "s"
        self._members = members  # the module whose import registers the built-in members
        self._items: dict[str, T] = {}
        self._loaded = False
        self._importing = False
        self._lock = threading.RLock()  # other threads wait for the import; this one may re-enter it

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded or self._importing:  # done, or the members' own modules reading it mid-import
                return
            self._importing = True
            try:
                importlib.import_module(self._members)
            finally:
                self._importing = False
            self._loaded = True  # only now: a broken import fails again on the next read, never half a registry

    def register(self, item: T) -> T:
        """Add `item` under its name (returned, so a module can write `X = REGISTRY.register(Desc(...))`)."""
        if item.name in self._items and self._items[item.name] is not item:
            raise ValueError(f"{self.what} `{item.name}` is registered twice")
        self._items[item.name] = item
        return item

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def __getitem__(self, name: str) -> T:
        self._load()
        return lookup(self._items, name, self.what, self.plural, hint=f"(the choices of `{self.key}`)")

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._items))

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def names(self) -> tuple[str, ...]:
        return tuple(self)

    def describe(self) -> str:
        """`a (help), b (help)`: the choices as `--help` and the Board show them."""
        return ", ".join(f"{name} ({self[name].help})" for name in self)


# The families whose names the config checks. Each is filled by the module named last.
STAGES: Registry = Registry("stage", "stage", "lathe.train")
METHODS: Registry = Registry("finetuning method", "finetuning_type", "lathe.model.adapters")
PREFERENCE_LOSSES: Registry = Registry("preference loss", "pref_loss", "lathe.train.losses.preference",
                                       plural="preference losses")
OPTIMIZERS: Registry = Registry("optimizer", "use_<optimizer>", "lathe.train.optim")
REWARD_MODELS: Registry = Registry("reward model type", "reward_model_type", "lathe.train.rewards")
INFER_BACKENDS: Registry = Registry("inference backend", "infer_backend", "lathe.infer.engine")
