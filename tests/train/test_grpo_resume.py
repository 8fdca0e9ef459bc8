"""`stage: grpo` / `rloo` resume after a kill with the same random streams: a run stopped after its
checkpoint at step 2 and started again logs the same metrics and completions for steps 3-4, and ends
with the same weights, as a run that was never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.train import run_stage
from lathe.train.checkpoints import checkpoint_complete
from tests.conftest import DATA, Killed, die_after_log_line

DIGITS = """def digits(prompts, completions, **columns):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
"""
TIMING = ("elapsed_time", "remaining_time", "throughput")  # wall-clock fields: the only ones allowed to differ



@pytest.fixture(scope="module")
def small_vocab_model(small_vocab_tokenizer) -> Path:
    from lathe.testing.tiny import build_tiny_model

    return build_tiny_model("llama", small_vocab_tokenizer, hidden_size=32, num_layers=1)


def write_config(folder: Path, model: Path, out: Path, **overrides) -> Path:
    (folder / "rewards.py").write_text(DIGITS)
    config = {
        "model_name_or_path": str(model), "stage": "grpo", "do_train": True, "finetuning_type": "full",
        "dataset": "lathe_identity", "dataset_dir": str(DATA), "template": "chatml", "cutoff_len": 128,
        "output_dir": str(out), "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
        "num_generations": 4, "learning_rate": 0.01, "max_steps": 4, "save_steps": 2, "logging_steps": 1,
        "report_to": "none", "disable_tqdm": True, "max_completion_length": 8, "reward_funcs": "rewards.py:digits",
        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "plot_loss": False,
    }
    config.update(overrides)
    path = folder / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def records(out: Path, name: str) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (out / name).read_text().splitlines()]


def weights(out: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (out / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(out / name))


@pytest.mark.parametrize("variant", [
    {"num_iterations": 2, "importance_sampling_level": "sequence"},  # full weights, two passes per batch
    {"stage": "rloo", "finetuning_type": "lora", "lora_rank": 4, "lora_dropout": 0.1,  # dropout draws from torch
     "dynamic_sampling": True, "learning_rate": 0.05},  # a random number of sampling rounds per step
], ids=["grpo-full", "rloo-lora"])
def test_a_killed_run_resumes_with_the_same_completions(small_vocab_model, tmp_path, monkeypatch, variant):
    from lathe.train import grpo

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_stage(load_config(write_config(tmp_path, small_vocab_model, whole, **variant)))

    die_after_log_line(monkeypatch, grpo, 3)  # in step 3, after its log line: past checkpoint-2, before -4
    with pytest.raises(Killed):
        run_stage(load_config(write_config(tmp_path, small_vocab_model, killed, **variant)))
    monkeypatch.undo()
    assert [p.name for p in sorted(killed.glob("checkpoint-*"))] == ["checkpoint-2"]
    assert checkpoint_complete(killed / "checkpoint-2")
    assert [r["current_steps"] for r in records(killed, "trainer_log.jsonl")] == [1, 2, 3]

    # the same command again: the output_dir holds a checkpoint, so the run continues from it
    sampled = []
    real_sample = grpo.GroupSampler.sample
    monkeypatch.setattr(grpo.GroupSampler, "sample", lambda self, n: sampled.append(n) or real_sample(self, n))
    result = run_stage(load_config(write_config(tmp_path, small_vocab_model, killed, **variant)))
    assert len(sampled) == 2  # steps 3 and 4 only
    for name in ("trainer_log.jsonl", "completions.jsonl"):
        assert records(killed, name) == records(whole, name), name  # steps 1-2 kept, 3-4 logged anew, all equal
    assert [r["current_steps"] for r in records(killed, "trainer_log.jsonl")] == [1, 2, 3, 4]
    assert {r["step"] for r in records(killed, "completions.jsonl")} == {1, 2, 3, 4}
    a, b = weights(whole), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert result.metrics["train_reward_mean"] == pytest.approx(
        sum(r["reward"] for r in records(whole, "trainer_log.jsonl")) / 4, abs=1e-5)
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_resume_from_checkpoint_by_path_and_save_total_limit(small_vocab_model, tmp_path):
    out = tmp_path / "out"
    run_stage(load_config(write_config(tmp_path, small_vocab_model, out, max_steps=3, save_steps=1,
                                       save_total_limit=2)))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    cfg = load_config(write_config(tmp_path, small_vocab_model, out, max_steps=4, save_steps=1,
                                   resume_from_checkpoint=str(out / "checkpoint-3")))
    run_stage(cfg)
    assert [r["current_steps"] for r in records(out, "trainer_log.jsonl")] == [1, 2, 3, 4]


def test_a_weights_only_checkpoint_is_refused_for_resuming(small_vocab_model, tmp_path):
    out = tmp_path / "out"
    run_stage(load_config(write_config(tmp_path, small_vocab_model, out, max_steps=2, save_only_model=True)))
    cfg = load_config(write_config(tmp_path, small_vocab_model, out, resume_from_checkpoint=str(out / "checkpoint-2")))
    with pytest.raises(LatheError, match="lacks optimizer.pt.*save_only_model: true"):
        run_stage(cfg)


def test_a_save_strategy_the_loop_cannot_carry_out_is_refused(small_vocab_model, tmp_path):
    with pytest.raises(LatheError, match="`save_strategy: best`.*`steps` or `epoch`"):
        load_config(write_config(tmp_path, small_vocab_model, tmp_path / "out", save_strategy="best",
                                 metric_for_best_model="reward"))
