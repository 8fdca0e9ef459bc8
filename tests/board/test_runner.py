"""The Board's runner and checks: the command shown is the one run, one run per folder, abort,
paths refused before launch, the live view read from trainer_log.jsonl."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from lathe.board import runner as runner_mod
from lathe.board.checks import check_config, check_paths
from lathe.board.locales import _data, languages
from lathe.board.monitor import checkpoints, loss_points, progress_html, read_log
from lathe.board.runner import CONFIG_NAME, Runner, command, launch_argv, redact
from lathe.errors import LatheError
from tests.conftest import DATA

SLEEPER = [sys.executable, "-c", "import time\nfor _ in range(600): time.sleep(0.1)"]
STUBBORN = [sys.executable, "-c",
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
            "for _ in range(600): time.sleep(0.1)"]


def test_started_command_is_the_previewed_one(tmp_path, monkeypatch):
    runner = Runner(tmp_path / "wd")
    out = tmp_path / "out"
    raw = {"model_name_or_path": "m", "output_dir": str(out)}
    preview = command("train", runner.run_folder(str(out.resolve())) / CONFIG_NAME)
    launched = []
    real_popen = subprocess.Popen

    def record(argv, **kwargs):
        launched.append(argv)
        return real_popen(SLEEPER, **kwargs)

    monkeypatch.setattr(runner_mod.subprocess, "Popen", record)
    run = runner.start("train", raw, str(out))
    try:
        assert run.cmd == preview
        assert launched == [launch_argv(preview)] == [[sys.executable, "-m", "lathe", "train", preview[2]]]
        assert yaml.safe_load((run.folder / CONFIG_NAME).read_text()) == raw
        assert not out.exists()  # the Board's own files stay out of output_dir
    finally:
        runner.stop(run, grace=2)


def test_one_run_per_output_dir_and_abort(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_mod, "launch_argv", lambda cmd: SLEEPER)
    runner = Runner(tmp_path / "wd")
    run = runner.start("train", {}, str(tmp_path / "out"))
    with pytest.raises(LatheError, match="Refused: a train run is still going"):
        runner.start("train", {}, str(tmp_path / "out"))
    other = runner.start("train", {}, str(tmp_path / "other"))  # another folder is fine
    t0 = time.time()
    runner.stop(run)
    assert run.returncode() == -signal.SIGTERM and run.aborted and time.time() - t0 < 5
    runner.stop_all()  # what the Board does when it stops
    assert other.returncode() is not None
    runner.start("train", {}, str(tmp_path / "out"))  # free again
    runner.stop_all()


def test_abort_kills_a_child_that_ignores_sigterm(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_mod, "launch_argv", lambda cmd: STUBBORN)
    runner = Runner(tmp_path / "wd")
    run = runner.start("train", {}, str(tmp_path / "out"))
    deadline = time.time() + 20
    while "ready" not in run.log_tail() and time.time() < deadline:
        time.sleep(0.1)
    runner.stop(run, grace=0.5)
    assert run.returncode() == -signal.SIGKILL


def test_a_run_of_another_process_in_the_folder_is_refused(tmp_path):
    other = subprocess.Popen(SLEEPER)
    try:
        runner = Runner(tmp_path / "wd")
        key = str((tmp_path / "out").resolve())
        lock = runner._lock_file(key)
        lock.parent.mkdir(parents=True)
        lock.write_text(json.dumps({"pid": other.pid, "target": key}))
        with pytest.raises(LatheError, match=f"pid {other.pid}"):
            runner.start("train", {}, key)
    finally:
        other.kill()
        other.wait()
    assert runner.busy(key) is None  # a dead pid's lock is stale


def test_paths_are_checked_before_anything_runs(tmp_path, tiny_llama):
    base = {"model_name_or_path": str(tiny_llama), "dataset": "lathe_identity", "dataset_dir": str(DATA),
            "output_dir": str(tmp_path / "out")}
    check_config(base)
    check_paths({**base, "model_name_or_path": "Qwen/Qwen2.5-0.5B"})  # a hub id is fine
    cases = {
        "model_name_or_path": (str(tmp_path / "nope"), "not an existing folder"),
        "adapter_name_or_path": (str(tmp_path / "nope"), "folder not found"),
        "dataset_dir": (str(tmp_path), "holds no dataset_info.json"),
        "resume_from_checkpoint": (str(tmp_path / "ckpt"), "folder not found"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(LatheError, match=f"`{key}`.*{message}"):
            check_config({**base, key: value})
    with pytest.raises(LatheError, match="model_name_or_path` is required"):
        check_config({k: v for k, v in base.items() if k != "model_name_or_path"})
    with pytest.raises(LatheError, match="dataset` is required"):
        check_config({k: v for k, v in base.items() if k != "dataset"})
    with pytest.raises(LatheError, match="learning_rate` must be a number"):
        check_config({**base, "learning_rate": "fast"})


def test_live_view_reads_the_trainer_log(tmp_path):
    records = [{"current_steps": i, "total_steps": 4, "loss": 2.0 / i, "percentage": 25.0 * i,
                "elapsed_time": "0:00:0%d" % i, "remaining_time": "0:00:01"} for i in (1, 2)]
    (tmp_path / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"current_')
    got = read_log(tmp_path)
    assert loss_points(got) == [(1, 2.0), (2, 1.0)]
    page = progress_html(got, "running")
    assert 'data-points="2"' in page and "2/4 steps" in page and "ETA 0:00:01" in page and "50%" in page
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert checkpoints(tmp_path) == [str(tmp_path / "checkpoint-10"), str(tmp_path / "checkpoint-2")]


def test_secrets_never_reach_the_page():
    assert redact("token hf_" + "a" * 30 + " key sk-" + "b" * 30) == "token [hidden] key [hidden]"


def test_locales_are_complete():
    # the model catalog the Board offers is checked in tests/test_catalog.py
    assert set(languages()) >= {"en", "zh"}
    for key, entry in _data()["ui"].items():
        assert set(languages()) <= set(entry), f"ui string {key} lacks a language"


@pytest.mark.slow
def test_abort_keeps_the_last_checkpoint_and_a_new_run_resumes(tmp_path, sft_config):
    """A real `lathe train` child: abort after its first checkpoint, then resume from it."""
    import yaml as _yaml

    raw = _yaml.safe_load(sft_config(max_steps=400, save_strategy="steps", save_steps=2,
                                     overwrite_output_dir=False).read_text())
    runner = Runner(tmp_path / "wd")
    run = runner.start("train", raw, raw["output_dir"])
    deadline = time.time() + 240
    while not checkpoints(raw["output_dir"]) and time.time() < deadline and run.running():
        time.sleep(0.5)
    assert checkpoints(raw["output_dir"]), run.log_tail()
    runner.stop(run)
    assert run.returncode() is not None and run.aborted
    kept = checkpoints(raw["output_dir"])
    assert kept
    run = runner.start("train", {**raw, "max_steps": int(kept[0].rsplit("-", 1)[1]) + 2}, raw["output_dir"])
    run.process.wait(timeout=240)
    assert run.returncode() == 0, run.log_tail()
    assert "Resuming from" in run.log_path.read_text()
