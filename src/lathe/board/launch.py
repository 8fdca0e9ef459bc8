"""How the Board starts a run: processes, DeepSpeed ZeRO stage and offload, FSDP, and the hub models come from.

LLaMA Board's device count, DeepSpeed stage / offload and hub selector, turned into what a shell
would type: `FORCE_TORCHRUN=1 NPROC_PER_NODE=2 lathe train config.yaml`, a `deepspeed:` JSON
written in the Board's work folder, `USE_MODELSCOPE_HUB=1`. The Board adds nothing of its own:
lathe's launcher (distributed/launch.py) and hub switch (hub.py) read exactly these, so the
preview's command run from a shell is the same run.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LatheError
from ..hub import OTHER_HUBS
from ..model.catalog import CatalogModel, for_model_id

DS_STAGES = ("none", "0", "2", "3")
HUBS = ("huggingface", "modelscope", "modelers")  # LLaMA Board's names
HUB_SWITCH = {"modelscope": OTHER_HUBS[0], "modelers": OTHER_HUBS[1]}  # lathe's switch (hub.py) for each other hub
HUB_FIELD = {"huggingface": "hf", "modelscope": "ms", "modelers": "om"}  # the catalog's key for each hub's id


def devices_text(gpus: int) -> str:
    """What the device box shows: the GPUs, or the CPU cores a run may use."""
    if gpus:
        return f"{gpus} GPU" + ("s" if gpus > 1 else "")
    from ..threads import available_cores

    return f"CPU, {available_cores()} cores"


def deepspeed_config(stage: int, offload: bool) -> dict[str, Any]:
    """A ZeRO config whose sizes the Trainer fills in ("auto"), as LLaMA-Factory's examples/deepspeed ones."""
    zero: dict[str, Any] = {"stage": stage}
    if stage in (0, 2):  # stage 0: the same buckets, nothing sharded
        zero.update(allgather_partitions=True, allgather_bucket_size=int(5e8), overlap_comm=False,
                    reduce_scatter=True, reduce_bucket_size=int(5e8), contiguous_gradients=True,
                    round_robin_gradients=True)
    elif stage == 3:
        zero.update(overlap_comm=False, contiguous_gradients=True, sub_group_size=int(1e9),
                    reduce_bucket_size="auto", stage3_prefetch_bucket_size="auto",
                    stage3_param_persistence_threshold="auto", stage3_max_live_parameters=int(1e9),
                    stage3_max_reuse_distance=int(1e9), stage3_gather_16bit_weights_on_model_save=True)
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "zero_allow_untested_optimizer": True,
        "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
                 "hysteresis": 2, "min_loss_scale": 1},
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
    }


@dataclass(frozen=True)
class Launch:
    """One run's launch, as the Train tab's controls set it, on a machine with `gpus` CUDA devices."""

    processes: int = 1
    ds_stage: str = "none"
    ds_offload: bool = False
    fsdp: bool = False
    gpus: int = 0

    @property
    def distributed(self) -> bool:
        return self.processes > 1 or self.ds_stage != "none" or self.fsdp

    def env(self) -> dict[str, str]:
        """The launcher's variables. A run under torchrun gets its process count; so does one process on a
        machine of several GPUs (lathe train would otherwise start one per GPU). One plain process sets
        nothing, but switches off a FORCE_TORCHRUN the Board itself was started with."""
        if self.distributed or self.gpus > 1:
            return {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(self.processes)}
        return {"FORCE_TORCHRUN": "0"} if outer_environ().get("FORCE_TORCHRUN") else {}

    def config(self, workdir: str | Path) -> dict[str, Any]:
        """Config keys the launch adds: `deepspeed` (a JSON written under `workdir/deepspeed/`) and / or `fsdp`
        (both asked for: `lathe train`'s own check refuses the pair, with its reason)."""
        out: dict[str, Any] = {}
        if self.ds_stage != "none":
            stage = int(self.ds_stage)
            path = Path(workdir) / "deepspeed" / f"ds_z{stage}{'_offload' if self.ds_offload else ''}_config.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(deepspeed_config(stage, self.ds_offload), indent=2) + "\n"
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
            out["deepspeed"] = str(path)
        if self.fsdp:
            out["fsdp"] = "full_shard auto_wrap" + (" offload" if self.ds_offload else "")
        return out


def check_launch(processes: Any, ds_stage: str | None, ds_offload: bool, fsdp: bool, gpus: int) -> Launch:
    """The launch the controls ask for, or a LatheError that says which control to change. Which engines go
    together (DeepSpeed with FSDP, FSDP without a GPU) the config's own check decides (config/engines.py)."""
    try:
        count = int(str(processes).strip() or 1)
    except ValueError:
        raise LatheError(f"processes: {processes!r} is not a whole number; give how many processes to start.") from None
    if count < 1:
        raise LatheError(f"processes: {count}; give 1 or more.")
    if gpus and count > gpus:
        raise LatheError(f"processes: {count}, but this machine shows {gpus} GPU(s); use at most {gpus}.")
    stage = str(ds_stage or "none")
    if stage not in DS_STAGES:
        raise LatheError(f"DeepSpeed stage {stage!r}: pick one of {', '.join(DS_STAGES)}.")
    if ds_offload and stage in ("none", "0") and not fsdp:
        raise LatheError("CPU offload moves ZeRO-2/3's (or FSDP's) sharded state to the CPU: pick stage 2 or 3 "
                         "(or FSDP), or untick offload.")
    return Launch(count, stage, bool(ds_offload), bool(fsdp), gpus)


# ---------------------------------------------------------------- hubs


def hub_env(hub: str | None) -> dict[str, str]:
    """The variables that make a run load from `hub`: its switch on, and any other switch the Board's own
    environment has on turned off (a Board started with USE_MODELSCOPE_HUB=1 still runs a Hugging Face pick
    from Hugging Face). Nothing for Hugging Face in a plain environment, so the command stays plain."""
    hub = hub or HUBS[0]
    if hub not in HUBS:
        raise LatheError(f"hub {hub!r}: pick one of {', '.join(HUBS)}.")
    outer = outer_environ()
    env = {switch.env: "0" for name, switch in HUB_SWITCH.items() if name != hub and switch.active(outer)}
    if hub in HUB_SWITCH:
        env[HUB_SWITCH[hub].env] = "1"
    return env


def current_hub() -> str:
    """The hub the Board's own environment selects (USE_MODELSCOPE_HUB wins, as LLaMA-Factory's)."""
    outer = outer_environ()
    return next((name for name, switch in HUB_SWITCH.items() if switch.active(outer)), HUBS[0])


def hub_id(entry: CatalogModel, hub: str | None) -> str | None:
    """The catalog model's id on `hub` (None where that hub does not carry it)."""
    return getattr(entry, HUB_FIELD.get(hub or HUBS[0], "hf"), None)


def check_hub(model: str | None, hub: str | None) -> None:
    """Refuse a catalog model on a hub that does not carry it, before a run fails at its download."""
    entry = for_model_id(model)
    if entry is not None and hub_id(entry, hub) is None:
        raise LatheError(f"`{model}` ({entry.name}) is not on {hub}: pick another hub in the top bar (it is on "
                         f"{', '.join(h for h in HUBS if hub_id(entry, h))}).")


def swap_hub(model: str | None, hub: str | None) -> str | None:
    """The same catalog model's id on `hub`, for a model path that is a known id on any hub; None when
    the path is a local folder, an id the catalog lacks, or a model `hub` does not carry."""
    entry = for_model_id(model)
    if entry is None:
        return None
    return hub_id(entry, hub)


_ENVIRONMENT_LOCK = threading.Lock()
_REPLACED: dict[str, str | None] = {}  # while `environment` holds: the values it replaced (None: was unset)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set `values` in this process's environment for the block: a model the Board loads itself (chat, plan,
    preview) reads the hub switch there, as a child run does. One block at a time, the old values put back
    after; `outer_environ` gives the environment without them meanwhile, for runs started from other pages."""
    if not values:
        yield
        return
    with _ENVIRONMENT_LOCK:
        _REPLACED.update({k: os.environ.get(k) for k in values})
        os.environ.update(values)
        try:
            yield
        finally:
            for k, v in _REPLACED.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            _REPLACED.clear()


def outer_environ() -> dict[str, str]:
    """This process's environment as the Board was started with it: without what an `environment` block
    holds right now for another page's load."""
    env = dict(os.environ)
    for k, v in dict(_REPLACED).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env
