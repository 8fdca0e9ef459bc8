"""Which engine distributes a run (DDP, DeepSpeed ZeRO-0..3, FSDP), read from the config, and what each refuses.

A run asks for DeepSpeed with `deepspeed: <json>` (LLaMA-Factory's key, the Trainer's field)
and for FSDP with the Trainer's `fsdp`/`fsdp_config` keys or by being started with
`accelerate launch --config_file <fsdp yaml>` (accelerate then sets ACCELERATE_USE_FSDP).
Everything here only reads (the config, the DeepSpeed JSON, the environment); it runs at load
time, in the process that launches the others, so a bad combination fails before any process
is spawned or any weight is loaded. What the engines need at the start of a run (a process
group on a CPU, the extension cache) is `lathe.distributed.start`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LatheError, read_json_file
from ..registry import OPTIMIZERS, STAGES

if TYPE_CHECKING:
    from .load import RunConfig

TRUE = {"1", "true", "yes", "on"}


def resolve_deepspeed(value: Any, source: str) -> str | dict:
    """The DeepSpeed config as the Trainer takes it: an absolute JSON path (or an inline mapping).

    A relative path is looked up in the working directory first, then in the config file's
    folder and the folders above it, so LLaMA-Factory's `deepspeed: examples/deepspeed/ds_z3_config.json`
    finds the file from the repository root or from the config's own folder.
    """
    if isinstance(value, dict):
        _check_deepspeed_dict(value, "the inline `deepspeed` mapping", source)
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
    return str(found.resolve())


def _check_deepspeed_dict(data: Any, where: str, source: str) -> None:
    if not isinstance(data, dict):
        raise LatheError(f"{source}: {where} must hold a JSON object (DeepSpeed's config), got {type(data).__name__}.")
    stage = (data.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise LatheError(f"{source}: {where}: `zero_optimization.stage` must be 0, 1, 2 or 3, got {stage!r}.")
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
    import accelerate.utils as au
    import torch

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
    if not STAGES[f.stage].trainer:
        raise LatheError(
            f"{src}: `stage: {f.stage}` runs lathe's own {f.stage.upper()} loop, not the Trainer, so {engine} would not "
            f"shard it; train it with DDP (remove `deepspeed`/FSDP)."
        )
    for optimizer in OPTIMIZERS.values():
        if getattr(f, optimizer.flag) and (stage is not None or not optimizer.with_fsdp):
            raise LatheError(f"{src}: `{optimizer.flag}` replaces the optimizer per parameter; it cannot go with {engine}.")
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
