"""Ray Train as the launcher (USE_RAY=1): 2 Ray workers x batch 1 log the losses of 1 process x batch 2,
write lathe's checkpoints into output_dir and resume from them; clear errors without Ray or without USE_RAY."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lathe.config.load import build_config
from lathe.distributed import ray as lathe_ray
from lathe.errors import LatheError
from tests.conftest import DATA

HAS_RAY = importlib.util.find_spec("ray") is not None


def losses(output_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return [(r["current_steps"], r["loss"]) for r in rows if "loss" in r]


def config(tmp_path: Path, **overrides):
    """A RunConfig on the demo data (the model is never loaded by these checks)."""
    return build_config({"model_name_or_path": str(tmp_path), "dataset": "lathe_identity", "dataset_dir": str(DATA),
                         "template": "chatml", "do_train": True, "output_dir": str(tmp_path / "out"), **overrides})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_yaml(tmp_path, tiny_llama) -> Path:
    path = tmp_path / "ray.yaml"
    path.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_llama), "dataset": "lathe_identity", "dataset_dir": str(DATA),
        "template": "chatml", "cutoff_len": 64, "do_train": True, "logging_steps": 1, "learning_rate": 5e-3,
        "lr_scheduler_type": "constant",  # a run stopped at step 2 and resumed to 4 follows the 4-step run exactly
        "disable_shuffling": True, "disable_tqdm": True, "seed": 1, "output_dir": str(tmp_path / "unused"),
    }))
    return path


def ray_train(path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`USE_RAY=1 lathe train`, as a user runs it."""
    env = {**os.environ, "USE_RAY": "1", "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
    env.pop("FORCE_TORCHRUN", None)
    return subprocess.run([sys.executable, "-m", "lathe", "train", str(path), *overrides],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow  # a local Ray cluster and three runs (about a minute): `make test-slow`
@pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed (pip install 'lathe[ray]'): the Ray launcher cannot run")
def test_two_ray_workers_equal_one_process_and_resume(ray_yaml, tmp_path, monkeypatch):
    out, records, one = tmp_path / "ray_out", tmp_path / "ray_records", tmp_path / "one"
    cluster = 'ray_init_kwargs={"num_cpus": 2, "include_dashboard": false}'  # a local cluster the command starts
    # 1) 2 Ray CPU workers x batch 1, stopped at step 2 (its checkpoint lands in output_dir)
    proc = ray_train(ray_yaml, "ray_num_workers=2", cluster, f"ray_storage_path={records}", f"output_dir={out}",
                     "per_device_train_batch_size=1", "max_steps=2", "save_strategy=steps", "save_steps=2")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Ray: started a local cluster of 1 node(s) with {'CPU': 2.0}; 2 worker(s) x {'CPU': 1}, PACK" in log
    assert re.search(r"Ray worker rank 0 of 2: torch.distributed at \S+:\d+", log)
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "ray").exists() and list(records.glob("ray_train_run-*"))  # Ray's records: ray_storage_path
    first = losses(out)

    # 2) the same command, now to step 4: Ray's workers resume from lathe's checkpoint-2,
    #    with the rendezvous where master_addr / master_port put it
    port = _free_port()
    proc = ray_train(ray_yaml, "ray_num_workers=2", cluster, f"ray_storage_path={records}", f"output_dir={out}",
                     "per_device_train_batch_size=1", "max_steps=4", "save_strategy=no",
                     "master_addr=127.0.0.1", f"master_port={port}")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"Ray worker rank 0 of 2: torch.distributed at 127.0.0.1:{port}" in log
    assert re.search(r"Resuming from \S*checkpoint-2", log)
    got = losses(out)
    assert got[:2] == first and [s for s, _ in got] == [1, 2, 3, 4]  # rank 0 alone wrote the log

    # 3) one process x batch 2, no Ray (in this process): the same losses at every step
    from lathe.cli import main

    monkeypatch.delenv("USE_RAY", raising=False)
    assert main(["train", str(ray_yaml), f"output_dir={one}", "per_device_train_batch_size=2", "max_steps=4",
                 "save_strategy=no"]) == 0
    want = losses(one)
    assert [s for s, _ in want] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, abs=1e-4)


def test_ray_options_need_use_ray(tmp_path, monkeypatch, capsys):
    from lathe.cli import main
    from lathe.distributed import check_launch

    monkeypatch.delenv("USE_RAY", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": str(tmp_path), "dataset": "lathe_identity",
                                    "dataset_dir": str(DATA), "template": "chatml", "output_dir": str(tmp_path / "o"),
                                    "ray_num_workers": 2, "master_port": 29500}))
    assert main(["train", str(path)]) == 1
    err = capsys.readouterr().err
    assert "ray_num_workers, master_port only apply to Ray training" in err and "USE_RAY=1" in err
    with pytest.raises(LatheError, match="USE_RAY=1"):  # also for runs started in-process (lathe.train.run)
        check_launch(config(tmp_path, placement_strategy="SPREAD"))
    # at their defaults (as LLaMA Board writes every key) they are no request for Ray
    assert lathe_ray.ray_requested(config(tmp_path, ray_num_workers=1, placement_strategy="PACK")) is False
    monkeypatch.setenv("USE_RAY", "1")
    for name in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LatheError, match="started by neither Ray nor torchrun"):  # lathe.train.run in a script
        check_launch(config(tmp_path))
    monkeypatch.setenv("LOCAL_RANK", "0")  # a Ray worker (train_worker sets it from Ray's context) trains
    check_launch(config(tmp_path, ray_num_workers=2))
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    with pytest.raises(LatheError, match="two launchers"):
        lathe_ray.ray_requested(config(tmp_path))


def test_use_ray_without_ray_names_the_extra(tmp_path, monkeypatch, capsys):
    from lathe.cli import main

    monkeypatch.setenv("USE_RAY", "1")
    monkeypatch.delenv("FORCE_TORCHRUN", raising=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as on a machine without it
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": str(tmp_path), "dataset": "lathe_identity",
                                    "dataset_dir": str(DATA), "template": "chatml", "output_dir": str(tmp_path / "o")}))
    assert main(["train", str(path)]) == 1
    assert "USE_RAY=1 needs Ray Train, which is not installed" in capsys.readouterr().err
    with pytest.raises(LatheError, match=re.escape("pip install 'lathe[ray]'")):
        lathe_ray.import_ray()


def test_ray_is_not_imported_without_use_ray(tmp_path):
    code = (
        "import sys\n"
        "from lathe.config.load import build_config\n"
        "import lathe.cli, lathe.distributed.launch\n"
        "from lathe.distributed import check_launch, ray\n"
        f"cfg = build_config({{'model_name_or_path': {str(tmp_path)!r}, 'dataset': 'lathe_identity', "
        f"'dataset_dir': {str(DATA)!r}, 'template': 'chatml', 'output_dir': {str(tmp_path / 'o')!r}}})\n"
        "assert ray.ray_requested(cfg) is False\n"
        "check_launch(cfg)\n"
        "print('ray' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "USE_RAY"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_dict_options_resources_and_cluster_checks(tmp_path):
    cfg = config(tmp_path, resources_per_worker='{"CPU": 2, "GPU": 0.5}', ray_init_kwargs={"address": "auto"})
    assert lathe_ray.as_dict(cfg, "resources_per_worker") == {"CPU": 2, "GPU": 0.5}
    assert lathe_ray.as_dict(cfg, "ray_init_kwargs") == {"address": "auto"}
    with pytest.raises(LatheError, match="`ray_init_kwargs` is not valid JSON"):
        lathe_ray.as_dict(config(tmp_path, ray_init_kwargs="{num_cpus"), "ray_init_kwargs")
    with pytest.raises(LatheError, match="must be a number"):
        lathe_ray.worker_resources(config(tmp_path, resources_per_worker={"CPU": "two"}), 0)
    # default: one GPU per worker where the cluster has GPUs, else one CPU
    assert lathe_ray.worker_resources(config(tmp_path), cluster_gpus=8) == {"GPU": 1}
    assert lathe_ray.worker_resources(config(tmp_path), cluster_gpus=0) == {"CPU": 1}
    assert lathe_ray.worker_resources(cfg, cluster_gpus=8) == {"CPU": 2, "GPU": 0.5}

    four = config(tmp_path, ray_num_workers=4)
    lathe_ray.check_cluster(four, {"GPU": 0.5}, {"GPU": 2.0, "CPU": 16.0}, nodes=1)  # 4 x 0.5 = 2 GPUs: fits
    with pytest.raises(LatheError, match=r"needs 4 GPU, but the Ray cluster has 2"):
        lathe_ray.check_cluster(four, {"GPU": 1}, {"GPU": 2.0, "CPU": 16.0}, nodes=1)
    spread = config(tmp_path, ray_num_workers=3, placement_strategy="STRICT_SPREAD")
    lathe_ray.check_cluster(spread, {"CPU": 1}, {"CPU": 6.0}, nodes=3)
    with pytest.raises(LatheError, match="STRICT_SPREAD.*needs 3 nodes, the Ray cluster has 2"):
        lathe_ray.check_cluster(spread, {"CPU": 1}, {"CPU": 6.0}, nodes=2)


def test_storage_of_ray_records(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert lathe_ray.storage(config(tmp_path)) == (None, None)  # Ray's own default (~/ray_results)
    assert lathe_ray.storage(config(tmp_path, ray_storage_path="records")) == (str(tmp_path / "records"), None)
    with pytest.raises(LatheError, match="ray_storage_filesystem=s3 needs ray_storage_path"):
        lathe_ray.storage(config(tmp_path, ray_storage_filesystem="s3"))
    pytest.importorskip("pyarrow.fs")
    import pyarrow.fs

    for kind, cls in lathe_ray.FILESYSTEMS.items():  # s3 -> S3FileSystem, gs/gcs -> GcsFileSystem (not built: no network)
        assert hasattr(pyarrow.fs, cls), kind
    assert lathe_ray.FILESYSTEMS == {"s3": "S3FileSystem", "gs": "GcsFileSystem", "gcs": "GcsFileSystem"}


def test_rank_zero_endpoint_honours_master_addr_and_port():
    """What the rank-0 worker runs: the address must be its own and the port free; no port: a free one."""
    addr, port = lathe_ray.rank_zero_endpoint("127.0.0.1", None)
    assert addr == "127.0.0.1" and port > 0
    free = _free_port()
    assert lathe_ray.rank_zero_endpoint("127.0.0.1", free) == ("127.0.0.1", free)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(LatheError, match=f"master_addr/master_port 127.0.0.1:{taken} cannot be used"):
            lathe_ray.rank_zero_endpoint("127.0.0.1", taken)
    with pytest.raises(LatheError, match="203.0.113.7:0 cannot be used by the rank-0 worker"):
        lathe_ray.rank_zero_endpoint("203.0.113.7", None)  # TEST-NET-3: never an address of this machine


def test_a_workers_lathe_error_reaches_the_cli_plainly():
    """Ray wraps a worker's error (WorkerGroupError.worker_failures, ControllerError.controller_failure,
    RayTaskError.cause); the LatheError inside is what the user sees."""

    class TaskError(Exception):  # stands in for ray.exceptions.RayTaskError
        def __init__(self, cause):
            super().__init__("task failed")
            self.cause = cause

    class GroupError(Exception):  # stands in for ray.train.WorkerGroupError
        def __init__(self, failures):
            super().__init__("workers failed")
            self.worker_failures = failures

    inner = LatheError("output_dir x already holds files")
    found = lathe_ray._user_error(GroupError({0: RuntimeError("other"), 1: TaskError(inner)}))
    assert isinstance(found, LatheError) and str(found) == "in a Ray worker: output_dir x already holds files"
    assert lathe_ray._user_error(GroupError({0: RuntimeError("a bug")})) is None  # not a user error: kept as is

    class TaskLatheError(TaskError, LatheError):  # RayTaskError.as_instanceof_cause(): str is Ray's traceback
        def __str__(self):
            return "ray::execute.rank_zero_endpoint() Traceback ..."

    found = lathe_ray._user_error(RuntimeError("controller failed from", TaskLatheError(inner)))
    assert found is None  # args are not followed: only Ray's error attributes and exception chaining
    error = RuntimeError("controller failed")
    error.controller_failure = TaskLatheError(inner)
    assert str(lathe_ray._user_error(error)) == "in a Ray worker: output_dir x already holds files"

