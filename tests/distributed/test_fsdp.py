"""FSDP: real sharding where accelerate can shard (GPUs), and never a silent fall-back to DDP.

accelerate turns an FSDP config into FSDP only on GPU-like devices; on a CPU it runs plain
DDP without a word. lathe therefore refuses FSDP on a CPU before anything starts, and at the
start of every training run checks the parameters themselves (ShardingCallback). The 2-GPU
test runs only where there are 2 GPUs (scripts/gpu_check_distributed.sh runs it there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml

from lathe.config import load_config
from lathe.distributed import ShardingCallback, describe
from lathe.distributed import sharding as sharding_module
from lathe.errors import LatheError
from tests.conftest import DATA, ROOT

ACCELERATE_CONFIGS = sorted((ROOT / "examples/accelerate").glob("*.yaml"))


def base(tmp_path, tiny_llama, *extra: str) -> list[str]:
    return [f"model_name_or_path={tiny_llama}", "dataset=lathe_identity", f"output_dir={tmp_path}", *extra]


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=[p.name for p in ACCELERATE_CONFIGS])
def test_shipped_accelerate_configs_are_fsdp_configs(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.distributed_type.value == "FSDP"
    assert config.fsdp_config["fsdp_version"] in (1, 2)
    assert config.num_processes >= 2 and not config.use_cpu
    if "offload" in path.name:
        assert config.fsdp_config["fsdp_offload_params"] is True
    if "multiple_nodes" in path.name:
        assert config.num_machines > 1 and config.main_process_ip


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine FSDP is allowed")
def test_fsdp_is_refused_on_a_cpu_instead_of_silently_running_ddp(tmp_path, tiny_llama, monkeypatch):
    with pytest.raises(LatheError, match="accelerate runs FSDP on a CPU as plain DDP"):
        load_config(None, base(tmp_path, tiny_llama, "fsdp=full_shard auto_wrap"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp*.yaml` sets
    with pytest.raises(LatheError, match="accelerate FSDP config"):
        load_config(None, base(tmp_path, tiny_llama))


def test_sharding_check_sees_fsdp2_dtensors(tmp_path):
    """describe() recognises torch's FSDP2 shards (a one-process group is enough to make DTensors)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        assert describe(model)["params"] == "replicated"
        fully_shard(model)
        report = describe(model)
        assert report["params"] == "sharded" and report["by"] == ["fsdp2"]
        assert report["total_numel"] == 8 * 8 + 8 + 8 * 2 + 2
    finally:
        dist.destroy_process_group()


def test_asking_for_fsdp_and_getting_replicated_weights_stops_the_run(monkeypatch):
    monkeypatch.setattr(sharding_module, "_world_size", lambda: 2)
    model = torch.nn.Linear(4, 4)
    state = SimpleNamespace(is_world_process_zero=True)
    with pytest.raises(LatheError, match="fell back to plain data parallelism"):
        ShardingCallback("fsdp").on_train_begin(None, state, None, model=model)
    ddp = ShardingCallback("ddp")
    ddp.on_train_begin(None, state, None, model=model)  # replicated is what DDP means
    assert ddp.report["params"] == "replicated" and ddp.report["world_size"] == 2


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="accelerate shards with FSDP only on GPUs (on a CPU it would run DDP, which lathe "
                           "refuses); scripts/gpu_check_distributed.sh runs this on a multi-GPU machine")
@pytest.mark.parametrize("accelerate_config", ["fsdp_config.yaml", "fsdp2_config.yaml"])
def test_fsdp_shards_on_two_gpus(accelerate_config, tmp_path, tiny_llama):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_llama), "dataset": "lathe_identity", "dataset_dir": str(DATA),
        "template": "chatml", "cutoff_len": 64, "do_train": True, "max_steps": 3, "logging_steps": 1,
        "finetuning_type": "lora", "per_device_train_batch_size": 1, "save_strategy": "no",
        "output_dir": str(tmp_path / "out"), "overwrite_output_dir": True, "disable_tqdm": True,
    }))
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(ROOT / "examples/accelerate" / accelerate_config), "--num_processes", "2", "-m", "lathe", "train",
         str(config)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stderr.splitlines() if x.startswith("[lathe] sharding: "))
    report = json.loads(line.split(": ", 1)[1])
    assert report["engine"] == "fsdp" and report["params"] == "sharded"
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
