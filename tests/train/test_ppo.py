"""PPO on a tiny model: with a reward that prefers one kind of token, the mean reward rises."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.train import run_stage


TARGET: dict[str, tuple[str, ...]] = {"texts": ()}


class Scorer(BaseHTTPRequestHandler):
    """The synthetic reward model: 1 when the answer starts with one of the preferred tokens, else 0."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = json.dumps({"scores": [float(r.startswith(TARGET["texts"])) for r in body["responses"]]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def reward_url():
    server = HTTPServer(("127.0.0.1", 0), Scorer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/score"
    server.shutdown()


def rewards(output_dir: str) -> list[float]:
    lines = Path(output_dir, "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line)["reward"] for line in lines]


def likely_first_tokens(model_dir: Path, temperature: float, mass: float) -> tuple[tuple[str, ...], float]:
    """The clean tokens the untrained model most often says first, together `mass` of its probability.

    Preferring tokens the policy already samples now and then gives PPO a signal from the
    first batch; a token it never samples could not be found by any policy-gradient method.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lathe.data.templates import get_template

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    template = get_template("chatml")
    rows = json.loads((Path(__file__).resolve().parents[2] / "data" / "lathe_identity.json").read_text())
    probs = []
    with torch.no_grad():
        for row in rows:
            ids = template.encode_prompt(tokenizer, [{"role": "user", "content": row["instruction"]}])
            probs.append(torch.softmax(model(torch.tensor([ids])).logits[0, -1] / temperature, -1))
    mean = torch.stack(probs).mean(0)
    chosen, total = [], 0.0
    for token in mean.argsort(descending=True).tolist():
        text = tokenizer.decode([token])
        if token in tokenizer.all_special_ids or not text.strip() or "\ufffd" in text:
            continue
        chosen.append(text)
        total += float(mean[token])
        if total >= mass:
            break
    return tuple(chosen), total


def test_reward_rises(sft_config, reward_url, tiny_demo_model):
    TARGET["texts"], p0 = likely_first_tokens(tiny_demo_model, temperature=0.3, mass=0.4)
    cfg = load_config(sft_config(
        model_name_or_path=str(tiny_demo_model), stage="ppo", reward_model=reward_url, reward_model_type="api",
        max_steps=12, learning_rate=5e-3, per_device_train_batch_size=16, lora_rank=16, max_new_tokens=2,
        top_p=1.0, top_k=0, temperature=0.3, ppo_epochs=4, plot_loss=True,
    ))
    result = run_stage(cfg)
    r = rewards(cfg.training.output_dir)
    assert len(r) == 12
    # r[0] is the untrained policy's reward; after a few updates it prefers the rewarded tokens.
    assert sum(r[4:]) / len(r[4:]) > r[0] + 0.15, (TARGET["texts"], p0, [round(x, 3) for x in r])
    out = Path(cfg.training.output_dir)
    assert (out / "adapter_model.safetensors").exists() and (out / "value_head.safetensors").exists()
    assert result.extras["ref_model"] is None
    log = json.loads((out / "trainer_log.jsonl").read_text().splitlines()[-1])
    assert {"reward", "kl", "kl_coef", "policy_loss", "value_loss"} <= set(log)


def test_ppo_with_a_lora_reward_adapter_on_the_same_base(sft_config, tmp_path):
    from tests.train.test_dpo import PAIRS

    data = tmp_path / "pairs"
    data.mkdir()
    rows = [{"conversations": [{"from": "human", "value": q}], "chosen": {"from": "gpt", "value": c},
             "rejected": {"from": "gpt", "value": r}} for q, c, r in PAIRS]
    (data / "pairs.json").write_text(json.dumps(rows))
    (data / "dataset_info.json").write_text(json.dumps({"pairs": {
        "file_name": "pairs.json", "formatting": "sharegpt", "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}}))
    rm = load_config(sft_config(stage="rm", dataset="pairs", dataset_dir=str(data), max_steps=2,
                                output_dir=str(tmp_path / "rm")))
    run_stage(rm)
    cfg = load_config(sft_config(stage="ppo", reward_model=str(tmp_path / "rm"), reward_model_type="lora",
                                 max_steps=2, per_device_train_batch_size=4, max_new_tokens=6, ppo_epochs=1))
    result = run_stage(cfg)
    assert len(rewards(cfg.training.output_dir)) == 2
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and not any(".reward." in n for n in trainable)  # the reward adapter stays frozen


def test_ppo_needs_a_reward_model(sft_config):
    with pytest.raises(LatheError, match="reward_model"):
        load_config(sft_config(stage="ppo"))
    with pytest.raises(LatheError, match="URL"):
        load_config(sft_config(stage="ppo", reward_model="/x", reward_model_type="api"))


def test_ppo_under_a_launcher_is_refused_before_any_work(sft_config, reward_url, monkeypatch):
    """PPO's loop shares no gradients between processes: N processes would train N unsynchronised copies."""
    cfg = load_config(sft_config(stage="ppo", reward_model=reward_url, reward_model_type="api", max_steps=1))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LatheError, match="one process"):
        run_stage(cfg)
