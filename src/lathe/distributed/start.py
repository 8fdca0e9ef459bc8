"""What a distributed engine needs in the process that trains, done at the start of the run (never while loading a config).

The config says which engine a run asked for and refuses what cannot work
(`lathe.config.engines`); here the training process prepares it: DeepSpeed's JIT-built CPU
ops get a stable cache folder, and on a machine without GPUs DeepSpeed's process group is
started on gloo before the Trainer's own setup (see `cpu_deepspeed_arguments`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..build_cache import default_cache_root
from ..config.engines import requested_engine
from ..config.training import on_cpu_only
from ..errors import LatheError
from ..process import inside_launcher
from .ray import check_options as check_ray_options

if TYPE_CHECKING:
    from ..config import RunConfig


def extension_cache() -> Path:
    """Where DeepSpeed's JIT-built CPU ops live (TORCH_EXTENSIONS_DIR), next to lathe's other caches.

    The first DeepSpeed run on a CPU compiles its shared-memory communication op (~90 s);
    a stable folder makes every later run, and every CI rerun that keeps the cache, reuse it.
    """
    return default_cache_root() / "torch_extensions"


def check_launch(cfg: "RunConfig") -> None:
    """At training time: DeepSpeed and FSDP need one process per device, started by a launcher;
    Ray's options need USE_RAY=1 (also for runs started in-process, not through `lathe train`)."""
    check_ray_options(cfg)
    engine = requested_engine(cfg)
    if engine != "ddp" and not inside_launcher():
        raise LatheError(
            f"{cfg.source}: {engine} needs a distributed launch (torchrun), but this process was started alone. "
            f"Run `lathe train <config>` (it starts torchrun itself), or use torchrun / accelerate launch."
        )


def start_engine(cfg: "RunConfig") -> dict[str, Any]:
    """Prepare this training process for the run's engine; returns Trainer arguments the run must use."""
    check_launch(cfg)  # DeepSpeed / FSDP in a single unlaunched process would fail deep inside the Trainer
    if not cfg.training.deepspeed:
        return {}
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extension_cache()))
    return cpu_deepspeed_arguments(cfg) if on_cpu_only() else {}


def cpu_deepspeed_arguments(cfg: "RunConfig") -> dict[str, Any]:
    """On a machine without GPUs, start the DeepSpeed process group on gloo before the Trainer's own setup.

    Why: under `use_cpu` (which lathe sets on a CPU so bf16 is allowed) the Trainer skips
    DeepSpeed altogether, and without it transformers hands DeepSpeed to accelerate with no
    backend, which accelerate (knowing only device backends such as nccl) records as one process
    while DeepSpeed runs with all of them; ZeRO then fails its batch-size check. Starting
    accelerate's state here, DeepSpeed on gloo (its CPU accelerator does the rest), and telling
    the Trainer to use that configured state (`accelerator_config.use_configured_state`) gives
    every layer the true world size. Only in a launched process (LOCAL_RANK set); `ddp_timeout`
    bounds every collective.
    """
    from dataclasses import asdict, is_dataclass
    from datetime import timedelta

    from accelerate.state import PartialState

    if not inside_launcher():
        return {}
    t = cfg.training
    timeout = timedelta(seconds=int(t.ddp_timeout or 1800))
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # accelerate reads it to start DeepSpeed's comm layer
    try:
        PartialState(backend=t.ddp_backend or "gloo", timeout=timeout)
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    extra = t.accelerator_config
    extra = asdict(extra) if is_dataclass(extra) else dict(extra or {})
    return {"accelerator_config": {**extra, "use_configured_state": True}}
