"""Trackers: the resolved config reaches TensorBoard and SwanLab (offline), and no secret does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.train import run_stage
from lathe.train.tracking import check_tracking, tracked_config

SECRET = "sk-never-logged-1234"


def tensorboard_texts(folder: Path) -> dict[str, str]:
    """Every text summary in the TensorBoard event files under `folder`, by tag."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    texts = {}
    for path in folder.rglob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "text":
                    texts[value.tag] = b"".join(value.tensor.string_val).decode()
    return texts


def test_tensorboard_event_file_holds_the_config(sft_config):
    pytest.importorskip("tensorboard")
    cfg = load_config(sft_config(report_to="tensorboard", max_steps=2, lora_rank=4, swanlab_api_key=SECRET))
    run_stage(cfg)

    texts = tensorboard_texts(Path(cfg.training.output_dir))
    config = yaml.safe_load(texts["lathe_config/text_summary"])  # 4-space indented YAML: a code block there
    assert config["template"] == "chatml" and config["lora_rank"] == 4 and config["dataset"] == "lathe_identity"
    assert "swanlab_api_key" not in config
    for path in Path(cfg.training.output_dir).rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_swanlab_offline_writes_its_log_with_the_config(sft_config, tmp_path):
    swanlab = pytest.importorskip("swanlab")
    logdir = tmp_path / "swanlog"
    cfg = load_config(sft_config(use_swanlab=True, swanlab_mode="local", swanlab_logdir=str(logdir),
                                 swanlab_project="lathe-test", swanlab_api_key=SECRET, swanlab_lark_secret=SECRET,
                                 max_steps=2, lora_rank=4))
    try:
        run_stage(cfg)
    finally:
        swanlab.finish()  # the run's files are complete once it finishes (otherwise at exit)

    runs = list(logdir.glob("run-*"))
    assert len(runs) == 1
    config = yaml.safe_load((runs[0] / "files" / "config.yaml").read_text())
    assert config["template"]["value"] == "chatml" and config["lora_rank"]["value"] == 4
    assert "learning_rate" in config  # SwanLab's own callback: the Trainer's arguments
    assert any(runs[0].glob("*.swanlab"))  # the metrics record
    for path in [*logdir.rglob("*"), *Path(cfg.training.output_dir).rglob("*")]:  # not the user's own config file
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_tracked_config_drops_secrets(sft_config):
    cfg = load_config(sft_config(swanlab_api_key=SECRET, swanlab_lark_secret=SECRET,
                                 swanlab_lark_webhook_url="https://open.feishu.cn/open-apis/bot/v2/hook/abc"))
    config = tracked_config(cfg)
    assert SECRET not in str(config) and "hook/abc" not in str(config)
    assert config["swanlab_project"] == "llamafactory" and config["template"] == "chatml"
    # options whose names merely contain "token" are no secrets: the dashboard's config must repeat the run
    for kept in ("max_new_tokens", "add_tokens", "tokenized_path", "ignore_pad_token_for_loss"):
        assert kept in config


def test_missing_swanlab_is_named(sft_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "swanlab", None)  # find_spec then reports it absent
    cfg = load_config(sft_config(use_swanlab=True))
    with pytest.raises(LatheError, match="use_swanlab.*pip install swanlab"):
        check_tracking(cfg)
