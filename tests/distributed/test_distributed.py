"""Multi-process training through torchrun (gloo on CPU): same losses as one process, one writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lathe.errors import LatheError
from lathe.distributed.launch import torchrun_command
from tests.conftest import DATA


def losses(output_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return [(r["current_steps"], r["loss"]) for r in rows if "loss" in r]


def train(config: Path, *overrides: str, processes: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes > 1:
        env.update(FORCE_TORCHRUN="1", NPROC_PER_NODE=str(processes))
    return subprocess.run([sys.executable, "-m", "lathe", "train", str(config), *overrides],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def ddp_config(tmp_path, tiny_llama) -> Path:
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_llama), "dataset": "lathe_identity", "dataset_dir": str(DATA),
        "template": "chatml", "cutoff_len": 64, "do_train": True, "max_steps": 4, "logging_steps": 1,
        "learning_rate": 5e-3, "disable_shuffling": True, "disable_tqdm": True, "seed": 1,
        "overwrite_output_dir": True, "output_dir": str(tmp_path / "unused"),
    }))
    return path


def test_two_processes_equal_one_with_the_same_total_batch(ddp_config, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    proc = train(ddp_config, "per_device_train_batch_size=1", f"output_dir={two}", "save_strategy=steps",
                 "save_steps=2", processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.distributed.run --nproc_per_node 2" in proc.stderr
    proc = train(ddp_config, "per_device_train_batch_size=2", f"output_dir={one}", "save_strategy=no")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = losses(two), losses(one)
    assert [s for s, _ in got] == [1, 2, 3, 4]  # one writer: no line twice
    for (_, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, abs=1e-4)
    assert (two / "adapter_model.safetensors").exists() and (two / "checkpoint-2").is_dir()

    # the 2-process checkpoint resumes in one process and ends where the 1-process run did
    resumed = tmp_path / "resumed"
    import shutil

    shutil.copytree(two / "checkpoint-2", resumed / "checkpoint-2")
    proc = train(ddp_config, "per_device_train_batch_size=2", f"output_dir={resumed}", "overwrite_output_dir=false",
                 "save_strategy=no")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tail = losses(resumed)
    assert [s for s, _ in tail] == [3, 4]
    for (_, a), (_, b) in zip(tail, want[2:]):
        assert a == pytest.approx(b, abs=1e-4)


def test_launcher_environment_checks(monkeypatch):
    monkeypatch.setenv("NPROC_PER_NODE", "abc")
    with pytest.raises(LatheError, match="NPROC_PER_NODE"):
        torchrun_command(["x.yaml"])
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.setenv("NODE_RANK", "2")
    with pytest.raises(LatheError, match="NODE_RANK"):
        torchrun_command(["x.yaml"])
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    cmd = torchrun_command(["x.yaml", "lr=1"])
    assert cmd[-4:] == ["lathe", "train", "x.yaml", "lr=1"]
    assert "--node_rank" in cmd and "10.0.0.1" in cmd and "29500" in cmd
    monkeypatch.setenv("RDZV_ID", "job1")
    monkeypatch.setenv("MIN_NNODES", "1")
    monkeypatch.setenv("MAX_NNODES", "2")
    cmd = torchrun_command(["x.yaml"])
    assert "--rdzv_id" in cmd and "1:2" in cmd and "10.0.0.1:29500" in cmd


def test_more_processes_than_gpus_is_refused_before_launch(monkeypatch):
    import lathe.distributed.launch as launcher

    monkeypatch.setattr(launcher, "device_count", lambda: 1)
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    with pytest.raises(LatheError, match="NPROC_PER_NODE=2 but only 1 GPU"):
        torchrun_command(["x.yaml"])


@pytest.mark.slow  # a torchrun launch (~15 s); the launcher checks stay in CI as unit tests
def test_a_worker_refusing_its_config_ends_in_its_message_not_the_launchers_traceback(ddp_config, tmp_path):
    """The data is read in the workers: a missing dataset is their LatheError, which torchrun used to
    follow with a ChildFailedError traceback of its own."""
    proc = train(ddp_config, "dataset=no_such_set", f"output_dir={tmp_path / 'out'}", processes=2)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "lathe train: error: Dataset 'no_such_set' is not in" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("[lathe] worker process rank ")
