"""print_param_status logs every parameter; data_shared_file_system decides who tokenizes first."""

from __future__ import annotations

import contextlib
import logging

import pytest

from lathe.config import load_config
from lathe.train.base import setup_run


def test_print_param_status_logs_each_parameter(sft_config, caplog):
    cfg = load_config(sft_config(print_param_status=True, lora_rank=4, lora_target="q_proj"))
    with caplog.at_level(logging.INFO, logger="lathe.train.base"):
        run = setup_run(cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("param ")]
    assert len(lines) == len(list(run.model.named_parameters()))
    # tiny llama: hidden 64; LoRA rank 4 on q_proj trains A (4 x 64) and B (64 x 4), the base stays frozen
    assert ("param base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight: shape (4, 64), "
            "dtype float32, device cpu, trainable True") in lines
    assert ("param base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight: shape (64, 64), "
            "dtype float32, device cpu, trainable False") in lines
    assert sum(line.endswith("trainable True") for line in lines) == 2 * 2 * 1  # 2 layers x (A, B) x q_proj


def test_param_status_is_off_by_default(sft_config, caplog):
    with caplog.at_level(logging.INFO, logger="lathe.train.base"):
        setup_run(load_config(sft_config()))
    assert not any(r.getMessage().startswith("param ") for r in caplog.records)


@pytest.mark.parametrize("shared, local", [(True, False), (False, True)])
def test_data_shared_file_system_picks_who_tokenizes_first(sft_config, monkeypatch, shared, local):
    from transformers import TrainingArguments

    calls = []
    original = TrainingArguments.main_process_first

    @contextlib.contextmanager
    def recording(self, local=True, desc="work"):
        calls.append((desc, local))
        with original(self, local=local, desc=desc):
            yield

    monkeypatch.setattr(TrainingArguments, "main_process_first", recording)
    setup_run(load_config(sft_config(data_shared_file_system=shared)))
    assert calls == [("preprocessing", local)]
