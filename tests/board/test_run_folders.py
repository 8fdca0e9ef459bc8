"""Run folders as LLaMA Board lays them out, `saves/<model>/<method>/<run>`: the output-folder menu (past runs
or a fresh name) and the adapters to load (past runs that hold one)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import gradio as gr
import pytest
import yaml

from lathe.board.context import adapter_runs, model_folder_name, new_run_dir, output_choices, past_runs, save_dir

FRESH = re.compile(r"train_\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d$")


def _run(root: Path, model: str, method: str, name: str, files=(), folders=(), age: int = 0) -> str:
    folder = save_dir(model, method, root) / name
    folder.mkdir(parents=True)
    for f in files:
        (folder / f).write_text("{}")
    for d in folders:
        (folder / d).mkdir()
    stamp = 1_700_000_000 - age
    os.utime(folder, (stamp, stamp))
    return str(folder)


def test_model_and_method_name_the_folders():
    assert model_folder_name("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen2.5-0.5B-Instruct"
    assert model_folder_name("/models/tiny llama/") == "tiny_llama"
    assert model_folder_name("") == "model"
    assert save_dir("Qwen/Qwen3-4B", "lora", "saves") == Path("saves/Qwen3-4B/lora")
    fresh = new_run_dir("Qwen/Qwen3-4B", "full", "saves")
    assert fresh.startswith("saves/Qwen3-4B/full/") and FRESH.search(fresh)


def test_past_runs_newest_first_and_the_adapters_among_them(tmp_path):
    lora_log = _run(tmp_path, "org/tiny", "lora", "train_a", files=["trainer_log.jsonl"], age=30)
    lora_ckpt = _run(tmp_path, "org/tiny", "lora", "train_b", folders=["checkpoint-5"], age=20)
    adapter = _run(tmp_path, "org/tiny", "lora", "train_c", files=["adapter_config.json", "trainer_log.jsonl"],
                   age=10)
    _run(tmp_path, "org/tiny", "lora", "notes", folders=["checkpoint-x"])  # neither a log nor a checkpoint
    _run(tmp_path, "org/tiny", "full", "train_d", files=["trainer_log.jsonl"])
    _run(tmp_path, "org/other", "lora", "train_e", files=["adapter_config.json"])

    assert past_runs("org/tiny", "lora", tmp_path) == [adapter, lora_ckpt, lora_log]
    assert adapter_runs("/somewhere/tiny", "lora", tmp_path) == [adapter]  # a local copy shares the runs
    assert past_runs("org/tiny", "oft", tmp_path) == [] and adapter_runs("nothing", "lora", tmp_path) == []

    choices, value = output_choices("org/tiny", "lora", None, tmp_path)
    assert FRESH.search(value) and choices == [value, adapter, lora_ckpt, lora_log]
    choices, value = output_choices("org/tiny", "lora", lora_ckpt, tmp_path)  # picked a past run: kept
    assert value == lora_ckpt and FRESH.search(choices[0]) and choices[1:] == [lora_ckpt, adapter, lora_log]
    kept = str(save_dir("org/tiny", "lora", tmp_path) / "train_mine")  # a fresh name typed in: kept, no second one
    assert output_choices("org/tiny", "lora", kept, tmp_path) == ([kept, adapter, lora_ckpt, lora_log], kept)
    choices, value = output_choices("org/tiny", "full", lora_ckpt, tmp_path)  # another method: a new run there
    assert Path(value).parent == save_dir("org/tiny", "full", tmp_path) and len(choices) == 2


def _handler(app, name: str):
    found = {f.fn for f in app.fns.values() if f.name == name}
    assert len(found) == 1, f"{len(found)} handlers named {name}"
    return found.pop()


@pytest.fixture
def board(tmp_path, monkeypatch):
    from lathe.board.app import create_board

    monkeypatch.chdir(tmp_path)  # the save root, `saves`, is relative to where the Board runs
    return create_board(tmp_path / "wd")


def test_the_train_tab_follows_the_model_and_method(board, tmp_path):
    w = board.lathe_widgets
    out, adapters = w.components["output_dir"], w.components["adapter_name_or_path"]
    assert isinstance(out, gr.Dropdown) and out.allow_custom_value
    assert str(out.value).startswith("saves/model/lora/train_")
    assert isinstance(adapters, gr.Dropdown) and adapters.multiselect and adapters.allow_custom_value

    run = _run(Path("saves"), "org/tiny", "lora", "train_1", files=["adapter_config.json", "trainer_log.jsonl"])
    on_pick = _handler(board, "on_pick")
    out_update, adapter_update = on_pick("org/tiny", "lora", out.value, [])
    assert FRESH.search(out_update["value"]) and out_update["choices"] == [out_update["value"], run]
    assert adapter_update["choices"] == [run]
    # a remembered run of this model stays picked; an adapter typed in stays offered
    out_update, adapter_update = on_pick("org/tiny", "lora", run, ["/elsewhere/adapter"])
    assert out_update["value"] == run and adapter_update["choices"] == [run, "/elsewhere/adapter"]
    out_update, adapter_update = on_pick("org/tiny", "freeze", run, [])
    assert Path(out_update["value"]).parent == Path("saves/tiny/freeze") and adapter_update["choices"] == []

    newer = _run(Path("saves"), "org/tiny", "lora", "train_2", files=["adapter_config.json"])
    os.utime(newer)  # finished just now: the menus re-read the folders when opened
    assert _handler(board, "on_open_adapters")("org/tiny", "lora", [])["choices"] == [newer, run]
    assert newer in _handler(board, "on_open_outputs")("org/tiny", "lora", run)["choices"]


def test_a_loaded_config_offers_its_models_adapters(board, tmp_path):
    run = _run(Path("saves"), "org/tiny", "lora", "train_1", files=["adapter_config.json"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model_name_or_path": "org/tiny", "adapter_name_or_path": f"{run},/x/other",
                                   "output_dir": run}))
    updates = _handler(board, "on_load")(str(cfg), "en")
    names = [c for c in board.lathe_widgets.components]
    adapter = next(u for u in updates if isinstance(u, dict) and u.get("value") == [run, "/x/other"])
    assert adapter["choices"] == sorted([run, "/x/other"]) and "adapter_name_or_path" in names


def test_predict_and_eval_folders_follow_the_model_and_method(board):
    """Evaluate & Predict writes where the Train tab does, `saves/<model>/<method>/predict_<time>` (eval_<time>),
    renamed with the model and method unless the user typed a folder of their own."""
    from lathe.board.context import follows_model

    stamp = r"_\d{4}(-\d\d){5}$"
    predict = next(c for c in board.blocks.values() if getattr(c, "elem_id", None) == "f-predict-output_dir")
    evaluate = next(c for c in board.blocks.values() if getattr(c, "elem_id", None) == "f-eval-save_dir")
    assert re.match(r"saves/model/lora/predict" + stamp, predict.value)
    assert re.match(r"saves/model/lora/eval" + stamp, evaluate.value)
    renamed = _handler(board, "follow_predict_folder")("org/tiny", "freeze", predict.value)
    assert re.match(r"saves/tiny/freeze/predict" + stamp, renamed["value"])
    assert _handler(board, "follow_eval_folder")("org/tiny", "lora", "/data/my-eval") == gr.update()  # typed: kept
    assert follows_model("", "eval") and not follows_model("saves/x/lora/train_2026-01-01-00-00-00", "eval")


def test_a_past_run_picked_brings_its_settings_back(board, tmp_path, tiny_llama):
    """As in LLaMA Board: the output-folder menu's past run fills the form with what that run set."""
    import yaml

    from lathe.config import build_config
    from lathe.train.base import CONFIG_FILE
    from tests.conftest import DATA

    run = Path(_run(Path("saves"), str(tiny_llama), "lora", "train_1", files=["trainer_log.jsonl"])).resolve()
    cfg = build_config({"model_name_or_path": str(tiny_llama), "dataset": "lathe_identity", "dataset_dir": str(DATA),
                        "output_dir": str(run), "learning_rate": 3e-4, "lora_rank": 16, "max_steps": 7})
    (run / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict()))  # what a shell run leaves
    on_pick_run = _handler(board, "on_pick_run")
    *values, extra, message = on_pick_run(str(run), "en")
    form = board.fns[next(k for k, f in board.fns.items() if f.name == "on_pick_run")].outputs
    by_id = {comp.elem_id: value for comp, value in zip(form, values)}
    assert by_id["f-learning_rate"] == "0.0003" and by_id["f-lora_rank"] == "16" and by_id["f-max_steps"] == "7"
    assert by_id["f-dataset"]["value"] == ["lathe_identity"]
    assert "do_predict" not in extra and "temperature" not in extra  # defaults stay out of the extra box
    assert CONFIG_FILE in message
    # the config this Board wrote for a run wins over the resolved one
    board_copy = board.lathe_runner.run_folder(str(run)) / "config.yaml"
    board_copy.parent.mkdir(parents=True)
    board_copy.write_text(yaml.safe_dump({"model_name_or_path": str(tiny_llama), "learning_rate": 1e-5}))
    *values, extra, message = on_pick_run(str(run), "en")
    assert dict(zip([c.elem_id for c in form], values))["f-learning_rate"] == "1e-05" and "config.yaml" in message
    assert all(isinstance(v, type(gr.skip())) for v in on_pick_run(str(tmp_path / "nothing"), "en"))


def test_the_config_and_reward_model_menus_list_what_is_on_disk(board, tmp_path):
    """LLaMA Board's saved-arguments menu and its reward-model menu of past runs."""
    import time as _time

    from lathe.board.train_tab import past_model_runs, saved_configs

    wd = board.lathe_runner.workdir
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "a.yaml").write_text("stage: sft\n")
    _time.sleep(0.01)
    (wd / "b.json").write_text("{}")
    assert saved_configs(wd)[:2] == [str(wd / "b.json"), str(wd / "a.yaml")]
    assert str(wd / "user_config.yaml") not in saved_configs(wd)
    rm = _run(Path("saves"), "org/tiny", "lora", "rm_1", files=["adapter_config.json"])
    full = _run(Path("saves"), "org/tiny", "full", "rm_2", files=["config.json"])
    _run(Path("saves"), "org/tiny", "lora", "logs_only", files=["trainer_log.jsonl"])  # no model to score with
    assert set(past_model_runs("org/tiny", "", "saves")) == {rm, full}
    assert past_model_runs("org/tiny", "/typed/rm", "saves")[0] == "/typed/rm"
    assert past_model_runs("org/other", "", "saves") == []
