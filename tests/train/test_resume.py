"""Crash safety: after `kill -9` at any point, the same command resumes and ends as if never stopped.

A driver process runs the real `lathe train` and SIGKILLs itself at a chosen point: after a
logged step (between checkpoints), or in the middle of writing a checkpoint (weights written,
optimizer not). The rerun of the same command must resume from the newest complete checkpoint,
never from the half-written one, and finish with the uninterrupted run's per-step losses and
final weights (fp32, same seed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.train.base import prepare_output_dir
from lathe.train.checkpoints import STAGING, checkpoint_complete, last_complete_checkpoint

DRIVER = r'''
import os, signal, sys
kill_at, mode = int(sys.argv[2]), sys.argv[3]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "log":  # between checkpoints, right after step `kill_at` was logged
    from lathe.train import callbacks
    on_log = callbacks.JsonlLogCallback.on_log
    def killing_on_log(self, args, state, control, logs=None, **kw):
        on_log(self, args, state, control, logs=logs, **kw)
        if state.global_step == kill_at and logs and "loss" in logs:
            die()
    callbacks.JsonlLogCallback.on_log = killing_on_log
elif mode == "save":  # in the middle of writing checkpoint-`kill_at`: weights are out, optimizer is not
    from transformers import Trainer
    save = Trainer._save_optimizer_and_scheduler
    def killing_save(self, output_dir):
        if self.state.global_step == kill_at:
            die()
        save(self, output_dir)
    Trainer._save_optimizer_and_scheduler = killing_save
from lathe.cli import main
sys.exit(main(["train", sys.argv[1]]))
'''


def train(config: Path, kill_at: int = 0, mode: str = "none") -> int:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(config), str(kill_at), mode], env=env,
                          capture_output=True, text=True, timeout=600)
    if kill_at == 0 or mode == "none":
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.returncode


def losses(out: Path) -> dict[int, float]:
    records = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines() if x.strip()]
    steps = [r["current_steps"] for r in records if r.get("loss") is not None]
    assert len(steps) == len(set(steps)), "a resumed run must not log a step twice"
    return {r["current_steps"]: r["loss"] for r in records if r.get("loss") is not None}


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (out / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(out / name))


def write(tmp_path: Path, name: str, base: Path) -> Path:
    config = yaml.safe_load(base.read_text())
    config["output_dir"] = str(tmp_path / name)
    config["overwrite_output_dir"] = False
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def check_resume_is_exact(tmp_path: Path, base: Path, kill_at: int, mode: str) -> None:
    whole, broken = write(tmp_path, "whole", base), write(tmp_path, "broken", base)
    train(whole)
    assert train(broken, kill_at, mode) == -9  # really killed
    out = tmp_path / "broken"
    assert not (out / "trainer_log.jsonl").exists() or max(losses(out)) < 10  # it stopped before the end
    if mode == "save":
        assert (out / STAGING).exists() and not (out / f"checkpoint-{kill_at}").exists()
    train(broken)  # the same command again
    expected, got = losses(tmp_path / "whole"), losses(out)
    assert sorted(got) == sorted(expected)
    for step, loss in expected.items():
        assert abs(got[step] - loss) < 1e-5, (step, got[step], loss)
    a, b = final_weights(tmp_path / "whole"), final_weights(out)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5)
    assert not (out / STAGING).exists()


RESUMABLE = dict(max_steps=10, save_steps=3, save_strategy="steps", logging_steps=1, seed=7, lora_dropout=0.1,
                 per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3)


def test_sft_lora_resumes_exactly_after_kill_between_checkpoints(tmp_path, sft_config):
    check_resume_is_exact(tmp_path, sft_config(**RESUMABLE), kill_at=5, mode="log")


def test_half_written_checkpoint_is_never_resumed(tmp_path, sft_config):
    check_resume_is_exact(tmp_path, sft_config(**RESUMABLE, save_total_limit=1), kill_at=6, mode="save")


@pytest.mark.slow
def test_sft_full_resumes_exactly(tmp_path, sft_config):
    full = {k: v for k, v in RESUMABLE.items() if k not in ("lora_dropout", "learning_rate")}
    check_resume_is_exact(tmp_path, sft_config(**full, finetuning_type="full", learning_rate=1e-4),
                          kill_at=4, mode="log")


@pytest.mark.slow
def test_dpo_resumes_exactly(tmp_path, sft_config):
    check_resume_is_exact(tmp_path, sft_config(**RESUMABLE, stage="dpo", dataset="lathe_pairs"), kill_at=4, mode="log")


def test_incomplete_checkpoints_are_skipped(tmp_path):
    out = tmp_path / "run"
    good, bad = out / "checkpoint-2", out / "checkpoint-4"
    for folder, step in ((good, 2), (bad, 4)):
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"x")
    (good / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (bad / "trainer_state.json").write_text('{"global_step": 4, "log_hi')  # cut off mid-write
    assert checkpoint_complete(good) and not checkpoint_complete(bad)
    assert last_complete_checkpoint(out) == str(good)


def test_another_runs_output_dir_is_refused(tmp_path, sft_config, tiny_demo_model):
    first = load_config(sft_config(max_steps=2, save_steps=1, save_strategy="steps", overwrite_output_dir=False))
    from lathe.train import run_stage

    run_stage(first)
    other = load_config(sft_config(max_steps=2, model_name_or_path=str(tiny_demo_model), overwrite_output_dir=False))
    with pytest.raises(LatheError, match="holds another run"):
        prepare_output_dir(other)
    method = load_config(sft_config(max_steps=2, finetuning_type="full", overwrite_output_dir=False))
    with pytest.raises(LatheError, match="finetuning_type"):
        prepare_output_dir(method)
    assert prepare_output_dir(load_config(sft_config(max_steps=2, overwrite_output_dir=True))) is None


def test_unwritable_or_full_output_dir_is_found_before_training(tmp_path, monkeypatch):
    from collections import namedtuple

    from lathe.train.checkpoints import check_writable, disk_full_error, is_disk_full

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LatheError, match="not writable"):
        check_writable(blocker / "out")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda p: usage(10, 9, 1000))
    with pytest.raises(LatheError, match="GiB free"):
        check_writable(tmp_path / "out", needed_bytes=10_000)
    error = OSError(28, "No space left on device")
    assert is_disk_full(RuntimeError("save failed").with_traceback(None)) is False
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = error
    assert is_disk_full(wrapped)
    assert "no complete checkpoint" in str(disk_full_error(tmp_path))


def test_disk_full_mid_run_stops_with_the_last_good_checkpoint_kept(tmp_path, sft_config, monkeypatch):
    from transformers import Trainer

    from lathe.train import run_stage

    save = Trainer._save_optimizer_and_scheduler

    def full_disk(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(28, "No space left on device")
        save(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full_disk)
    cfg = load_config(sft_config(max_steps=6, save_steps=2, save_strategy="steps"))
    with pytest.raises(LatheError, match="disk .* is full: the last complete checkpoint, checkpoint-2, is kept"):
        run_stage(cfg)
    out = tmp_path / "out"
    assert checkpoint_complete(out / "checkpoint-2") and not (out / "checkpoint-4").exists()


@pytest.mark.slow  # three processes of `lathe train` (about 30 s alone)
def test_multimodal_sft_resumes_exactly(tmp_path):
    """Images in the batches (a tiny Qwen2-VL on lathe_shapes): the media come from the same samples after the
    resume, so losses and weights are the uninterrupted run's."""
    from lathe.testing.tiny_vlm import build_tiny_vlm

    data = Path(__file__).resolve().parents[2] / "data"
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "model_name_or_path": str(build_tiny_vlm("qwen2_vl")), "stage": "sft", "do_train": True,
        "finetuning_type": "lora", "dataset": "lathe_shapes", "dataset_dir": str(data), "template": "qwen2_vl",
        "cutoff_len": 256, "report_to": "none", "disable_tqdm": True, **{**RESUMABLE, "max_steps": 6},
    }))
    check_resume_is_exact(tmp_path, base, kill_at=4, mode="log")
