"""The Compare tab: past runs of any model and method, their curves overlaid and the options they differ in,
read from what each run wrote (trainer_log.jsonl, lathe_config.yaml), so shell runs compare like Board runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gradio as gr
import pytest
import yaml

from lathe.board import compare_tab
from lathe.board.compare_tab import curves, find_runs, metric_names, option_table, run_labels, run_options, summary
from lathe.board.runner import CONFIG_NAME, Runner

BASE = {"model_name_or_path": "org/tiny", "stage": "sft", "finetuning_type": "lora", "lora_rank": 8,
        "dataset": ["alpaca_en_demo"], "cutoff_len": 256}


def _run(root: Path, model: str, method: str, name: str, losses: list[float], config: dict | None = None,
         age: int = 0, **fields: list[float]) -> str:
    """A finished run as `lathe train` leaves it: a log line per step and the resolved config."""
    folder = root / model / method / name
    folder.mkdir(parents=True)
    lines = []
    for i, loss in enumerate(losses):
        record = {"current_steps": i + 1, "total_steps": len(losses), "loss": loss, "lr": 1e-4,
                  "percentage": 100 * (i + 1) / len(losses), "throughput": 100.0 + i, "elapsed_time": f"0:00:0{i}"}
        record.update({k: v[i] for k, v in fields.items() if i < len(v)})
        lines.append(json.dumps(record))
    (folder / "trainer_log.jsonl").write_text("\n".join(lines) + "\n")
    if config is not None:
        (folder / "lathe_config.yaml").write_text(yaml.safe_dump({**config, "output_dir": str(folder)}))
    stamp = 1_700_000_000 - age
    for path in (folder / "trainer_log.jsonl", folder):
        os.utime(path, (stamp, stamp))
    return str(folder)


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "saves"
    old = _run(root, "tiny", "lora", "train_a", [2.0, 1.5, 1.2], {**BASE, "learning_rate": 1e-4}, age=60,
               eval_loss=[1.9, 1.4])
    new = _run(root, "tiny", "full", "train_b", [2.1, 1.1],
               {**BASE, "finetuning_type": "full", "lora_rank": None, "cutoff_len": 512}, age=10)
    return root, old, new


def test_runs_of_every_model_and_method_newest_first(runs, tmp_path):
    root, old, new = runs
    other = _run(root, "big", "lora", "train_c", [3.0], age=30)
    (root / "big" / "lora" / "notes").mkdir()  # no log, no checkpoint: not a run
    elsewhere = _run(tmp_path / "mine", "x", "y", "run", [1.0], age=0)
    model_only = tmp_path / "merged"
    model_only.mkdir()
    (model_only / "config.json").write_text("{}")  # a model folder, not a run
    found = find_runs(root, [elsewhere, old, str(model_only), ""])
    assert found == [new, other, old, elsewhere]  # a path already found is not offered twice
    assert find_runs(tmp_path / "nothing") == []
    labels = run_labels([old, new])
    assert labels == {old: "tiny/lora/train_a", new: "tiny/full/train_b"}
    twin = _run(tmp_path / "copy", "tiny", "lora", "train_a", [1.0])
    assert len(set(run_labels([old, twin]).values())) == 2  # the same last three parts: longer labels


def test_an_unreadable_or_vanishing_folder_is_left_out(runs, monkeypatch):
    root, old, new = runs
    locked = _run(root, "locked", "lora", "train_l", [1.0])
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert find_runs(root) == [new, old] and locked not in find_runs(root)

    real_is_run = compare_tab._is_run

    def deleted_while_listed(folder):  # found, then gone before its time is read
        held = real_is_run(folder)
        if folder.name == "train_b":
            import shutil

            shutil.rmtree(folder)
        return held

    monkeypatch.setattr(compare_tab, "_is_run", deleted_while_listed)
    assert find_runs(root) == [old]


def test_curves_overlay_one_metric_per_run(runs):
    _, old, new = runs
    assert metric_names([old, new]) == ["loss", "eval_loss", "lr", "throughput"]  # steps and percentage are the x axis
    frame = curves([old, new], "loss")
    assert list(frame.columns) == ["step", "value", "run"]
    by_run = {run: list(zip(part["step"], part["value"])) for run, part in frame.groupby("run")}
    assert by_run == {"tiny/lora/train_a": [(1, 2.0), (2, 1.5), (3, 1.2)], "tiny/full/train_b": [(1, 2.1), (2, 1.1)]}
    evals = curves([old, new], "eval_loss")
    assert evals["run"].unique().tolist() == ["tiny/lora/train_a"] and evals["value"].tolist() == [1.9, 1.4]
    assert curves([], "loss").empty and curves([old], "no_such_metric").empty


def test_summary_final_loss_best_eval_steps_throughput(runs):
    _, old, new = runs
    header, first, second = summary([old, new])
    assert header == ["run", "steps", "loss", "eval_loss", "throughput", "elapsed_time"]  # no run logs a reward
    assert first == ["tiny/lora/train_a", "3/3", "1.2", "1.4", "102", "0:00:02"]
    assert second == ["tiny/full/train_b", "2/2", "1.1", "—", "101", "0:00:01"]


def test_only_the_options_that_differ_side_by_side(runs, tmp_path):
    _, old, new = runs
    table = option_table([old, new])
    assert table[0] == ["option", "tiny/lora/train_a", "tiny/full/train_b"]
    rows = {row[0]: row[1:] for row in table[1:]}
    assert rows == {"finetuning_type": ["lora", "full"], "lora_rank": ["8", "—"], "cutoff_len": ["256", "512"],
                    "learning_rate": ["0.0001", "5e-05"]}  # a Trainer option left out is at the Trainer's default
    everything = {row[0] for row in option_table([old], only_differences=False)[1:]}
    assert {"model_name_or_path", "dataset", "learning_rate"} <= everything and "output_dir" not in everything

    bare = _run(tmp_path / "saves", "tiny", "lora", "train_bare", [1.0])  # stopped before its config was written
    rows = {row[0]: row[1:] for row in option_table([old, bare])[1:]}
    assert rows["model_name_or_path"] == ["org/tiny", "—"] and rows["learning_rate"] == ["0.0001", "—"]


def test_a_run_without_its_config_falls_back_to_the_boards_copy(tmp_path):
    runner = Runner(tmp_path / "wd")
    run = _run(tmp_path / "saves", "tiny", "lora", "train_x", [1.0])
    copy = runner.run_folder(str(Path(run).resolve())) / CONFIG_NAME
    copy.parent.mkdir(parents=True)
    copy.write_text(yaml.safe_dump({"model_name_or_path": "org/tiny", "stage": "nonsense", "output_dir": run}))
    assert run_options(run) == {} and run_options(run, runner)["stage"] == "nonsense"  # shown as written
    read = compare_tab.read_options(run, runner)
    assert read.as_written and "\n" not in read.as_written and "nonsense" in read.as_written and read.error is None
    runner.stop_all()


def _handler(app, name: str):
    found = {f.fn for f in app.fns.values() if f.name == name}
    assert len(found) == 1, f"{len(found)} handlers named {name}"
    return found.pop()


def _elem(app, elem_id: str):
    return next(c for c in app.blocks.values() if getattr(c, "elem_id", None) == elem_id)


@pytest.fixture
def board(tmp_path, monkeypatch):
    """The whole Board, its save root `saves` under tmp_path (as test_run_folders.py builds it)."""
    from lathe.board.app import create_board

    monkeypatch.chdir(tmp_path)
    app = create_board(tmp_path / "wd")
    if not any(getattr(c, "elem_id", None) == "compare-runs" for c in app.blocks.values()):
        pytest.skip("the Compare tab is not wired into app.py yet (build_compare_tab(ctx) in a gr.Tab)")
    return app


@pytest.fixture
def tab(tmp_path, monkeypatch):
    """The Compare tab alone, on a Board context of its own."""
    from lathe.board.chat import ChatSession
    from lathe.board.compare_tab import build_compare_tab
    from lathe.board.context import BoardContext
    from lathe.board.widgets import Widgets

    monkeypatch.chdir(tmp_path)
    ctx = BoardContext(Runner(tmp_path / "wd"), ChatSession(), Widgets("en"))
    with gr.Blocks() as app:
        ctx.lang_pick = gr.Dropdown(choices=["en", "ja"], value="en", elem_id="lang")
        build_compare_tab(ctx)
    yield app
    ctx.runner.stop_all()


def _check_compare(app):
    root = Path("saves")
    old = _run(root, "tiny", "lora", "train_a", [2.0, 1.5], {**BASE}, age=20, eval_loss=[1.8])
    full = {k: v for k, v in BASE.items() if k != "lora_rank"}
    new = _run(root, "tiny", "full", "train_b", [2.2, 1.0, 0.5], {**full, "finetuning_type": "full"}, age=10,
               reward=[0.1, 0.4, 0.9])
    for elem_id in ("compare-runs", "compare-metric", "compare-plot", "compare-options", "compare-summary"):
        _elem(app, elem_id)
    plot = _elem(app, "compare-plot")
    assert isinstance(plot, gr.LinePlot) and plot.color == "run"

    menu = _handler(app, "on_open_runs")([], "en")
    assert menu["choices"] == [("tiny/full/train_b", new), ("tiny/lora/train_a", old)]

    metric, drawn, table, options, status = _handler(app, "on_compare")([old, new], "loss", "en")
    assert metric["value"] == "loss" and metric["choices"][:3] == ["loss", "eval_loss", "reward"]
    points = drawn["value"]
    assert sorted(points["run"].unique()) == ["tiny/full/train_b", "tiny/lora/train_a"] and len(points) == 5
    assert [row[0] for row in table["data"]] == ["tiny/lora/train_a", "tiny/full/train_b"]
    assert options["headers"][1:] == ["tiny/lora/train_a", "tiny/full/train_b"]
    assert options["data"] == [["finetuning_type", "lora", "full"], ["lora_rank", "8", "—"]] and status == ""

    drawn = _handler(app, "on_metric")([old, new], "reward", "en")
    assert drawn["value"]["run"].tolist() == ["tiny/full/train_b"] * 3 and drawn["y_title"] == "reward"

    metric, drawn, _, options, status = _handler(app, "on_compare")([], "reward", "en")
    assert metric["value"] == "loss" and drawn["value"] is None and status  # asks for runs; the plot cleared


def test_the_compare_tab_draws_the_picked_runs(tab):
    _check_compare(tab)


def test_the_boards_compare_tab_draws_the_picked_runs(board):
    _check_compare(board)


def test_compare_reads_each_run_once_and_says_what_it_could_not_resolve(tab, tmp_path, monkeypatch):
    """One call reads each log and each config once (a Board copy is validated once), and the status names a run
    shown as written (its config no longer validates) with the reason's first line, and a config it cannot read."""
    from lathe.config import load

    root = Path("saves")
    good = _run(root, "tiny", "lora", "train_a", [2.0, 1.5], {**BASE}, age=20)
    copied = _run(root, "tiny", "lora", "train_b", [2.0, 1.0])
    broken = _run(root, "tiny", "lora", "train_c", [2.0])
    Path(broken, "lathe_config.yaml").write_text("a: [unclosed\n")
    copy = Runner(tmp_path / "wd").run_folder(str(Path(copied).resolve())) / CONFIG_NAME
    copy.parent.mkdir(parents=True)
    copy.write_text(yaml.safe_dump({"model_name_or_path": "org/tiny", "stage": "nonsense"}))

    logs, builds = [], []
    real_read_log, real_build = compare_tab.read_log, load.build_config
    monkeypatch.setattr(compare_tab, "read_log", lambda run: logs.append(run) or real_read_log(run))
    monkeypatch.setattr(load, "build_config", lambda *a, **k: builds.append(a) or real_build(*a, **k))
    *_, options, status = _handler(tab, "on_compare")([good, copied, broken], "loss", "en")
    assert sorted(logs) == sorted([good, copied, broken]) and len(builds) == 1
    assert options["headers"][1:] == ["tiny/lora/train_a", "tiny/lora/train_b", "tiny/lora/train_c"]
    lines = status.split("\n\n")
    as_written = [line for line in lines if f"`{copied}`" in line]
    assert len(as_written) == 1 and "nonsense" in as_written[0]
    assert any(broken in line and "invalid YAML" in line for line in lines)  # the error names the file
