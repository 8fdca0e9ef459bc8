"""Which engine distributes a run (DDP, DeepSpeed ZeRO-0..3, FSDP), and what each refuses up front.

A run asks for DeepSpeed with `deepspeed: <json>` (LLaMA-Factory's key, the Trainer's field)
and for FSDP with the Trainer's `fsdp`/`fsdp_config` keys or by being started with
`accelerate launch --config_file <fsdp yaml>` (accelerate then sets ACCELERATE_USE_FSDP).
Everything here runs at config time, in the process that launches the others, so a bad
combination fails before any process is spawned or any weight is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LatheError, read_json_file

if TYPE_CHECKING:
    from ..config import RunConfig

TRUE = {"1", "true", "yes", "on"}


def extension_cache() -> Path:
    """Where DeepSpeed's JIT-built CPU ops live (TORCH_EXTENSIONS_DIR), next to lathe's other caches.

    The first DeepSpeed run on a CPU compiles its shared-memory communication op (~90 s);
    a stable folder makes every later run, and every CI rerun that keeps the cache, reuse it.
    """
    from ..cache import default_cache_root

    return default_cache_root() / "torch_extensions"


def resolve_deepspeed(value: Any, source: str) -> str | dict:
    """The DeepSpeed config as the Trainer takes it: an absolute JSON path (or an inline mapping).

    A relative path is looked up in the working directory first, then in the config file's
    folder and the folders above it, so LLaMA-Factory's `deepspeed: examples/deepspeed/ds_z3_config.json`
    finds the file from the repository root or from the config's own folder.
    """
    if isinstance(value, dict):
        _check_deepspeed_dict(value, "the inline `deepspeed` mapping", source)
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extension_cache()))
        return value
    if not isinstance(value, str) or not value.strip():
        raise LatheError(f"{source}: `deepspeed` must be the path of a DeepSpeed JSON config, got {value!r}.")
    given = Path(value).expanduser()
    candidates = [given] if given.is_absolute() else [Path.cwd() / given]
    src = Path(source)
    if not given.is_absolute() and src.suffix in (".yaml", ".yml", ".json") and src.exists():
        folder = src.resolve().parent
        candidates += [parent / given for parent in (folder, *folder.parents)]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        looked = ", ".join(dict.fromkeys(str(c.parent) for c in candidates[:3]))
        raise LatheError(
            f"{source}: `deepspeed: {value}`: file not found (looked in {looked}). Give the path of a DeepSpeed "
            f"JSON config, e.g. examples/deepspeed/ds_z3_config.json."
        )
    data = read_json_file(found, "the `deepspeed` config")
    _check_deepspeed_dict(data, str(found), source)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extension_cache()))
    return str(found.resolve())


def _check_deepspeed_dict(data: Any, where: str, source: str) -> None:
    if not isinstance(data, dict):
        raise LatheError(f"{source}: {where} must hold a JSON object (DeepSpeed's config), got {type(data).__name__}.")
    stage = (data.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise LatheError(f"{source}: {where}: `zero_optimization.stage` must be 0, 1, 2 or 3, got {stage!r}.")
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise LatheError(f"{source}: `deepspeed` needs the deepspeed package: pip install deepspeed (or lathe[deepspeed]).")


def deepspeed_config(cfg: "RunConfig") -> dict | None:
    value = getattr(cfg.training, "deepspeed", None)
    if not value:
        return None
    if isinstance(value, dict):
        return value
    return json.loads(Path(value).read_text(encoding="utf-8"))


def deepspeed_stage(cfg: "RunConfig") -> int | None:
    """The ZeRO stage of the run's DeepSpeed config, or None without DeepSpeed."""
    data = deepspeed_config(cfg)
    return None if data is None else int((data.get("zero_optimization") or {}).get("stage", 0))


def fsdp_requested(cfg: "RunConfig") -> str | None:
    """How the run asked for FSDP (for messages), or None when it did not."""
    if getattr(cfg.training, "fsdp", None):
        return "`fsdp` in the config"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in TRUE:
        return "an accelerate FSDP config (ACCELERATE_USE_FSDP=true)"
    return None


def requested_engine(cfg: "RunConfig") -> str:
    """deepspeed-zero<N>, fsdp, or ddp (the Trainer's default under a distributed launch)."""
    stage = deepspeed_stage(cfg)
    if stage is not None:
        return f"deepspeed-zero{stage}"
    return "fsdp" if fsdp_requested(cfg) else "ddp"


def has_accelerator() -> bool:
    """A device type accelerate runs FSDP on; on a plain CPU it silently falls back to DDP."""
    import torch
    import accelerate.utils as au

    if torch.cuda.is_available():
        return True
    probes = ("is_xpu_available", "is_npu_available", "is_mlu_available", "is_musa_available", "is_hpu_available")
    return any(getattr(au, name, lambda: False)() for name in probes)


def check(cfg: "RunConfig") -> None:
    """Combinations that cannot work (or would silently not shard), refused before any process starts."""
    src, f, m, t = cfg.source, cfg.finetuning, cfg.model, cfg.training
    stage = deepspeed_stage(cfg)
    fsdp = fsdp_requested(cfg)
    if stage is not None and t.use_cpu and has_accelerator():
        raise LatheError(f"{src}: `use_cpu: true` makes the Trainer skip DeepSpeed on this GPU machine; remove it.")
    if stage is not None and fsdp:
        raise LatheError(f"{src}: `deepspeed` and {fsdp} both shard the model; pick one.")
    if fsdp and not has_accelerator():
        raise LatheError(
            f"{src}: {fsdp} asks for FSDP, but no GPU is visible: accelerate runs FSDP on a CPU as plain DDP "
            f"(no sharding), so lathe refuses rather than pretend. Shard on CPU with DeepSpeed "
            f"(`deepspeed: examples/deepspeed/ds_z3_config.json`), or drop FSDP to train with DDP."
        )
    engine = f"DeepSpeed ZeRO-{stage}" if stage is not None else ("FSDP" if fsdp else None)
    if engine is None:
        return
    if f.stage == "ppo":
        raise LatheError(
            f"{src}: `stage: ppo` runs lathe's own PPO loop, not the Trainer, so {engine} would not shard it; "
            f"train PPO with DDP (remove `deepspeed`/FSDP)."
        )
    chosen = [k for k in ("use_galore", "use_apollo", "use_badam") if getattr(f, k)]
    if chosen:
        raise LatheError(f"{src}: `{chosen[0]}` replaces the optimizer per parameter; it cannot go with {engine}.")
    sharded = stage == 3 or bool(fsdp)
    if not sharded:
        return
    if m.quantization_bit == 8:
        raise LatheError(
            f"{src}: `quantization_bit: 8` weights cannot be sharded by {engine}; use `quantization_bit: 4` "
            f"(lathe stores the 4-bit weights in the compute dtype so they shard), or ZeRO-2."
        )
    if f.pissa_init:
        raise LatheError(f"{src}: `pissa_init` factorises whole weights, which {engine} has split across processes; "
                         f"use ZeRO-2 or plain LoRA init.")
    if t.predict_with_generate and stage == 3:
        raise LatheError(
            f"{src}: `predict_with_generate` is not supported under ZeRO-3 (every token would gather every layer); "
            f"predict afterwards in one process with the saved model."
        )


def check_launch(cfg: "RunConfig") -> None:
    """At training time: DeepSpeed and FSDP need one process per device, started by a launcher."""
    from ..launcher import inside_launcher

    engine = requested_engine(cfg)
    if engine != "ddp" and not inside_launcher():
        raise LatheError(
            f"{cfg.source}: {engine} needs a distributed launch (torchrun), but this process was started alone. "
            f"Run `lathe train <config>` (it starts torchrun itself), or use torchrun / accelerate launch."
        )


def cpu_deepspeed_state(training: dict[str, Any]) -> None:
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
    from datetime import timedelta

    from accelerate.state import PartialState

    from ..launcher import inside_launcher

    if not inside_launcher():
        return
    extra = training.get("accelerator_config")
    if extra is not None and not isinstance(extra, dict):
        raise LatheError("`accelerator_config` must be a mapping when DeepSpeed runs on a CPU.")
    timeout = timedelta(seconds=int(training.get("ddp_timeout") or 1800))
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # accelerate reads it to start DeepSpeed's comm layer
    try:
        PartialState(backend=training.get("ddp_backend") or "gloo", timeout=timeout)
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    training["accelerator_config"] = {**(extra or {}), "use_configured_state": True}


def zero3_only_where_it_trains() -> None:
    """Keep ZeRO-3's process-wide switch off in processes that do not train under a launcher.

    Building training arguments with a ZeRO-3 config flips a global in transformers that makes
    every later `from_pretrained`/`from_config` in the process partition weights through
    DeepSpeed, which needs a process group. `lathe train`'s launching process, `lathe plan`,
    chat/export/eval on a training config and in-process tests only read the config, so the
    switch is turned back off there; the launched training processes keep it.
    """
    from ..launcher import inside_launcher

    if not inside_launcher():
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
