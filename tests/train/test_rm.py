"""Reward modelling: pairwise accuracy rises, and the saved model scores the same after reload."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lathe.config import load_config
from lathe.data.collate import PairwiseCollator
from lathe.model.value_head import load_reward_model
from lathe.train import run_stage
from tests.train.test_dpo import pairwise_dir  # noqa: F401  (fixture)


def test_accuracy_rises_and_reload_scores_the_same(sft_config, pairwise_dir):  # noqa: F811
    cfg = load_config(sft_config(stage="rm", dataset="pairs", dataset_dir=str(pairwise_dir), max_steps=16,
                                 learning_rate=1e-2, per_device_train_batch_size=8, lora_rank=16))
    result = run_stage(cfg)
    out = Path(cfg.training.output_dir)
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert log[-1]["accuracy"] > 0.5 and log[-1]["loss"] < log[0]["loss"]
    assert (out / "value_head.safetensors").exists() and (out / "adapter_model.safetensors").exists()

    tokenizer = result.tokenizer
    batch = PairwiseCollator(tokenizer.pad_token_id)([{
        "chosen_input_ids": tokenizer("Who are you? I am Lathe Assistant.")["input_ids"],
        "chosen_labels": [0], "rejected_input_ids": tokenizer("Who are you? I am a teapot.")["input_ids"],
        "rejected_labels": [0],
    }])
    model = result.model.eval()
    with torch.no_grad():
        before = model(batch["input_ids"], batch["attention_mask"])
        after = load_reward_model(out)(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_rm_resumes_from_a_checkpoint(sft_config, pairwise_dir):  # noqa: F811
    cfg = load_config(sft_config(stage="rm", dataset="pairs", dataset_dir=str(pairwise_dir), max_steps=4,
                                 save_strategy="steps", save_steps=2, per_device_train_batch_size=4))
    run_stage(cfg)
    out = Path(cfg.training.output_dir)
    assert (out / "checkpoint-2" / "value_head.safetensors").exists()
    resumed = load_config(sft_config(stage="rm", dataset="pairs", dataset_dir=str(pairwise_dir), max_steps=4,
                                     save_strategy="steps", save_steps=2, per_device_train_batch_size=4,
                                     resume_from_checkpoint=str(out / "checkpoint-2")))
    assert run_stage(resumed).metrics["train_loss"] > 0
