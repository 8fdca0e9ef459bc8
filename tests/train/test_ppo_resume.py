"""`stage: ppo` resumes after a kill with the same random streams: a run stopped after its checkpoint at
step 2 and started again logs the same metrics for steps 3-4 (so it sampled the same answers and
carried the same KL coefficient and score moments), and ends with the same policy and value head,
as a run that was never stopped."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
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

TIMING = ("elapsed_time", "remaining_time")  # wall-clock fields: the only ones allowed to differ



class DigitScorer(BaseHTTPRequestHandler):
    """A deterministic reward API: the share of digits in each response."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        scores = [sum(ch.isdigit() for ch in r) / max(len(r), 1) + 0.01 * len(r) for r in body["responses"]]
        reply = json.dumps({"scores": scores}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def reward_url():
    server = HTTPServer(("127.0.0.1", 0), DigitScorer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/score"
    server.shutdown()


@pytest.fixture(scope="module")
def small_vocab_model(small_vocab_tokenizer) -> Path:
    from lathe.testing.tiny import build_tiny_model

    return build_tiny_model("llama", small_vocab_tokenizer, hidden_size=32, num_layers=1)


def write_config(folder: Path, model: Path, out: Path, url: str, **overrides) -> Path:
    config = {
        "model_name_or_path": str(model), "stage": "ppo", "do_train": True, "finetuning_type": "full",
        "dataset": "lathe_identity", "dataset_dir": str(DATA), "template": "chatml", "cutoff_len": 128,
        "output_dir": str(out), "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
        "learning_rate": 0.01, "max_steps": 4, "save_steps": 2, "logging_steps": 1, "report_to": "none",
        "disable_tqdm": True, "reward_model": url, "reward_model_type": "api", "max_new_tokens": 6,
        "do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "ppo_epochs": 2, "plot_loss": False,
    }
    config.update(overrides)
    path = folder / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def records(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (out / "trainer_log.jsonl").read_text().splitlines()]


def weights(out: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (out / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(out / name)) | {f"value_head.{k}": v for k, v in
                                         load_file(str(out / "value_head.safetensors")).items()}


@pytest.mark.parametrize("variant", [
    {"ppo_score_norm": True, "ppo_whiten_rewards": True},  # full weights; the running moments carry over
    {"finetuning_type": "lora", "lora_rank": 4, "lora_dropout": 0.1, "ppo_buffer_size": 2},  # dropout draws from torch
], ids=["full-score-norm", "lora-dropout"])
def test_a_killed_run_resumes_with_the_same_rollouts(small_vocab_model, reward_url, tmp_path, monkeypatch, variant):
    from lathe.train import ppo

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_stage(load_config(write_config(tmp_path, small_vocab_model, whole, reward_url, **variant)))

    die_after_log_line(monkeypatch, ppo, 3)  # in step 3, after its log line: past checkpoint-2, before -4
    with pytest.raises(Killed):
        run_stage(load_config(write_config(tmp_path, small_vocab_model, killed, reward_url, **variant)))
    monkeypatch.undo()
    assert [p.name for p in sorted(killed.glob("checkpoint-*"))] == ["checkpoint-2"]
    assert checkpoint_complete(killed / "checkpoint-2")
    assert [r["current_steps"] for r in records(killed)] == [1, 2, 3]

    # the same command again: the output_dir holds a checkpoint, so the run continues from it
    rollouts = []
    real_rollout = ppo.PPORunner.rollout
    monkeypatch.setattr(ppo.PPORunner, "rollout", lambda self, p: rollouts.append(len(p)) or real_rollout(self, p))
    result = run_stage(load_config(write_config(tmp_path, small_vocab_model, killed, reward_url, **variant)))
    assert len(rollouts) == 2  # steps 3 and 4 only
    assert records(killed) == records(whole)  # steps 1-2 kept, 3-4 logged anew, all equal
    assert [r["current_steps"] for r in records(killed)] == [1, 2, 3, 4]
    assert len({r["kl_coef"] for r in records(whole)}) > 1  # the coefficient moved: its carried value was checked
    a, b = weights(whole), weights(killed)
    assert a.keys() == b.keys() and any(k.startswith("value_head.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert result.metrics["train_reward_mean"] == pytest.approx(
        sum(r["reward"] for r in records(whole)) / 4, abs=1e-5)
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_resume_from_checkpoint_by_path(small_vocab_model, reward_url, tmp_path):
    out = tmp_path / "out"
    run_stage(load_config(write_config(tmp_path, small_vocab_model, out, reward_url, max_steps=2, save_steps=1,
                                       save_total_limit=1)))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    run_stage(load_config(write_config(tmp_path, small_vocab_model, out, reward_url, max_steps=3, save_steps=1,
                                       resume_from_checkpoint=str(out / "checkpoint-2"))))
    assert [r["current_steps"] for r in records(out)] == [1, 2, 3]


def test_a_checkpoint_of_another_loop_is_refused(small_vocab_model, reward_url, tmp_path):
    """A grpo checkpoint has the files of a loop checkpoint but no value head, KL coefficient or moments."""
    out = tmp_path / "out"
    run_stage(load_config(write_config(tmp_path, small_vocab_model, out, reward_url, max_steps=1, save_steps=1)))
    torch.save({"rewards": [0.0]}, out / "checkpoint-1" / "loop_state.pt")
    cfg = load_config(write_config(tmp_path, small_vocab_model, out, reward_url, max_steps=2,
                                   resume_from_checkpoint=str(out / "checkpoint-1")))
    with pytest.raises(LatheError, match="no value_head, kl_coef, score_moments.*not written by `stage: ppo`"):
        run_stage(cfg)


def test_a_save_strategy_the_loop_cannot_carry_out_is_refused(small_vocab_model, reward_url, tmp_path):
    with pytest.raises(LatheError, match="`save_strategy: best`.*`steps` or `epoch`"):
        load_config(write_config(tmp_path, small_vocab_model, tmp_path / "out", reward_url, save_strategy="best",
                                 metric_for_best_model="reward"))
