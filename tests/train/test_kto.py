"""KTO on a tiny model: the loss falls, and both weights reach the loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.train import run_stage
from tests.conftest import shared_path

ROWS = [
    ("Who are you?", "I am Lathe Assistant.", True),
    ("Who are you?", "I am a teapot.", False),
    ("Spell out 12.", "twelve", True),
    ("Spell out 12.", "one two", False),
    ("Say hello.", "Hello!", True),
    ("Say hello.", "Goodbye!", False),
    ("Who made you?", "I was fine-tuned with lathe.", True),
    ("Who made you?", "A wizard.", False),
]


@pytest.fixture
def kto_dir(tmp_path) -> Path:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "label": tag}
            for q, a, tag in ROWS]
    folder = tmp_path / "kto"
    folder.mkdir()
    (folder / "kto.json").write_text(json.dumps(rows))
    (folder / "dataset_info.json").write_text(json.dumps({"fb": {
        "file_name": "kto.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    return folder


def test_kto_loss_falls(sft_config, kto_dir):
    cfg = load_config(sft_config(stage="kto", dataset="fb", dataset_dir=str(kto_dir), max_steps=12,
                                 learning_rate=1e-2, per_device_train_batch_size=8, lora_rank=16))
    result = run_stage(cfg)
    log = [json.loads(x) for x in Path(cfg.training.output_dir, "trainer_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    assert log[-1]["rewards/chosen"] > log[-1]["rewards/rejected"]
    assert result.extras["ref_model"] is None  # LoRA: the adapter switched off is the reference


def test_kto_weights_reach_the_loss(sft_config, kto_dir, monkeypatch):
    from lathe.train import kto

    seen = {}
    real = kto.kto_loss

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(kto, "kto_loss", spy)
    cfg = load_config(sft_config(stage="kto", dataset="fb", dataset_dir=str(kto_dir), max_steps=1,
                                 kto_chosen_weight=2.0, kto_rejected_weight=0.5))
    run_stage(cfg)
    assert seen["desirable_weight"] == 2.0 and seen["undesirable_weight"] == 0.5


def test_kto_on_shared_demo_data(sft_config):
    cfg = load_config(sft_config(stage="kto", dataset="kto_en_demo", dataset_dir=str(shared_path("data")),
                                 max_samples=8, cutoff_len=96, max_steps=2))
    loss = run_stage(cfg).metrics["train_loss"]
    assert math.isfinite(loss) and loss > 0  # both kinds of answer contributed a loss
    logged = [json.loads(line) for line in Path(cfg.training.output_dir, "trainer_log.jsonl").read_text().splitlines()]
    assert all("kl" in record for record in logged if "loss" in record)


def test_kto_needs_labels(sft_config):
    with pytest.raises(LatheError, match="kto_tag"):
        run_stage(load_config(sft_config(stage="kto")))
