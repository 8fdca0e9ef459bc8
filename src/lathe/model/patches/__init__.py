"""Fixes to third-party code, in one place: each keyed by library and version range, applied at one logged point.

A patch is needed only where a library we rely on fails on a setup it could serve (CPU
machines) or drops a setting it accepts (OFT's module_dropout, BAdam's verbose). Each entry
names the library, the versions known to need it and why; `apply(name)` installs it once and
logs that it did, and does nothing (logging why) outside those versions, so an upgrade that
fixes the library retires the patch instead of silently fighting it.

Registrations through a library's own extension points (shift_attn's attention function) are
not patches and live beside them as plain modules.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from typing import Callable

from packaging.specifiers import SpecifierSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Patch:
    library: str
    versions: str  # a PEP 440 specifier of the versions that need it
    why: str
    install: Callable[[], bool]  # returns False when this machine does not need it


def _loftq_cpu() -> bool:
    from .loftq_cpu import install

    return install()


PATCHES: dict[str, Patch] = {
    "loftq_cpu": Patch(
        "peft", ">=0.12,<0.22",
        "LoftQ computes its SVD on a hard-coded 'cuda' (or 'xpu') device, so it fails on CPU-only machines",
        _loftq_cpu,
    ),
}
PATCHES["sparse_grad_norm"] = Patch(
    "transformers", ">=5.0,<5.99",
    "the Trainer takes the norm of every step's gradients for its log; torch cannot take it of sparse ones",
    lambda: __import__(f"{__name__}.sparse_grad_norm", fromlist=["install"]).install(),
)
PATCHES["oft_module_dropout"] = Patch(
    "peft", ">=0.21,<0.23",
    "OFT builds each layer's `module_dropout` layer but its forward never applies it",
    lambda: __import__(f"{__name__}.oft_module_dropout", fromlist=["install"]).install(),
)
PATCHES["badam_verbose"] = Patch(
    "badam", ">=1.4,<1.5",
    "BAdam's BlockOptimizer switches blocks at verbosity 1 whatever `verbose` it was given",
    lambda: __import__(f"{__name__}.badam_verbose", fromlist=["install"]).install(),
)
_applied: set[str] = set()


def apply(name: str) -> bool:
    """Install the named patch if this library version needs it; True when it is in place."""
    patch = PATCHES[name]
    if name in _applied:
        return True
    version = importlib.metadata.version(patch.library)
    if version not in SpecifierSet(patch.versions):
        logger.info("patch %s not applied: %s %s is outside %s", name, patch.library, version, patch.versions)
        return False
    if not patch.install():
        logger.info("patch %s not needed on this machine", name)
        return False
    _applied.add(name)
    logger.info("patch %s applied to %s %s: %s", name, patch.library, version, patch.why)
    return True
