"""DeepSpeed ZeRO through `lathe train`, on CPU (gloo, DeepSpeed's CPU accelerator).

The ZeRO-3 run is the proof of the headline: 2 processes really partition the weights (the
sharding line each run logs), train, and save one model that reloads in a single process and
scores the same eval loss the 2-process run measured. The first DeepSpeed run on a machine
JIT-builds its CPU communication op (~90-140 s here); lathe keeps it under its cache folder
(TORCH_EXTENSIONS_DIR), so later runs start in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lathe.config import load_config
from lathe.errors import LatheError
from tests.conftest import DATA, ROOT

pytest.importorskip("deepspeed", reason="DeepSpeed tests need the deepspeed package (pip install lathe[deepspeed])")

Z2, Z3 = ROOT / "examples/deepspeed/ds_z2_config.json", ROOT / "examples/deepspeed/ds_z3_config.json"


def lathe_train(config: Path, *overrides: str, processes: int | None = None, force: bool = False):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FORCE_TORCHRUN", None)
    if force:
        env["FORCE_TORCHRUN"] = "1"
    if processes:
        env["NPROC_PER_NODE"] = str(processes)
    return subprocess.run([sys.executable, "-m", "lathe", "train", str(config), *overrides],
                          capture_output=True, text=True, env=env, timeout=420)


def sharding(stderr: str) -> dict:
    lines = [x for x in stderr.splitlines() if x.startswith("[lathe] sharding: ")]
    assert len(lines) == 1, "one sharding line, from rank 0 only:\n" + "\n".join(lines)
    return json.loads(lines[0].split(": ", 1)[1])


def losses(output_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return [(r["current_steps"], r["loss"]) for r in rows if "loss" in r]


@pytest.fixture
def base_config(tmp_path, tiny_llama):
    def make(**overrides) -> Path:
        raw = {
            "model_name_or_path": str(tiny_llama), "dataset": "lathe_identity", "dataset_dir": str(DATA),
            "template": "chatml", "cutoff_len": 64, "do_train": True, "max_steps": 3, "logging_steps": 1,
            "learning_rate": 5e-3, "disable_shuffling": True, "disable_tqdm": True, "seed": 1,
            "per_device_train_batch_size": 1, "overwrite_output_dir": True, "save_strategy": "no",
            "output_dir": str(tmp_path / "out"), **overrides,
        }
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return make


@pytest.mark.slow  # 40 s; ZeRO-3 in two processes stays in the default suite through the bf16 resize tests
def test_zero3_partitions_trains_and_saves_a_model_that_reloads_in_one_process(base_config, tmp_path):
    # One held-out sample: its eval loss is that sample's loss however the processes split the work
    # (with more, the Trainer averages per process first, so 2 processes and 1 differ slightly).
    config = base_config(finetuning_type="full", deepspeed=str(Z3), val_size=1, do_eval=True,
                         per_device_eval_batch_size=1)
    out = tmp_path / "out"
    proc = lathe_train(config, processes=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "torch.distributed.run --nproc_per_node 2" in proc.stderr  # `deepspeed:` alone made lathe launch
    report = sharding(proc.stderr)
    assert report["engine"] == "deepspeed-zero3" and report["world_size"] == 2
    assert report["params"] == "sharded" and report["by"] == ["deepspeed-zero3"]
    assert report["local_numel"] <= 0.55 * report["total_numel"]  # rank 0 holds about half the weights
    assert [s for s, _ in losses(out)] == [1, 2, 3]  # one writer
    two_process_eval = json.loads((out / "eval_results.json").read_text())["eval_loss"]

    # The saved model is whole (gathered on save) and, loaded by one process, scores the same.
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    assert all(t.numel() > 0 for t in weights.values())
    assert sum(t.numel() for t in weights.values()) == report["total_numel"]
    check = tmp_path / "reload"
    proc = lathe_train(config, f"model_name_or_path={out}", "do_train=false", f"output_dir={check}",
                       "deepspeed=null")
    assert proc.returncode == 0, proc.stderr[-4000:]
    one_process_eval = json.loads((check / "eval_results.json").read_text())["eval_loss"]
    assert one_process_eval == pytest.approx(two_process_eval, abs=1e-5)


@pytest.mark.slow
def test_zero2_logs_the_same_losses_as_ddp(base_config, tmp_path):
    """ZeRO-2 partitions optimizer state and gradients only: the training itself is DDP's."""
    config = base_config(finetuning_type="full")
    proc = lathe_train(config, f"deepspeed={Z2}", f"output_dir={tmp_path / 'z2'}", processes=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sharding(proc.stderr)["params"] == "replicated"
    proc = lathe_train(config, f"output_dir={tmp_path / 'ddp'}", processes=2, force=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    z2, ddp = losses(tmp_path / "z2"), losses(tmp_path / "ddp")
    assert len(z2) == len(ddp) == 3
    for (_, a), (_, b) in zip(z2, ddp):
        assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.slow
def test_zero3_checkpoint_resumes_where_it_left_off(base_config, tmp_path):
    import shutil

    config = base_config(finetuning_type="full", deepspeed=str(Z3), max_steps=4, save_strategy="steps", save_steps=2)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    proc = lathe_train(config, f"output_dir={full}", processes=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (full / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's sharded optimizer state
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    proc = lathe_train(config, f"output_dir={resumed}", "overwrite_output_dir=false", processes=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    tail = losses(resumed)
    assert [s for s, _ in tail] == [3, 4]
    for (_, a), (_, b) in zip(tail, losses(full)[2:]):
        assert a == pytest.approx(b, abs=1e-5)


# ---------------------------------------------------------------- refused up front, nothing spawned


def test_a_missing_deepspeed_config_names_the_key_before_any_process_starts(base_config):
    proc = lathe_train(base_config(deepspeed="nowhere/ds.json"), processes=2)
    assert proc.returncode == 1
    assert "`deepspeed: nowhere/ds.json`: file not found" in proc.stderr
    assert "launching" not in proc.stderr and "Traceback" not in proc.stderr


def test_relative_deepspeed_path_is_found_next_to_the_config(tmp_path, tiny_llama, monkeypatch):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "z3.json").write_text(Z3.read_text())
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({"model_name_or_path": str(tiny_llama), "dataset": "lathe_identity",
                                        "output_dir": str(tmp_path / "o"), "deepspeed": "ds/z3.json"}))
    monkeypatch.chdir(ROOT)  # not where the JSON is
    cfg = load_config(cfg_path)
    assert cfg.training.deepspeed == str((tmp_path / "ds" / "z3.json").resolve())
    from lathe.config.engines import deepspeed_stage, requested_engine

    assert deepspeed_stage(cfg) == 3 and requested_engine(cfg) == "deepspeed-zero3"
    # Reading a ZeRO-3 config outside a launched process leaves model loading alone (lathe plan, chat, tests).
    from transformers.integrations import is_deepspeed_zero3_enabled

    assert not is_deepspeed_zero3_enabled()


def test_bad_deepspeed_json_is_refused(tmp_path, tiny_llama):
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 4}}')
    with pytest.raises(LatheError, match="stage` must be 0, 1, 2 or 3"):
        load_config(None, [f"model_name_or_path={tiny_llama}", "dataset=x", f"output_dir={tmp_path}", f"deepspeed={bad}"])
    bad.write_text("{not json")
    with pytest.raises(LatheError, match="invalid JSON"):
        load_config(None, [f"model_name_or_path={tiny_llama}", "dataset=x", f"output_dir={tmp_path}", f"deepspeed={bad}"])


@pytest.mark.parametrize("extra, message", [
    (["predict_with_generate=true"], "not supported under ZeRO-3"),
    (["finetuning_type=lora", "quantization_bit=8"], "cannot be sharded"),
    (["finetuning_type=lora", "pissa_init=true"], "pissa_init"),
    (["stage=ppo", "finetuning_type=lora", "reward_model=/x"], "own PPO loop"),
    (["finetuning_type=full", "use_galore=true"], "use_galore"),
    (["fsdp=full_shard"], "pick one|set one"),
])
def test_incompatible_options_are_refused_with_zero3(extra, message, tmp_path, tiny_llama):
    with pytest.raises(LatheError, match=message):
        load_config(None, [f"model_name_or_path={tiny_llama}", "dataset=lathe_identity", f"output_dir={tmp_path}",
                           f"deepspeed={Z3}", *extra])


def test_deepspeed_without_a_launcher_is_refused(tmp_path, tiny_llama, monkeypatch):
    from lathe.config.engines import requested_engine
    from lathe.distributed import check_launch
    from lathe.distributed.launch import should_launch

    for name in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "FORCE_TORCHRUN"):
        monkeypatch.delenv(name, raising=False)
    cfg = load_config(None, [f"model_name_or_path={tiny_llama}", "dataset=lathe_identity", f"output_dir={tmp_path}",
                             f"deepspeed={Z2}"])
    assert should_launch(requested_engine(cfg))  # `lathe train` starts torchrun itself
    with pytest.raises(LatheError, match="needs a distributed launch"):
        check_launch(cfg)  # a single process reached training without one
    monkeypatch.setenv("FORCE_TORCHRUN", "0")
    with pytest.raises(LatheError, match="FORCE_TORCHRUN=0"):
        should_launch(requested_engine(cfg))


# one real resize in CI (~15 s each under ZeRO-3); no resize and the config's own tokens in the slow suite
@pytest.mark.parametrize("template, extra, grows", [
    pytest.param("chatml", {}, False, marks=pytest.mark.slow), ("llama3", {}, True),
    pytest.param("chatml", {"add_special_tokens": "<tool_x>"}, True, marks=pytest.mark.slow)])
def test_zero3_in_bf16_resizes_only_when_tokens_were_added(base_config, tmp_path, template, extra, grows):
    """Under ZeRO-3 the local embedding table is empty: lathe reads its rows from DeepSpeed's shape,
    and a real resize keeps the weights' dtype (transformers builds it in the placeholder's fp32,
    which DeepSpeed refuses next to bf16 weights); the config's new tokens get their rows set."""
    config = base_config(finetuning_type="full", deepspeed=str(Z3), bf16=True, template=template, max_steps=1, **extra)
    proc = lathe_train(config, processes=1, force=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert ("Resized the embeddings" in proc.stderr) == grows
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        rows = f.get_slice("model.embed_tokens.weight").get_shape()[0]
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "BF16"
    from transformers import AutoTokenizer

    assert rows == len(AutoTokenizer.from_pretrained(tmp_path / "out"))
