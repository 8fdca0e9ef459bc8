"""Multi-process training through torchrun, with LLaMA-Factory's environment variable names.

`lathe train` re-launches itself under `torch.distributed.run` (torchrun) when more than one
GPU is visible, `FORCE_TORCHRUN=1`, or the config names `deepspeed` (or `fsdp`), one process per device (`NPROC_PER_NODE`), across
`NNODES` machines (`NODE_RANK`, `MASTER_ADDR`, `MASTER_PORT`; a free port is picked when none
is given). With `RDZV_ID` the launch is elastic (`MIN_NNODES`, `MAX_NNODES`, `MAX_RESTARTS`).
These are the conventional launcher variables; lathe reads no others. On a CPU the processes
talk over gloo, which is how the launcher is tested without GPUs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from ..errors import LatheError
from ..process import inside_launcher
from ..threads import threads_per_process

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def should_launch(engine: str = "ddp") -> bool:
    """True when `lathe train` should start torchrun instead of training in this process.

    A run whose engine (`lathe.config.engines.requested_engine`) is DeepSpeed (`deepspeed:`) or
    FSDP launches even on one device: those engines need a process group. `FORCE_TORCHRUN=0`
    forbids launching, so with them it is an error.
    """
    if inside_launcher():
        return False
    force = os.environ.get("FORCE_TORCHRUN", "").lower()
    if engine != "ddp" and force in FALSE:
        raise LatheError(
            f"{engine} needs a distributed launch, but FORCE_TORCHRUN={os.environ['FORCE_TORCHRUN']} forbids it. "
            f"Unset FORCE_TORCHRUN (lathe then starts torchrun itself), or remove `deepspeed`/`fsdp`."
        )
    return force in TRUE or device_count() > 1 or engine != "ddp"


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise LatheError(f"{name}={value!r} is not a whole number.") from None
    if number <= 0 and name not in ("NODE_RANK", "MAX_RESTARTS"):
        raise LatheError(f"{name} must be positive, got {number}.")
    return number


def torchrun_command(train_args: list[str]) -> list[str]:
    """The torchrun command line that runs `lathe train <train_args>` in every process."""
    devices = device_count()
    nproc = _int_env("NPROC_PER_NODE", max(devices, 1))
    if devices and nproc > devices:
        raise LatheError(f"NPROC_PER_NODE={nproc} but only {devices} GPU(s) are visible; use at most {devices}.")
    nnodes = _int_env("NNODES", 1)
    node_rank = _int_env("NODE_RANK", 0)
    if node_rank >= nnodes:
        raise LatheError(f"NODE_RANK={node_rank} must be below NNODES={nnodes}.")
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = _int_env("MASTER_PORT", 0) or _free_port()
    # torch.distributed.run itself, with a worker's failure reported in one line (torchrun.py)
    cmd = [sys.executable, "-m", "lathe.distributed.torchrun", "--nproc_per_node", str(nproc)]
    if os.environ.get("RDZV_ID"):
        low, high = _int_env("MIN_NNODES", nnodes), _int_env("MAX_NNODES", nnodes)
        cmd += ["--nnodes", f"{low}:{high}", "--rdzv_id", os.environ["RDZV_ID"], "--rdzv_backend", "c10d",
                "--rdzv_endpoint", f"{addr}:{port}", "--max_restarts", str(_int_env("MAX_RESTARTS", 3))]
    else:
        cmd += ["--nnodes", str(nnodes), "--node_rank", str(node_rank), "--master_addr", addr,
                "--master_port", str(port)]
    return cmd + ["-m", "lathe", "train", *train_args]


def launch(train_args: list[str]) -> int:
    cmd = torchrun_command(train_args)
    print("[lathe] launching: torch.distributed.run " + " ".join(cmd[3:]), file=sys.stderr, flush=True)
    nproc = int(cmd[cmd.index("--nproc_per_node") + 1])
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": threads_per_process(nproc)}).returncode
