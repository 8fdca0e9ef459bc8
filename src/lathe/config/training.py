"""The training options: Hugging Face's `Seq2SeqTrainingArguments`, taken by their own names.

Two things here keep loading a config free of side effects:

- Building the arguments object runs transformers' `__post_init__`, which may write
  environment variables (FSDP's, torch.compile's) and, with a DeepSpeed config, points a
  process-wide switch in transformers at it (ZeRO-3 then partitions every later
  `from_pretrained`). `build_training_arguments` builds it with both put back afterwards;
  a run that trains makes its own copy at its start (`editable_copy`), where they belong.
- Building it also sets up devices (accelerate's process-wide state; under a launcher the
  torch.distributed process group). The config's copy skips that, and is frozen: assigning
  one of its fields raises, so `lathe_config.yaml` is what ran. The run's copy, the one the
  Trainer holds and may adjust, is a plain one and sets up its devices.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

from ..errors import LatheError

# The Trainer pickles its arguments into every checkpoint (training_args.bin): a hub token
# must not ride along, so it is kept out of them (RunConfig.hub_token).
TOKEN_KEY = "hub_token"


def training_class():
    from transformers import Seq2SeqTrainingArguments

    return Seq2SeqTrainingArguments


@functools.cache
def training_fields() -> dict[str, dataclasses.Field]:
    """The Trainer's options by name (the fields its constructor takes)."""
    return {f.name: f for f in dataclasses.fields(training_class()) if f.init}


@functools.cache
def _frozen_class() -> type:
    base = training_class()

    class FrozenTrainingArguments(base):
        """The Trainer's arguments of a loaded config: its fields cannot be assigned once built, and it
        never sets up devices (transformers' would start accelerate's state, and under a launcher the
        process group): the run's own copy does that, when the run starts."""

        def __post_init__(self):
            super().__post_init__()
            object.__setattr__(self, "_lathe_frozen", True)

        @property
        def _setup_devices(self):
            if self.__dict__.get("_lathe_frozen"):
                raise AttributeError("a loaded config's training arguments have no devices; the run's copy "
                                     "(lathe.config.training.editable_copy) sets them up")
            return None  # __post_init__ touches `device` only to set devices up early

        def __reduce__(self):
            """Pickled as its fields and rebuilt the same way (a worker process gets the same frozen copy)."""
            return _rebuild, (field_values(self),)

        @property
        def world_size(self) -> int:
            """The launcher's process count (DeepSpeed's config reads it to fill its "auto" batch sizes)."""
            return int(os.environ.get("WORLD_SIZE", "1"))

        def __setattr__(self, name: str, value: Any) -> None:
            if name in training_fields() and self.__dict__.get("_lathe_frozen"):
                raise dataclasses.FrozenInstanceError(
                    f"cannot assign to field {name!r}: a loaded config is read-only (a run takes its own copy)"
                )
            super().__setattr__(name, value)

    return FrozenTrainingArguments


def _rebuild(values: dict[str, Any]):
    return build_training_arguments(values, "<pickled config>")


def build_training_arguments(values: dict[str, Any], source: str, given: set[str] | None = None):
    """The frozen training arguments of `values` (already coerced), leaving the process as it was."""
    from transformers.integrations import deepspeed as hf_deepspeed

    environ = dict(os.environ)
    switch = hf_deepspeed._hf_deepspeed_config_weak_ref
    try:
        return _frozen_class()(**values)
    except Exception as e:  # ValueError, TypeError, OSError (a path that isn't one)...: all the user's to fix
        culprit = _culprit(values, given if given is not None else set(values))
        named = f"`{culprit}: {values[culprit]!r}`" if culprit else "training options"
        raise LatheError(f"{source}: {named} rejected by transformers: {e}") from None
    finally:
        _restore(environ)
        hf_deepspeed._hf_deepspeed_config_weak_ref = switch


def _restore(environ: dict[str, str]) -> None:
    """Undo what was set or removed in os.environ since `environ` was taken, and only that."""
    for name in set(os.environ) - set(environ):
        del os.environ[name]
    for name, value in environ.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _culprit(values: dict[str, Any], given: set[str]) -> str | None:
    """The user's option (one of `given`) that transformers refuses, found by trying each alone (only on the error path)."""
    cls = _frozen_class()  # it sets up no devices, so trying values cannot start a process group
    base = {k: values[k] for k in ("output_dir", "use_cpu", "remove_unused_columns", "report_to") if k in values}
    for key in (k for k in values if k in given):
        try:
            cls(**{**base, key: values[key]})
        except Exception:
            return key
    return None


def field_values(training) -> dict[str, Any]:
    """The options of a training-arguments object, as its constructor takes them."""
    return {name: getattr(training, name) for name in training_fields()}


def editable_copy(training, **changes: Any):
    """A plain (editable) copy of training arguments for one run, with `changes`.

    Built at the start of the run, so transformers' process-wide DeepSpeed switch points at
    this copy while the model loads and trains; the Trainer takes it and may adjust it.
    """
    return training_class()(**{**field_values(training), **changes})


def on_cpu_only() -> bool:
    """No GPU (or other accelerator) visible: the Trainer must be told the run is on the CPU."""
    return not _has_accelerator()


def _has_accelerator() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return bool((xpu and xpu.is_available()) or (mps and mps.is_available()))
