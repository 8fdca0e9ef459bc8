"""The Train tab's run gauges (board/watch.py): a process tree's memory from /proc, the GPU's from
nvidia-smi (faked here), the rewards and samples of a GRPO folder, and finding a run started from a shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import gradio as gr
import pytest
import yaml

from lathe.board import monitor, watch
from lathe.board.monitor import (
    completions_frame,
    last_record,
    latest_completions,
    log_is_live,
    read_jsonl,
    read_log,
    reward_frame,
    throughput_text,
)
from lathe.board.watch import (
    Recent,
    Watch,
    build_watch,
    find_run_pid,
    folder_is_live,
    gauge_html,
    gpu_memory,
    lathe_train_args,
    process_tree,
    rss_of,
    train_output_dir,
)
from lathe.sysmem import cgroup_limit, machine_memory, process_rss

HOLD = "import time; x = bytearray(50_000_000); time.sleep(8)"
MB = 1_000_000


def _wait_for(check, timeout: float = 6.0):
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    return check()


@pytest.fixture(autouse=True)
def fresh_scans(monkeypatch):
    """Each test sees /proc and nvidia-smi as they are now, not a scan another test left for a few seconds."""
    monkeypatch.setattr(watch, "RECENT", Recent(0.0))


@pytest.fixture
def spawn():
    started: list[subprocess.Popen] = []

    def start(argv, **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(argv, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_process_trees_memory_counts_its_children_and_grandchildren(spawn):
    child = spawn([sys.executable, "-c", HOLD])
    parent = spawn([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {HOLD!r}])"])
    assert _wait_for(lambda: rss_of(process_tree(child.pid)) >= 50 * MB)
    assert _wait_for(lambda: len(process_tree(parent.pid)) == 2)  # the parent and the process it started
    assert _wait_for(lambda: rss_of(process_tree(parent.pid)) >= 50 * MB)
    grandchild = [p for p in process_tree(parent.pid) if p != parent.pid]
    assert rss_of(process_tree(parent.pid)) > rss_of(grandchild) >= 50 * MB
    assert watch.process_start(parent.pid) <= watch.process_start(grandchild[0])
    child.kill()
    child.wait()
    assert process_tree(child.pid) == [] and rss_of(process_tree(child.pid)) == 0 == process_rss(child.pid)
    assert watch.process_start(child.pid) is None


def test_the_ram_total_is_the_machine_or_its_cgroup(tmp_path):
    total = machine_memory()
    assert total is None or total > 100 * MB
    (tmp_path / "meminfo").write_text("MemTotal:       16384 kB\nMemAvailable:    8192 kB\n")
    assert machine_memory(tmp_path / "meminfo") == min(16384 * 1024, cgroup_limit() or 1 << 62)

    proc, root = tmp_path / "cgroup", tmp_path / "fs"  # v2: the tightest limit of the cgroup and its parents
    proc.write_text("0::/a/b\n")
    for folder, limit in (("", "max"), ("a", str(2 * 2**30)), ("a/b", str(3 * 2**30))):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "memory.max").write_text(limit + "\n")
    assert cgroup_limit(proc, root) == 2 * 2**30
    proc.write_text("4:memory:/job\n")  # v1, "no limit" written as a number near 2**63
    (root / "memory/job").mkdir(parents=True)
    (root / "memory/job/memory.limit_in_bytes").write_text(str(2**63 - 4096))
    assert cgroup_limit(proc, root) is None and cgroup_limit(tmp_path / "absent", root) is None


def test_scans_and_nvidia_smi_answers_are_shared_for_a_few_seconds(monkeypatch):
    """Every open page's timer asks once a second: one answer serves them all, each key on its own."""
    recent = Recent(60.0)
    calls = []
    assert recent.get("a", lambda: calls.append("a") or 1) == 1 == recent.get("a", lambda: calls.append("a") or 2)
    assert recent.get("b", lambda: calls.append("b") or 3) == 3 and calls == ["a", "b"]
    recent.ttl = 0.0
    assert recent.get("a", lambda: 4) == 4

    monkeypatch.setattr(watch, "RECENT", Recent(60.0))
    ran = []
    monkeypatch.setattr(watch, "_run_nvidia_smi", lambda args: ran.append(args) or "0, GPU-a, 1\n")
    assert watch.nvidia_smi(["-L"]) == watch.nvidia_smi(["-L"]) and ran == [("-L",)]
    scans = []
    monkeypatch.setattr(watch, "_scan_children", lambda proc: scans.append(proc) or {})
    monkeypatch.setattr(watch, "_scan_train_runs", lambda proc: scans.append(proc) or {})
    for _ in range(3):
        process_tree(os.getpid())
        assert find_run_pid("/nowhere") is None
    assert len(scans) == 2  # one /proc scan of each kind, however many pages and folders ask

    slow = Recent(60.0)  # a thread asking while another computes waits for that value
    started, answers = [], []

    def compute():
        started.append(1)
        time.sleep(0.2)
        return len(started)

    threads = [threading.Thread(target=lambda: answers.append(slow.get("k", compute))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [1, 1, 1, 1]


def test_gpu_memory_from_nvidia_smi_and_none_without_it(monkeypatch):
    apps = "101, GPU-a, 2048\n102, GPU-b, 1024\n999, GPU-a, 5000\n"
    gpus = "GPU-a, 81559\nGPU-b, 81559\nGPU-c, 81559\n"

    asked = []

    def query(args):
        asked.append(args[0])
        return apps if args[0].startswith("--query-compute-apps") else gpus

    monkeypatch.setattr(watch, "_GPU_TOTALS", {})

    assert gpu_memory([101, 102, 103], query) == (3072 * 2**20, 2 * 81559 * 2**20)  # two GPUs, not the third
    assert gpu_memory([101], query) == (2048 * 2**20, 81559 * 2**20)
    assert asked.count("--query-gpu=uuid,memory.total") == 1  # the sizes are asked once
    assert gpu_memory([5], query) is None  # a run holding no GPU memory (yet, or a CPU run)
    assert gpu_memory([101], lambda args: None) is None  # nvidia-smi failed
    monkeypatch.setattr(watch.shutil, "which", lambda name: None)
    assert watch.nvidia_smi(["-L"]) is None and gpu_memory([os.getpid()]) is None  # no nvidia-smi: no error


def test_the_gauge_keeps_its_numbers_as_data():
    page = gauge_html(3 * 2**30, 12 * 2**30, "GPU", "en", "gpu", peak=4 * 2**30)
    assert f'data-used="{3 * 2**30}"' in page and f'data-total="{12 * 2**30}"' in page
    assert f'data-peak="{4 * 2**30}"' in page and 'data-source="gpu"' in page and "width:25.0%" in page
    idle = gauge_html(None, None, "memory", "en")
    assert 'data-used=""' in idle and 'data-source="none"' in idle and "width:0.0%" in idle
    assert "&lt;b&gt;" in gauge_html(1, 2, "<b>", "en")  # the label is escaped
    assert "width:100.0%" in gauge_html(5, 4, "x", "en")  # over the limit (shared pages): the bar stops at full


def _grpo_folder(folder: Path, steps: int = 3, half_line: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records, samples = [], []
    for step in range(1, steps + 1):
        records.append({"current_steps": step, "total_steps": 10, "loss": 0.1, "reward": step / 10,
                        "reward_std": 0.01, "rewards/accuracy/mean": step / 20, "rewards/accuracy/std": 0.0,
                        "rewards/rw.py:digits/mean": step / 5, "percentage": step * 10.0, "completion_length": 8})
        samples += [{"step": step, "prompt": "p" * 1000, "completion": f"c{step}-{i}", "reward": i / 4,
                     "accuracy": 1.0, "rw.py:digits": 0.5} for i in range(4)]
    (folder / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = "".join(json.dumps(s) + "\n" for s in samples)
    (folder / "completions.jsonl").write_text(text + ('{"step": 4, "prompt": "cut sho' if half_line else ""))
    return folder


def test_rewards_and_the_latest_samples_of_a_grpo_folder(tmp_path):
    folder = _grpo_folder(tmp_path / "run")
    frame = reward_frame(json.loads(line) for line in (folder / "trainer_log.jsonl").read_text().splitlines())
    assert list(frame.columns) == ["step", "reward", "series"] and len(frame) == 9
    assert set(frame["series"]) == {"reward", "accuracy", "rw.py:digits"}
    assert frame[(frame.step == 3) & (frame.series == "rw.py:digits")]["reward"].item() == pytest.approx(0.6)
    assert reward_frame([{"current_steps": 1, "loss": 1.0}]).empty  # an SFT log: no rewards

    rows = latest_completions(folder)  # the half-written step-4 line is skipped
    assert [r["completion"] for r in rows] == [f"c3-{i}" for i in range(4)]
    assert len(latest_completions(folder, n=2)) == 2 and latest_completions(tmp_path / "none") == []
    table = completions_frame(rows)
    assert list(table.columns) == ["step", "reward", "accuracy", "rw.py:digits", "prompt", "completion"]
    assert len(table["prompt"][0]) == monitor.PROMPT_CHARS + 1  # the prompt's end, after an ellipsis

    # a file larger than one read: the last step is still found whole
    big = tmp_path / "big"
    big.mkdir()
    lines = [json.dumps({"step": s, "prompt": "q" * 30_000, "completion": str(i), "reward": 0.0})
             for s in (1, 2) for i in range(4)]
    (big / "completions.jsonl").write_text("\n".join(lines) + "\n")
    assert [(r["step"], r["completion"]) for r in latest_completions(big)] == [(2, str(i)) for i in range(4)]
    (big / "completions.jsonl").write_text("\n".join(lines[4:]) + "\n")  # the file is one step only
    assert len(latest_completions(big)) == 4


def test_throughput_is_the_newest_logged():
    assert throughput_text([]) == "—" and throughput_text([{"throughput": None}]) == "—"
    assert throughput_text([{"throughput": 10.0}, {"throughput": 1234.56}, {"loss": 1}]) == "1,234.6"


def test_a_log_is_live_while_written_and_short_of_the_end(tmp_path):
    folder = tmp_path / "run"
    assert not log_is_live(folder)
    folder.mkdir()
    log = folder / "trainer_log.jsonl"
    log.write_text(json.dumps({"current_steps": 3, "total_steps": 10, "percentage": 30.0}) + "\n")
    assert log_is_live(folder)
    old = time.time() - 120
    os.utime(log, (old, old))
    assert not log_is_live(folder) and log_is_live(folder, within_s=600)
    log.write_text(json.dumps({"current_steps": 10, "total_steps": 10, "percentage": 100.0}) + "\n")
    assert not log_is_live(folder)  # finished
    # only the end is read: a long log whose last whole record is short of the end, a half line after it
    lines = [json.dumps({"current_steps": i, "percentage": i / 10, "pad": "x" * 500}) for i in range(1, 400)]
    log.write_text("\n".join(lines) + "\n" + '{"current_steps": 400, "perc')
    assert log_is_live(folder) and last_record(log)["current_steps"] == 399
    assert last_record(log, chunk=64)["current_steps"] == 399  # a read shorter than one line grows until it holds one
    log.write_text('{"cut')
    assert last_record(log) is None and not log_is_live(folder) and last_record(tmp_path / "absent") is None


def test_jsonl_records_skip_a_half_written_line_and_an_earlier_runs_file(tmp_path):
    path = tmp_path / "progress.jsonl"
    assert read_jsonl(path) == []
    path.write_text('{"a": 1}\n[1, 2]\nnot json\n{"a": 2}\n{"a": 3, "b"')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]  # a line that is no object is skipped too
    assert read_jsonl(path, since=time.time() - 60) == [{"a": 1}, {"a": 2}]
    old = time.time() - 120
    os.utime(path, (old, old))
    assert read_jsonl(path, since=time.time() - 60) == []  # last written before this run began: not its records
    (tmp_path / "trainer_log.jsonl").write_bytes(b'{"loss": 1.0}\n\xff\xfe\n')
    assert read_log(tmp_path) == [{"loss": 1.0}]  # undecodable bytes are a skipped line, not an error


def test_a_lathe_train_command_names_its_output_dir(tmp_path):
    assert lathe_train_args(["/venv/bin/lathe", "train", "a.yaml"]) == ["a.yaml"]
    assert lathe_train_args(["python", "-m", "lathe", "train", "a.yaml", "x=1"]) == ["a.yaml", "x=1"]
    assert lathe_train_args(["python", "-m", "lathe", "chat", "a.yaml"]) is None
    assert lathe_train_args(["python", "train.py", "lathe"]) is None
    # cli.main takes its global --debug out wherever it stands
    assert lathe_train_args(["/venv/bin/lathe", "--debug", "train", "a.yaml"]) == ["a.yaml"]
    assert lathe_train_args(["lathe", "train", "a.yaml", "--debug", "x=1"]) == ["a.yaml", "x=1"]
    assert lathe_train_args(["lathe", "--debug", "chat", "a.yaml"]) is None
    launcher = ["python", "-m", "lathe.distributed.torchrun", "--nproc_per_node", "2", "-m", "lathe", "train", "a.yaml"]
    assert lathe_train_args(launcher) == ["a.yaml"]
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"output_dir": "saves/x", "stage": "sft"}))
    assert train_output_dir(["a.yaml"], tmp_path) == (tmp_path / "saves/x").resolve()
    assert train_output_dir(["a.yaml", "output_dir=/elsewhere"], tmp_path) == Path("/elsewhere")
    assert train_output_dir(["output_dir=rel"], tmp_path) == (tmp_path / "rel").resolve()
    assert train_output_dir(["a.yaml", "output_dir='quoted dir'"], tmp_path) == (tmp_path / "quoted dir").resolve()
    assert train_output_dir(["a.yaml", "output_dir=2024"], tmp_path) == (tmp_path / "2024").resolve()  # YAML: an int
    (tmp_path / "b.json").write_text(json.dumps({"output_dir": "saves/j"}))
    assert train_output_dir(["b.json"], tmp_path) == (tmp_path / "saves/j").resolve()
    (tmp_path / "list.yaml").write_text("- 1\n")
    for args in (["missing.yaml"], ["list.yaml"], ["a.yaml", "--bogus"], ["a.yaml", "output_dir="]):
        assert train_output_dir(args, tmp_path) is None  # a run that stops at its config writes nowhere


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="reads /proc")
def test_a_run_started_from_a_shell_is_found_by_its_folder(tmp_path, spawn):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"output_dir": "saves/shell_run"}))
    # stands in for `lathe train run.yaml` run from tmp_path (its command line reads the same), and,
    # like torchrun's launcher, starts a worker with that command line too: the outermost one is the run
    worker = "import time; time.sleep(8)"
    launcher = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {worker!r}, *sys.argv[1:]])"
    process = spawn([sys.executable, "-c", launcher, "lathe", "train", "run.yaml"], cwd=tmp_path)
    assert _wait_for(lambda: len(process_tree(process.pid)) == 2)
    assert find_run_pid(tmp_path / "saves/shell_run") == process.pid
    assert find_run_pid(tmp_path / "saves/other") is None
    assert folder_is_live(tmp_path / "saves/shell_run") and not folder_is_live(tmp_path / "saves/other")
    assert not folder_is_live(None) and not folder_is_live("")


@pytest.fixture
def watch_page(tmp_path):
    import gradio as gr

    from lathe.board.chat import ChatSession
    from lathe.board.context import BoardContext
    from lathe.board.runner import Runner
    from lathe.board.widgets import Widgets

    ctx = BoardContext(Runner(tmp_path / "wd"), ChatSession(), Widgets("en"))
    with gr.Blocks() as page:
        gauges = build_watch(ctx)
    return page, gauges, ctx


def test_the_watch_shows_a_grpo_folder_and_hides_rewards_otherwise(watch_page, tmp_path):
    page, gauges, ctx = watch_page
    assert isinstance(gauges, Watch) and len(gauges.outputs) == 4
    ids = {getattr(c, "elem_id", None) for c in page.blocks.values()}
    assert {"watch-memory", "watch-throughput", "reward-plot", "grpo-completions"} <= ids
    labelled = {key for _, _, key in ctx.w.labels}
    assert {"watch_throughput", "watch_rewards", "watch_samples"} <= labelled

    folder = _grpo_folder(tmp_path / "saves" / "grpo_run")
    (folder / "lathe_config.yaml").write_text(yaml.safe_dump({"stage": "grpo", "output_dir": str(folder)}))
    memory, tokens, rewards, samples = gauges.update(None, str(folder), "sft", "en")
    assert 'data-source="device-ram"' in memory and tokens == "—"  # no process writes it: the device as a whole
    assert rewards["visible"] and len(rewards["value"]) == 9  # the run's own config says grpo
    assert samples["visible"] and len(samples["value"]) == 4

    plain = tmp_path / "saves" / "sft_run"
    plain.mkdir()
    (plain / "trainer_log.jsonl").write_text(json.dumps({"current_steps": 1, "throughput": 42.0}) + "\n")
    memory, tokens, rewards, samples = gauges.update(None, str(plain), "sft", "en")
    assert tokens == "42.0" and rewards == {"__type__": "update", "visible": False} and not samples["visible"]
    assert len(gauges.update(None, None, None, "en")) == 4
    assert [watch.scores_samples(s) for s in ("grpo", "rloo", "ppo", "sft", "nonsense", None)] == [True, True] + [False] * 4


def test_the_watch_measures_a_board_run(watch_page, tmp_path, spawn):
    from lathe.board.runner import Run

    _, gauges, _ = watch_page
    process = spawn([sys.executable, "-c", HOLD])
    folder = tmp_path / "out"
    folder.mkdir()
    board_files = tmp_path / "board_run"
    board_files.mkdir()
    (board_files / "config.yaml").write_text(yaml.safe_dump({"stage": "rloo"}))
    run = Run("train", str(folder), board_files, ["lathe", "train"], process)

    def measured():
        html = gauges.update(run, None, None, "en")[0]
        used = int(html.split('data-used="')[1].split('"')[0] or 0)
        return html if used >= 50 * MB else None

    html = _wait_for(measured)
    assert html and ('data-source="ram"' in html or 'data-source="gpu"' in html)
    assert gauges.update(run, None, None, "en")[2]["visible"]  # rloo: the reward plot shows
    process.kill()
    process.wait()
    idle = gauges.update(run, None, None, "en")[0]  # the run is over: the device as a whole, the run's peak kept
    assert 'data-source="device-' in idle and int(idle.split('data-peak="')[1].split('"')[0]) >= 50 * MB


def test_the_peak_is_one_runs_and_one_sources(watch_page, monkeypatch):
    """A new run in the same folder starts its peak afresh; a tick where nvidia-smi fails shows RAM, and
    that RAM is not taken for the GPU's peak."""
    _, gauges, _ = watch_page
    now = {"start": 100, "gpu": (5 * 2**30, 80 * 2**30), "ram": 2**30}
    monkeypatch.setattr(watch, "process_start", lambda pid: now["start"])
    monkeypatch.setattr(watch, "process_tree", lambda pid: [pid])
    monkeypatch.setattr(watch, "gpu_memory", lambda pids: now["gpu"])
    monkeypatch.setattr(watch, "rss_of", lambda pids: now["ram"])
    monkeypatch.setattr(watch, "machine_memory", lambda: 64 * 2**30)

    def shown(pid):
        page = gauges.memory_html(pid, "/runs/a", "en")
        return [page.split(f'data-{k}="')[1].split('"')[0] for k in ("used", "peak", "source")]

    assert shown(7) == [str(5 * 2**30), str(5 * 2**30), "gpu"]
    now["gpu"] = None  # nvidia-smi failed this tick
    assert shown(7) == [str(2**30), str(2**30), "ram"]
    now["gpu"] = (3 * 2**30, 80 * 2**30)
    assert shown(7) == [str(3 * 2**30), str(5 * 2**30), "gpu"]  # the GPU's own peak, RAM bytes not in it
    monkeypatch.setattr(watch, "device_memory", lambda: (7 * 2**30, 80 * 2**30, "device-gpu"))
    assert shown(None) == [str(7 * 2**30), str(5 * 2**30), "device-gpu"]  # over: the device, the last run's GPU peak
    monkeypatch.setattr(watch, "device_memory", lambda: None)
    assert shown(None) == ["", str(5 * 2**30), "none"]  # nothing to measure the device with
    now["start"] = 200  # the kernel gave pid 7 to the next run in this folder
    assert shown(7) == [str(3 * 2**30), str(3 * 2**30), "gpu"]
    assert shown(8) == [str(3 * 2**30), str(3 * 2**30), "gpu"]  # another run: afresh
    assert gauges.last_peak("/runs/other") is None


def test_the_watch_reads_the_records_it_is_given(watch_page, tmp_path, monkeypatch):
    """The Train tab has read trainer_log.jsonl this tick already: the watch uses those records."""
    _, gauges, _ = watch_page
    folder = _grpo_folder(tmp_path / "given")
    (folder / "lathe_config.yaml").write_text(yaml.safe_dump({"stage": "grpo"}))
    monkeypatch.setattr(watch, "read_log", lambda folder: pytest.fail("read again"))
    records = [{"current_steps": 1, "reward": 0.5, "throughput": 7.0}]
    _, tokens, rewards, _ = gauges.update(None, str(folder), None, "en", records=records)
    assert tokens == "7.0" and len(rewards["value"]) == 1


def test_the_file_names_match_the_trainers():
    from lathe.train.base import CONFIG_FILE
    from lathe.train.grpo import COMPLETIONS_FILE

    assert (monitor.COMPLETIONS_FILE, watch.CONFIG_FILE) == (COMPLETIONS_FILE, CONFIG_FILE)


def test_a_real_grpo_run_feeds_the_watch(watch_page, tmp_path, tiny_llama):
    """Two steps of `stage: grpo` on the tiny model: the gauges read what the trainer really writes."""
    from lathe.config import load_config
    from lathe.train import run_stage
    from tests.conftest import DATA

    (tmp_path / "rw.py").write_text("def short(prompts, completions, **columns):\n"
                                    "    return [1.0 / (1 + len(c)) for c in completions]\n")
    config = {
        "model_name_or_path": str(tiny_llama), "stage": "grpo", "do_train": True, "finetuning_type": "full",
        "dataset": "lathe_identity", "dataset_dir": str(DATA), "template": "chatml", "cutoff_len": 64,
        "output_dir": str(tmp_path / "out"), "overwrite_output_dir": True, "per_device_train_batch_size": 4,
        "max_steps": 2, "logging_steps": 1, "report_to": "none", "disable_tqdm": True, "num_generations": 2,
        "max_completion_length": 4, "reward_funcs": "rw.py:short", "max_samples": 8,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run_stage(load_config(tmp_path / "c.yaml"))
    _, gauges, _ = watch_page
    memory, tokens, rewards, samples = gauges.update(None, str(tmp_path / "out"), None, "en")
    assert rewards["visible"] and set(rewards["value"]["series"]) == {"reward", "rw.py:short"}
    assert list(rewards["value"]["step"].unique()) == [1, 2]
    table = samples["value"]
    assert len(table) == 4 and set(table["step"]) == {2} and "rw.py:short" in table.columns
    assert 'data-source="device-ram"' in memory  # the run is over: no process, the device as a whole
    assert float(tokens.replace(",", "")) > 0  # grpo logs `throughput`: prompt + completion tokens sampled per second


def test_the_train_tab_follows_a_run_written_from_a_shell(tmp_path, monkeypatch):
    """The Board did not start it: the folder picked is read all the same, its rewards and samples shown."""
    from lathe.board.app import create_board

    monkeypatch.chdir(tmp_path)
    board = create_board(tmp_path / "wd")
    fns = {f.name: f for f in board.fns.values() if f.name in ("on_tick", "on_follow")}
    folder = _grpo_folder(tmp_path / "shell_run")
    progress, _loss, _log, timer, _status, _resume, memory, _speed, rewards, samples = fns["on_tick"].fn(
        None, str(folder), "grpo", "en")
    assert 'data-state="running"' in progress and 'data-points="3"' in progress
    assert timer.active and rewards["visible"] and samples["visible"] and len(samples["value"]) == 4
    assert 'data-source="device-ram"' in memory  # no process of this user names the folder: the device shown
    assert isinstance(fns["on_follow"].fn(str(folder), None), gr.Timer)  # a live log wakes the live view
    for name in ("trainer_log.jsonl", "completions.jsonl"):
        old = time.time() - 120
        os.utime(folder / name, (old, old))
    assert isinstance(fns["on_follow"].fn(str(folder), None), type(gr.skip()))
    progress, *_rest = fns["on_tick"].fn(None, str(folder), "grpo", "en")
    assert 'data-state="idle"' in progress  # stopped short of its end, nothing writes it any more


def test_with_no_run_the_gauge_shows_the_device_as_llama_boards_footer_does():
    from lathe.board.watch import device_memory
    from lathe.sysmem import available_memory, machine_memory

    gpus = "1000, 80000\n3000, 80000\n"
    assert device_memory(lambda args: gpus) == (4000 * watch.MiB, 160000 * watch.MiB, "device-gpu")
    used, total, source = device_memory(lambda args: None)  # no nvidia-smi: the machine's RAM in use
    assert source == "device-ram" and total == machine_memory() and 0 < used <= total
    assert abs((total - used) - available_memory()) < 256 * watch.MiB
