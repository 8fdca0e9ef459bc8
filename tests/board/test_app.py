"""The Board built in-process: language switch, the configs its jobs run, `lathe webchat`."""

from __future__ import annotations

import json
import time

import pytest

from lathe.board.chat import ChatSession, check_tools, sampling_fields, sampling_kwargs
from lathe.board.form import group_fields, training_fields
from lathe.board.eval_tab import benchmark_tasks, eval_config, predict_config
from lathe.board.export_tab import export_config
from lathe.config.load import build_config
from lathe.errors import LatheError
from tests.conftest import DATA, ROOT


def _fields(group, names):
    by_name = {f.name: f for f in group}
    return [by_name[n] for n in names]


def test_language_switch_relabels_every_widget(tmp_path):
    from lathe.board.app import create_board, server_settings

    app = create_board(tmp_path / "wd")
    widgets = app.lathe_widgets
    zh = widgets.relabel("zh")
    assert len(zh) == len(widgets.relabel_targets()) > 150
    labels = [u.get("label") or u.get("value") for u in zh]
    assert "学习率 (learning_rate)" in labels and "开始" in labels and "训练" in labels
    en = [u.get("label") or u.get("value") for u in widgets.relabel("en")]
    assert "Learning rate (learning_rate)" in en and "Start" in en
    assert server_settings() == {"server_name": "127.0.0.1", "server_port": 7860, "share": False}


def test_server_settings_honour_gradio_variables(monkeypatch):
    from lathe.board.app import server_settings

    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    monkeypatch.setenv("GRADIO_SHARE", "1")
    assert server_settings() == {"server_name": "0.0.0.0", "server_port": 7999, "share": True}
    monkeypatch.setenv("GRADIO_SERVER_PORT", "x")
    with pytest.raises(LatheError, match="GRADIO_SERVER_PORT"):
        server_settings()


def test_job_configs_are_validated_like_the_cli(tmp_path, tiny_llama):
    top = {"model_name_or_path": str(tiny_llama), "template": "chatml"}
    data = group_fields("data")
    gen = group_fields("generating")
    fields = _fields(data, ["eval_dataset", "max_samples"]) + _fields(gen, ["max_new_tokens"])
    raw = predict_config(top, fields, [["lathe_identity"], "4", "8"], str(DATA), str(tmp_path / "p"))
    assert raw["do_predict"] and raw["predict_with_generate"] and raw["eval_dataset"] == "lathe_identity"
    assert build_config(raw).training.do_predict
    with pytest.raises(LatheError, match="eval_dataset"):
        predict_config(top, fields, [[], "4", "8"], str(DATA), str(tmp_path / "p"))

    assert benchmark_tasks(str(ROOT / "evaluation")) == ["lathe_sample_test"]
    ev = group_fields("evaluation")
    names = ["task_dir", "task", "n_shot", "save_dir"]
    raw = eval_config(top, _fields(ev, names), [str(ROOT / "evaluation"), "lathe_sample_test", "1", str(tmp_path / "e")])
    assert raw["task"] == "lathe_sample_test" and raw["n_shot"] == 1
    with pytest.raises(LatheError, match="exists already"):
        eval_config(top, _fields(ev, names), [str(ROOT / "evaluation"), "lathe_sample_test", "1", str(tmp_path)])

    ex = group_fields("export")
    raw = export_config(top, _fields(ex, ["export_dir", "export_size"]), [str(tmp_path / "x"), "0.5"])
    assert raw["export_size"] == 0.5
    with pytest.raises(LatheError, match="export_dir"):
        export_config(top, _fields(ex, ["export_dir", "export_size"]), ["", "1"])
    # LLaMA Board's extra arguments: any other key `lathe export` takes; a field of its own is refused
    raw = export_config(top, _fields(ex, ["export_dir"]), [str(tmp_path / "y")], "export_legacy_format: true")
    assert raw["export_legacy_format"] is True
    with pytest.raises(LatheError, match="own field in the top bar"):
        export_config(top, _fields(ex, ["export_dir"]), [str(tmp_path / "y")], "template: chatml", ["template"])
    assert {f.name for f in training_fields()} >= {"output_dir", "per_device_eval_batch_size"}


def test_chat_session_streams_and_webchat_page_builds(tiny_llama):
    from lathe.board.app import create_webchat

    cfg = build_config({"model_name_or_path": str(tiny_llama), "template": "chatml", "do_sample": False,
                        "max_new_tokens": 6}, purpose="infer")
    session = ChatSession()
    session.load_config(cfg)
    fields = sampling_fields()
    gen = sampling_kwargs(fields, [f.to_widget(f.default) for f in fields[:-2]] + ["5", "1.0"])
    assert gen["max_new_tokens"] == 5 and gen["do_sample"] is True
    pieces = list(session.stream([{"role": "user", "content": "hi"}], "", "", {"do_sample": False, "max_new_tokens": 5}))
    assert pieces and all(isinstance(p, str) for p in pieces)
    session.unload()
    assert session.engine is None
    with pytest.raises(LatheError, match="must be a number"):
        sampling_kwargs(fields, [True, "hot", "0.7", "50", "5", "1.0"])
    assert json.loads(check_tools('{"name": "f", "parameters": {}}')) == [{"name": "f", "parameters": {}}]
    with pytest.raises(LatheError, match="tools: invalid JSON"):
        check_tools("[{")
    t0 = time.time()
    app = create_webchat(cfg)
    assert app.title.startswith("lathe chat") and time.time() - t0 < 60


def test_dataset_names_come_from_the_registry():
    from lathe.board.train_tab import dataset_names

    assert {"lathe_identity", "lathe_pairs"} <= set(dataset_names(str(DATA)))
    assert dataset_names("/nonexistent") == []


@pytest.mark.slow
def test_predict_and_export_jobs_run_through_the_runner(tmp_path, tiny_llama):
    """The Evaluate and Export tabs' jobs, as real child processes (BLEU/ROUGE, merged model)."""
    from lathe.board.monitor import read_metrics
    from lathe.board.runner import Runner

    top = {"model_name_or_path": str(tiny_llama), "template": "chatml"}
    fields = _fields(group_fields("data"), ["eval_dataset", "max_samples"]) + _fields(group_fields("generating"),
                                                                                     ["max_new_tokens"])
    runner = Runner(tmp_path / "wd")
    out = str(tmp_path / "predict")
    run = runner.start("predict", predict_config(top, fields, [["lathe_identity"], "4", "4"], str(DATA), out), out)
    run.process.wait(timeout=300)
    assert run.returncode() == 0, run.log_tail()
    assert "predict_bleu-4" in read_metrics(out, "predict_results.json")
    ex = _fields(group_fields("export"), ["export_dir"])
    raw = export_config(top, ex, [str(tmp_path / "export")])
    run = runner.start("export", raw, raw["export_dir"])
    run.process.wait(timeout=300)
    assert run.returncode() == 0, run.log_tail()
    assert (tmp_path / "export" / "config.json").exists()


def test_chat_session_attaches_images_for_a_vlm_and_refuses_them_for_a_text_model(tiny_llama):
    """The Board's and webchat's uploads: each file becomes a placeholder in front of the message and goes to
    the engine with the conversation; a text model refuses them by kind."""
    from pathlib import Path

    from lathe.testing.tiny_vlm import build_tiny_vlm

    image = str(Path(__file__).resolve().parents[2] / "data" / "lathe_shapes" / "images" / "red_circle.png")
    session = ChatSession()
    session.load_config(build_config({"model_name_or_path": str(build_tiny_vlm("qwen2_vl")), "template": "qwen2_vl",
                                      "do_sample": False, "max_new_tokens": 3}, purpose="infer"))
    text = session.attach("What is it?", [image])
    assert text == "<image>What is it?" and session.media["image"] == [image]
    pieces = list(session.stream([{"role": "user", "content": text}], "", "", {"max_new_tokens": 3}))
    assert pieces and all(isinstance(p, str) for p in pieces)
    with pytest.raises(LatheError, match="not an image, video or audio"):
        session.attach("x", ["notes.txt"])
    session.load_config(build_config({"model_name_or_path": str(tiny_llama), "template": "chatml"}, purpose="infer"))
    assert session.media["image"] == []
    with pytest.raises(LatheError, match="text model"):
        session.attach("x", [image])
