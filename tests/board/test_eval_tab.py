"""Evaluate & Predict: its jobs (predict, eval loss, benchmark, export) show progress from the child's
progress.jsonl, end in finished / failed / aborted, and can be aborted; the progress record itself."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from types import SimpleNamespace

import pytest

from lathe.board import runner as runner_mod
from lathe.board.jobs import job_progress, read_progress
from lathe.train.callbacks import PROGRESS_FILE, JsonlLogCallback, ProgressLog
from tests.conftest import DATA, ROOT

SLEEPER = [sys.executable, "-c", "import time\nfor _ in range(600): time.sleep(0.1)"]
STATE = re.compile(r'data-state="(\w+)"')


def _records(folder):
    return [json.loads(line) for line in (folder / PROGRESS_FILE).read_text().splitlines()]


def test_progress_log_counts_batches_and_throttles(tmp_path):
    log = ProgressLog(tmp_path, "benchmark", total=4, every_seconds=0).start()
    for _ in range(4):
        log.advance()
    log.finish()
    got = _records(tmp_path)
    assert [r["current_steps"] for r in got] == [0, 1, 2, 3, 4, 4]
    assert [r["percentage"] for r in got] == [0, 25, 50, 75, 100, 100]
    assert got[-1]["finished"] and "remaining_time" in got[2] and {r["phase"] for r in got} == {"benchmark"}

    slow = ProgressLog(tmp_path, "predict", total=50, every_seconds=3600).start()  # a new pass: the file anew
    for _ in range(50):
        slow.advance()
    assert [r["current_steps"] for r in _records(tmp_path)] == [0, 1, 50]  # first and last batch, nothing between

    endless = ProgressLog(tmp_path, None, total=None).start()  # a loader without length
    endless.advance(3)
    endless.finish()
    last = _records(tmp_path)[-1]
    assert last["percentage"] == 100 and last["total_steps"] == 3 and "phase" not in last


def test_trainer_evaluate_and_predict_write_progress(tmp_path, tiny_llama):
    """JsonlLogCallback counts Trainer.predict / evaluate batches (on_prediction_step has no step number)."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    rows = [{"input_ids": [5 + i, 6, 7, 8], "attention_mask": [1] * 4, "labels": [5 + i, 6, 7, 8]} for i in range(7)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to="none",
                             use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(tiny_llama), args=args,
                      data_collator=default_data_collator, callbacks=[JsonlLogCallback(progress_seconds=0)])
    trainer.predict(rows)
    got = _records(tmp_path)
    steps = [r["current_steps"] for r in got]
    assert steps == sorted(steps) and steps[:2] == [0, 1] and steps[-1] == 4  # 7 rows in batches of 2
    assert got[-1] == {**got[-1], "phase": "predict", "percentage": 100.0, "total_steps": 4, "finished": True}
    assert all(r["total_steps"] == 4 for r in got)
    trainer.evaluate(rows[:2])
    assert _records(tmp_path)[-1]["phase"] == "eval" and _records(tmp_path)[0]["current_steps"] == 0


def test_several_eval_datasets_are_counted_as_one_pass(tmp_path, tiny_llama):
    """eval_on_each_dataset: the Trainer evaluates the datasets one after another; the file is begun once and
    the steps go on (the bar never restarts from 0), each dataset's closing record naming it."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    rows = [{"input_ids": [5 + i, 6, 7, 8], "attention_mask": [1] * 4, "labels": [5 + i, 6, 7, 8]} for i in range(7)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to="none",
                             use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(tiny_llama), args=args,
                      data_collator=default_data_collator, callbacks=[JsonlLogCallback(progress_seconds=0)])
    metrics = trainer.evaluate({"first": rows[:4], "second": rows[4:]})  # 2 batches, then 2 (3 rows)
    assert "eval_first_loss" in metrics and "eval_second_loss" in metrics
    got = _records(tmp_path)
    steps = [r["current_steps"] for r in got]
    assert steps == sorted(steps) and steps.count(0) == 1 and steps[-1] == 4
    assert [(r["dataset"], r["current_steps"], r["total_steps"]) for r in got if "dataset" in r] == [
        ("first", 2, 2), ("second", 4, 4)]
    assert got[-1] == {**got[-1], "phase": "eval", "percentage": 100.0, "finished": True}


def test_a_pass_that_raised_is_not_counted_on(tmp_path, monkeypatch):
    callback = JsonlLogCallback(progress_seconds=0)
    args, state = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(is_world_process_zero=True)
    callback.on_prediction_step(args, state, None, eval_dataloader=[1, 2, 3, 4])  # raised after its first batch
    again = [1, 2]  # the Trainer builds a new loader for each pass
    for _ in again:
        callback.on_prediction_step(args, state, None, eval_dataloader=again)
    callback.on_evaluate(args, state, None, metrics={"eval_loss": 1.0, "eval_runtime": 0.1})
    got = _records(tmp_path)
    assert got[0]["current_steps"] == 0 and [(r["current_steps"], r["total_steps"]) for r in got[-2:]] == [(2, 2)] * 2

    callback.on_prediction_step(args, state, None, eval_dataloader=again)  # raised; then training begins
    callback.on_train_begin(args, SimpleNamespace(is_world_process_zero=True, global_step=0,
                                                  num_input_tokens_seen=0), None)
    assert callback.progress is None

    def broken(self, *a):
        raise OSError("disk full")

    callback.training = False
    callback.on_prediction_step(args, state, None, eval_dataloader=[1])
    monkeypatch.setattr(ProgressLog, "finish", broken)
    with pytest.raises(OSError):
        callback.on_evaluate(args, state, None, metrics={})
    assert callback.progress is None  # a closing write that raised leaves nothing open


def test_a_job_bar_is_whole_when_finished_and_reads_only_this_runs_file(tmp_path):
    assert STATE.search(job_progress([], "finished", "export", "en")).group(1) == "finished"
    page = job_progress([], "finished", "export", "en")
    assert 'id="export-progress-bar"' in page and "width:100.0%" in page and "lathe-progress" not in page
    (tmp_path / PROGRESS_FILE).write_text('{"current_steps": 2, "total_steps": 8, "percentage": 25.0}\n{"curr')
    assert read_progress(tmp_path) == [{"current_steps": 2, "total_steps": 8, "percentage": 25.0}]
    assert read_progress(tmp_path, since=time.time() + 60) == []  # an earlier run's file
    assert "width:25.0%" in job_progress(read_progress(tmp_path), "aborted", "predict", "en")


# ---------------------------------------------------------------- the Board's handlers


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    from lathe.board.app import create_board

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("board"))  # the save root, `saves`, is relative to where the Board runs
        app = create_board("wd")
        yield app
        app.lathe_runner.stop_all()


def _fn(app, name: str):
    found = [f for f in app.fns.values() if f.name == name]
    assert len(found) == 1, f"{len(found)} handlers named {name}"
    return found[0]


def _values(app, name: str, **by_elem) -> list:
    """The handler's inputs as the page holds them, some replaced (by elem_id), then the language."""
    out = []
    for comp in _fn(app, name).inputs[:-1]:
        elem = getattr(comp, "elem_id", None)
        out.append(by_elem.pop(elem) if elem in by_elem else comp.value)
    assert not by_elem, f"no inputs {list(by_elem)}"
    return [*out, "en"]


def _wait(app, elem: str, key: str, limit: float = 120.0):
    tick = _fn(app, f"tick_{elem}").fn
    deadline = time.time() + limit
    while time.time() < deadline:
        message, bar, log, metrics, _timer = tick(key, "en")
        state = STATE.search(bar).group(1)
        if state != "running":
            return state, bar, metrics, message, log
        time.sleep(0.3)
    raise AssertionError(f"{elem} still running after {limit} s")


def _top(tiny_llama) -> dict:
    return {"f-model_name_or_path": str(tiny_llama), "f-template": "chatml", "f-dataset_dir": str(DATA)}


def test_predict_and_eval_loss_jobs_reach_finished_at_100_percent(board, tmp_path, tiny_llama):
    predict = _fn(board, "start_predict").fn(*_values(
        board, "start_predict", **_top(tiny_llama), **{
            "f-predict-eval_dataset": ["lathe_identity"], "f-predict-max_samples": "6",
            "f-predict-per_device_eval_batch_size": "2", "f-predict-max_new_tokens": "3", "f-predict-seed": "7",
            "f-predict-output_dir": str(tmp_path / "predict")}))
    loss = _fn(board, "start_loss").fn(*_values(
        board, "start_loss", **_top(tiny_llama), **{
            "f-loss-eval_dataset": ["lathe_identity"], "f-loss-max_samples": "6",
            "f-loss-per_device_eval_batch_size": "2", "f-loss-output_dir": str(tmp_path / "loss")}))
    for started in (predict, loss):  # (status, key, timer, progress, results)
        assert started[1] and STATE.search(started[3]).group(1) == "running", started[0]

    state, bar, metrics, _, log = _wait(board, "predict", predict[1])
    assert state == "finished" and "width:100.0%" in bar, log
    assert "predict_bleu-4" in metrics
    assert "seed: 7" in (tmp_path / "predict" / "lathe_config.yaml").read_text()  # LLaMA Board's eval seed
    assert _records(tmp_path / "predict")[-1] == {  # generation's own loop counts its batches too
        **_records(tmp_path / "predict")[-1], "phase": "predict", "current_steps": 3, "total_steps": 3}

    state, bar, metrics, _, log = _wait(board, "loss", loss[1])
    assert state == "finished" and "width:100.0%" in bar and "3/3" in bar, log  # 6 rows, batches of 2: counted
    assert math.isclose(metrics["eval_perplexity"], math.exp(metrics["eval_loss"]))
    assert _records(tmp_path / "loss")[-1]["phase"] == "eval"


def test_abort_of_a_running_job_ends_aborted(board, tmp_path, tiny_llama, monkeypatch):
    monkeypatch.setattr(runner_mod, "launch_argv", lambda cmd: SLEEPER)
    abort = _fn(board, "abort_loss").fn
    assert isinstance(abort(None, "en"), str)  # nothing to abort: a message, no error
    started = _fn(board, "start_loss").fn(*_values(
        board, "start_loss", **_top(tiny_llama), **{"f-loss-eval_dataset": ["lathe_identity"],
                                                    "f-loss-output_dir": str(tmp_path / "sleep")}))
    key = started[1]
    assert key and board.lathe_runner.get(key).running()
    abort(key, "en")
    state, _bar, metrics, message, _ = _wait(board, "loss", key, limit=20)
    assert state == "aborted" and metrics is None and key in message
    assert board.lathe_runner.get(key).aborted


def test_every_job_runs_with_the_hub_menus_variables(board, tmp_path, tiny_llama, monkeypatch):
    """Predict, eval loss, the benchmark and export fetch the top bar's model from the hub the menu picks, as a
    training run does; the status shows the command with its variables."""
    from lathe.board.runner import shell_line

    monkeypatch.delenv("USE_MODELSCOPE_HUB", raising=False)
    monkeypatch.delenv("USE_OPENMIND_HUB", raising=False)
    started = []

    def fake_start(kind, raw, target, extra_args=(), env=None):
        started.append((kind, env))
        return SimpleNamespace(key=str(target), line=shell_line(["lathe", kind, "config.yaml"], env))

    monkeypatch.setattr(board.lathe_runner, "start", fake_start)
    forms = {
        "predict": {"f-predict-eval_dataset": ["lathe_identity"], "f-predict-output_dir": str(tmp_path / "p")},
        "loss": {"f-loss-eval_dataset": ["lathe_identity"], "f-loss-output_dir": str(tmp_path / "l")},
        "eval": {"f-eval-task_dir": str(ROOT / "evaluation"), "f-eval-task": "lathe_sample_test",
                 "f-eval-save_dir": str(tmp_path / "e")},
        "export": {"f-export-export_dir": str(tmp_path / "x")},
    }
    for elem, form in forms.items():
        top = _top(tiny_llama)
        if elem in ("eval", "export"):  # no dataset folder: a benchmark has its task folder, export no data
            top.pop("f-dataset_dir")
        shown = _fn(board, f"preview_{elem}").fn(*_values(board, f"preview_{elem}", hub="modelscope", **top, **form))
        assert "```yaml" in shown and "USE_MODELSCOPE_HUB=1 lathe " in shown, shown  # LLaMA Board's Preview command
        status, key, *_ = _fn(board, f"start_{elem}").fn(*_values(
            board, f"start_{elem}", hub="modelscope", **top, **form))
        assert key and "USE_MODELSCOPE_HUB=1 lathe " in status, status
    assert [kind for kind, _ in started] == ["predict", "predict", "eval", "export"]  # previews started nothing
    assert [env for _, env in started] == [{"USE_MODELSCOPE_HUB": "1"}] * 4
