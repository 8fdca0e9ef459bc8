"""Ray Train as the launcher past one machine: `USE_RAY=1 lathe train cfg.yaml`, as in LLaMA-Factory.

Ray only starts the processes and their torch.distributed group; each worker then runs the
same training function as a torchrun process (it sees RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT), so rank 0 writes lathe's own atomic checkpoints into
`output_dir` and a second run resumes from them as any lathe run does. Ray Train's checkpoints
and reports are not used: its storage (`ray_storage_path`) keeps only its run records.

The driver (`launch`) starts a local cluster or joins one (`ray_init_kwargs`, e.g.
`{address: auto}`), checks that the cluster can hold `ray_num_workers` x `resources_per_worker`
(Ray itself would wait for them forever), and runs `ray.train.torch.TorchTrainer`. Its process
group comes from `RankZeroBackend`, which honours `master_addr` / `master_port`. Ray is
imported only here, and only when USE_RAY=1 asks for it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import LatheError
from ..process import inside_launcher

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

TRUE = {"1", "true", "yes", "on"}
INSTALL = "pip install 'lathe[ray]'"
# The options that only mean something under USE_RAY=1 (all in the `run` group).
RAY_OPTIONS = ("ray_num_workers", "resources_per_worker", "placement_strategy", "ray_storage_path",
               "ray_storage_filesystem", "ray_init_kwargs", "master_addr", "master_port")
# ray_storage_filesystem -> the pyarrow.fs class that reaches it (credentials from the usual environment).
FILESYSTEMS = {"s3": "S3FileSystem", "gs": "GcsFileSystem", "gcs": "GcsFileSystem"}


def use_ray() -> bool:
    """USE_RAY=1 (LLaMA-Factory's switch) asks for Ray as the launcher."""
    return os.environ.get("USE_RAY", "").lower() in TRUE


def check_options(cfg: "RunConfig") -> None:
    """Ray options set away from their default without USE_RAY=1 would be ignored: refuse them.

    And with USE_RAY=1, a run that reaches training outside any launcher (lathe.train.run in a
    script) would train alone: only `lathe train` hands a run to Ray.
    """
    if use_ray():
        if not inside_launcher():
            raise LatheError(
                f"{cfg.source}: USE_RAY=1, but this process was started by neither Ray nor torchrun, so it would "
                f"train alone. Run `USE_RAY=1 lathe train <config>` (it starts the Ray workers), or unset USE_RAY."
            )
        return
    defaults = {f.name: f.default for f in fields(type(cfg.run))}
    changed = [name for name in RAY_OPTIONS if getattr(cfg.run, name) != defaults[name]]
    if changed:
        raise LatheError(
            f"{cfg.source}: {', '.join(changed)} only apply to Ray training, which is off. "
            f"Run with USE_RAY=1 (`USE_RAY=1 lathe train <config>`), or remove those keys."
        )


def ray_requested(cfg: "RunConfig") -> bool:
    """True when `lathe train` should hand the run to Ray instead of training (or starting torchrun) here.

    Inside a worker (Ray's or torchrun's) the answer is no: that process trains.
    """
    if not use_ray() or inside_launcher():
        check_options(cfg)
        return False
    if os.environ.get("FORCE_TORCHRUN", "").lower() in TRUE:
        raise LatheError("USE_RAY=1 and FORCE_TORCHRUN=1 ask for two launchers; set only one of them.")
    return True


def as_dict(cfg: "RunConfig", key: str) -> dict[str, Any]:
    """A dict option given as a mapping or as a JSON string (as LLaMA-Factory accepts it)."""
    value = getattr(cfg.run, key)
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise LatheError(f"{cfg.source}: `{key}` is not valid JSON ({e}): {value!r}.") from None
    if not isinstance(value, dict):
        raise LatheError(f"{cfg.source}: `{key}` must be a mapping such as {{CPU: 1}}, got {value!r}.")
    return dict(value)


def worker_resources(cfg: "RunConfig", cluster_gpus: float) -> dict[str, float]:
    """What each worker reserves: `resources_per_worker`, else one GPU where the cluster has GPUs, else one CPU."""
    resources = as_dict(cfg, "resources_per_worker")
    if not resources:
        return {"GPU": 1} if cluster_gpus > 0 else {"CPU": 1}
    for name, amount in resources.items():
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or amount < 0:
            raise LatheError(f"{cfg.source}: `resources_per_worker` {name} must be a number >= 0, got {amount!r}.")
    return resources


def check_cluster(cfg: "RunConfig", resources: dict[str, float], available: dict[str, float], nodes: int) -> None:
    """Refuse a request the cluster cannot hold, naming the shortfall (Ray would wait for it without end)."""
    workers = cfg.run.ray_num_workers
    for name, amount in resources.items():
        need, have = amount * workers, available.get(name, 0)
        if need > have:
            raise LatheError(
                f"{cfg.source}: ray_num_workers={workers} x resources_per_worker {{{name}: {amount}}} needs {need:g} "
                f"{name}, but the Ray cluster has {have:g}. Lower ray_num_workers, change resources_per_worker, "
                f"or add nodes (ray_init_kwargs: {{address: ...}} joins a bigger cluster)."
            )
    if cfg.run.placement_strategy == "STRICT_SPREAD" and workers > nodes:
        raise LatheError(
            f"{cfg.source}: placement_strategy STRICT_SPREAD puts each worker on its own node: "
            f"ray_num_workers={workers} needs {workers} nodes, the Ray cluster has {nodes}."
        )


def storage(cfg: "RunConfig") -> tuple[str | None, Any]:
    """Where Ray Train keeps its run records: (storage_path, pyarrow file system or None).

    Unset, Ray's own default (~/ray_results). A local path is made absolute; with
    `ray_storage_filesystem` (s3, gs) it is a bucket path such as `my-bucket/runs`.
    """
    path, kind = cfg.run.ray_storage_path, cfg.run.ray_storage_filesystem
    if kind is None:
        return (str(Path(path).expanduser().absolute()) if path else None), None
    if not path:
        raise LatheError(f"{cfg.source}: ray_storage_filesystem={kind} needs ray_storage_path (a bucket path such as my-bucket/runs).")
    import pyarrow.fs

    return path, getattr(pyarrow.fs, FILESYSTEMS[kind])()


def import_ray():
    """Ray and its Train library, or an error that names the extra to install."""
    try:
        import ray
        import ray.train.torch  # noqa: F401
    except ImportError as e:
        raise LatheError(f"USE_RAY=1 needs Ray Train, which is not installed ({e}). Install it: {INSTALL}") from None
    return ray


# --- the process group: Ray's torch backend, with master_addr / master_port honoured ---------------

def rank_zero_endpoint(addr: str | None, port: int | None) -> tuple[str, int]:
    """Run on the rank-0 worker: the address and port its rendezvous store will listen on.

    Binding proves both: `addr` must be an address of this machine (else rank 0 is elsewhere
    and no worker could reach it), and `port` must be free; port 0 asks the OS for a free one.
    """
    if addr is None:
        import ray

        addr = ray.util.get_node_ip_address()  # the node's address in the cluster, as Ray's own backend uses
    with socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((addr, port or 0))
        except OSError as e:
            raise LatheError(
                f"master_addr/master_port {addr}:{port or 0} cannot be used by the rank-0 worker on node "
                f"{socket.gethostname()}: {e.strerror or e}. "
                f"Give an address of that node and a free port, or leave them unset (Ray's choice)."
            ) from None
        return addr, sock.getsockname()[1]


def _join_group(backend: str, rank: int, world_size: int, addr: str, port: int, timeout_s: int) -> None:
    """Run on each worker: join the torch.distributed group at addr:port, as torchrun's processes do."""
    from datetime import timedelta

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port))
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def _leave_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def torch_config(cfg: "RunConfig"):
    """Ray's TorchConfig for this run: `ddp_backend` (default: nccl with GPUs, gloo without), `ddp_timeout`,
    and the rendezvous at `master_addr` / `master_port`."""
    from ray.train.backend import Backend
    from ray.train.torch import TorchConfig

    class RankZeroBackend(Backend):
        """Starts the process group like Ray's torch backend, at the rank-0 endpoint lathe chose."""

        share_cuda_visible_devices = True  # LOCAL_RANK indexes the node's GPUs, as under torchrun

        def on_start(self, worker_group, backend_config):
            import ray

            resources = worker_group.get_resources_per_worker()
            backend = backend_config.backend or ("nccl" if resources.get("GPU", 0) > 0 else "gloo")
            addr, port = worker_group.execute_single(0, rank_zero_endpoint, backend_config.master_addr,
                                                     backend_config.master_port)
            size = len(worker_group)
            ray.get([worker_group.execute_single_async(rank, _join_group, backend, rank, size, addr, port,
                                                       backend_config.timeout_s) for rank in range(size)])

        def on_shutdown(self, worker_group, backend_config):
            worker_group.execute(_leave_group)

    @dataclass
    class LatheTorchConfig(TorchConfig):
        master_addr: str | None = None
        master_port: int | None = None

        @property
        def backend_cls(self):
            return RankZeroBackend

    return LatheTorchConfig(backend=cfg.training.ddp_backend or None, timeout_s=int(cfg.training.ddp_timeout or 1800),
                            master_addr=cfg.run.master_addr, master_port=cfg.run.master_port)


# --- the worker and the driver ------------------------------------------------------------------------

def train_worker(payload: dict[str, Any]) -> None:
    """Each Ray worker: the torchrun environment from Ray's context, then lathe's own training function."""
    import pickle

    import ray
    import ray.train

    from ..logs import setup_logging

    cfg, train, cwd = pickle.loads(ray.get(payload["run"]))
    ctx = ray.train.get_context()
    os.environ.update(
        USE_RAY="1", RANK=str(ctx.get_world_rank()), WORLD_SIZE=str(ctx.get_world_size()),
        LOCAL_RANK=str(ctx.get_local_rank()), LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()),
        NODE_RANK=str(ctx.get_node_rank()),
    )
    if os.path.isdir(cwd):  # relative paths in the config mean what they meant to the driver
        os.chdir(cwd)
    setup_logging()
    if ctx.get_world_rank() == 0:
        logger.info("Ray worker rank 0 of %s: torch.distributed at %s:%s", ctx.get_world_size(),
                    os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"))
    train(cfg)


def launch(cfg: "RunConfig", train: Callable[["RunConfig"], Any]) -> int:
    """Start (or join) a Ray cluster and run `train(cfg)` in `ray_num_workers` workers through TorchTrainer.

    `train` must be importable by name in the workers (a module-level function): it is what
    `lathe train` runs in a single process.
    """
    import pickle

    ray = import_ray()
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    init_kwargs = as_dict(cfg, "ray_init_kwargs")
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(**init_kwargs)
        except Exception as e:  # a wrong address or key: Ray's own errors (ConnectionError, RpcError, TypeError)
            where = f"join the Ray cluster at {init_kwargs['address']}" if init_kwargs.get("address") else "start Ray"
            raise LatheError(
                f"{cfg.source}: could not {where} with ray_init_kwargs {init_kwargs}: {e}. "
                f"Check the address (a cluster started by `ray start --head`), or drop `address` to start a local one."
            ) from None
    elif init_kwargs:
        raise LatheError(f"{cfg.source}: `ray_init_kwargs` cannot apply: Ray is already initialized in this process "
                         f"(the script calling lathe ran ray.init). Remove the key, or call lathe before ray.init.")
    try:
        available = ray.cluster_resources()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        resources = worker_resources(cfg, available.get("GPU", 0))
        check_cluster(cfg, resources, available, nodes)
        path, filesystem = storage(cfg)
        logger.info("Ray: %s cluster of %d node(s) with %s; %d worker(s) x %s, %s",
                    "started a local" if started and not init_kwargs.get("address") else "joined a",
                    nodes, {k: available[k] for k in ("CPU", "GPU") if k in available},
                    cfg.run.ray_num_workers, resources, cfg.run.placement_strategy)
        trainer = TorchTrainer(
            train_worker,
            # Pickled here and opened only in the workers: Ray's controller need not import lathe's trainer stack.
            # Handed over through the object store: the config holds the hub token, and Ray may record a
            # trainer's train_loop_config with the run; it records only this reference.
            train_loop_config={"run": ray.put(pickle.dumps((cfg, train, os.getcwd())))},
            torch_config=torch_config(cfg),
            scaling_config=ScalingConfig(num_workers=cfg.run.ray_num_workers, use_gpu=resources.get("GPU", 0) > 0,
                                         resources_per_worker=resources, placement_strategy=cfg.run.placement_strategy),
            run_config=RunConfig(storage_path=path, storage_filesystem=filesystem),
        )
        try:
            trainer.fit()
        except Exception as e:
            raise _user_error(e) or e
    finally:
        if started:
            ray.shutdown()
    return 0


def _user_error(error: BaseException) -> LatheError | None:
    """The LatheError a worker raised, found in the error Ray wraps it in, so the CLI prints it plainly."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, LatheError):  # Ray's copy (RayTaskError made an instance of the cause) prints a traceback
            inner = getattr(e, "cause", None)
            return LatheError(f"in a Ray worker: {inner if isinstance(inner, LatheError) else e}")
        # Ray wraps: ControllerError.controller_failure, WorkerGroupError.worker_failures, RayTaskError.cause
        stack += [e.__cause__, e.__context__, getattr(e, "controller_failure", None), getattr(e, "cause", None),
                  *(getattr(e, "worker_failures", None) or {}).values()]
    return None
