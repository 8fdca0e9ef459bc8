"""`stage: grpo` / `rloo` on a tiny model: a reachable reward rises; a user reward file is used and
logged; the reference is the adapter switched off under LoRA; bad input fails by name.

The learning runs use a vocabulary of 300 tokens and full-parameter updates: on a random-init model
with a vocabulary of thousands, samples spread too thin for a reward to move within seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.train import run_stage
from tests.conftest import DATA

# The share of digits in the completion: the untrained model writes one now and then (10 of 300 tokens).
DIGITS = """def digits(prompts, completions, **columns):
    assert len(columns["answer"]) == len(completions)
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
"""


@pytest.fixture(scope="session")
def small_vocab_model(small_vocab_tokenizer) -> Path:
    from lathe.testing.tiny import build_tiny_model

    return build_tiny_model("llama", small_vocab_tokenizer, hidden_size=64, num_layers=2)


@pytest.fixture
def grpo_config(tmp_path, small_vocab_model):
    """Writes a grpo config (and the digits reward file beside it); returns its path."""
    (tmp_path / "rewards.py").write_text(DIGITS)

    def make(**overrides) -> Path:
        config = {
            "model_name_or_path": str(small_vocab_model), "stage": "grpo", "do_train": True,
            "finetuning_type": "full", "dataset": "lathe_identity", "dataset_dir": str(DATA), "template": "chatml",
            "cutoff_len": 128, "output_dir": str(tmp_path / "out"), "overwrite_output_dir": True,
            "per_device_train_batch_size": 16, "learning_rate": 0.01, "max_steps": 30, "logging_steps": 1,
            "report_to": "none", "disable_tqdm": True, "num_generations": 8, "max_completion_length": 8,
            "reward_funcs": "rewards.py:digits", "temperature": 1.0, "top_p": 1.0, "top_k": 0,
        }
        config.update(overrides)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make


def log_of(cfg) -> list[dict]:
    return [json.loads(line) for line in Path(cfg.training.output_dir, "trainer_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("variant", [
    {"loss_type": "grpo"},
    {"loss_type": "dapo", "epsilon_high": 0.28},
    {"loss_type": "grpo", "importance_sampling_level": "sequence", "num_iterations": 2},  # GSPO
], ids=["grpo", "dapo", "gspo"])
def test_a_reachable_reward_rises(grpo_config, variant):
    cfg = load_config(grpo_config(**variant))
    result = run_stage(cfg)
    log = log_of(cfg)
    rewards = [r["reward"] for r in log]
    assert len(rewards) == 30
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.3, [round(r, 3) for r in rewards]
    # the user's function, from the file next to the config, is logged under its name
    assert log[-1]["rewards/rewards.py:digits/mean"] == pytest.approx(log[-1]["reward"])
    assert {"completion_length", "completion_length_max", "clipped_share", "clip_ratio", "entropy",
            "loss", "throughput"} <= set(log[-1])
    assert 0 < log[0]["total_tokens"] < log[-1]["total_tokens"]  # prompt + completion tokens sampled so far
    samples = Path(cfg.training.output_dir, "completions.jsonl").read_text().splitlines()
    assert {"step", "prompt", "completion", "reward", "rewards.py:digits"} <= set(json.loads(samples[-1]))
    assert result.extras["ref_model"] is None  # grpo_beta 0: no reference model
    out = Path(cfg.training.output_dir)
    assert (out / "model.safetensors").exists()
    assert json.loads((out / "train_results.json").read_text())["train_reward_mean"] == pytest.approx(
        result.metrics["train_reward_mean"])
    again = load_config(out / "lathe_config.yaml")  # the run can be repeated from its output folder:
    assert again.finetuning == cfg.finetuning and (out / "rewards.py").read_text() == DIGITS  # its reward file kept


def test_rloo_with_lora_and_kl_uses_the_adapter_switched_off(grpo_config):
    cfg = load_config(grpo_config(stage="rloo", finetuning_type="lora", lora_rank=4, grpo_beta=0.1, max_steps=2,
                                  per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=4,
                                  reward_funcs="rewards.py:digits,length", reward_weights="1,0.5",
                                  mask_truncated_completions=True, dynamic_sampling=True))
    result = run_stage(cfg)
    log = log_of(cfg)
    assert len(log) == 2 and result.extras["ref_model"] is None
    assert "rewards/length/mean" in log[0] and "kept_share" in log[0]
    assert (Path(cfg.training.output_dir) / "adapter_model.safetensors").exists()


def test_full_model_reference_only_with_beta(grpo_config):
    cfg = load_config(grpo_config(grpo_beta=0.05, max_steps=1, loss_type="dr_grpo", scale_rewards="none"))
    result = run_stage(cfg)
    assert result.extras["ref_model"] is not None
    assert log_of(cfg)[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # before its first step the policy is the reference


def test_accuracy_on_the_projects_arithmetic_data(grpo_config):
    cfg = load_config(grpo_config(dataset="lathe_arithmetic", reward_funcs="accuracy,format", max_steps=1,
                                  cutoff_len=256))
    run_stage(cfg)
    assert {"rewards/accuracy/mean", "rewards/format/mean"} <= set(log_of(cfg)[0])


def test_a_raising_reward_function_fails_the_step_by_name(grpo_config, tmp_path):
    (tmp_path / "bad.py").write_text("def score(prompts, completions, **columns):\n    return 1 / 0\n")
    cfg = load_config(grpo_config(reward_funcs="bad.py:score", max_steps=1))
    with pytest.raises(LatheError, match="`bad.py:score` raised ZeroDivisionError"):
        run_stage(cfg)


def test_a_missing_reward_file_fails_before_training(grpo_config):
    cfg = load_config(grpo_config(reward_funcs="nowhere.py:score"))
    with pytest.raises(LatheError, match="nowhere.py.*file not found"):
        run_stage(cfg)


@pytest.mark.parametrize("overrides, message", [
    ({"reward_funcs": None}, "needs `reward_funcs`"),
    ({"reward_model_adapters": "a"}, "`reward_model_adapters` shapes the model `reward_model` names"),
    ({"reward_funcs": "acuracy"}, "neither a built-in.*accuracy"),
    ({"reward_weights": "1,2"}, "2 weights for 1 reward functions"),
    ({"reward_weights": "one"}, "comma list of numbers"),
    ({"num_generations": 1}, "at least 2"),
    ({"num_generations": 6}, "multiple of `num_generations`"),
    ({"loss_type": "dapa"}, "choose one of grpo, bnpo, dr_grpo, dapo.*dapo"),
    ({"importance_sampling_level": "batch"}, "choose one of token, sequence"),
    ({"epsilon": 0}, "`epsilon` must be positive"),
    ({"max_new_tokens": 32}, "max_completion_length"),
    ({"do_sample": False}, "do_sample: true"),
    ({"ref_model": "/x"}, "`grpo_beta` is 0"),
    ({"stage": "rloo", "scale_rewards": "batch"}, "RLOO's leave-one-out advantage is not scaled"),
])
def test_bad_settings_are_refused_at_load(grpo_config, overrides, message):
    with pytest.raises(LatheError, match=message):
        load_config(grpo_config(**overrides))


EXAMPLES = sorted(p for p in (DATA.parent / "examples").rglob("*.yaml")
                  if yaml.safe_load(p.read_text()).get("stage") in ("grpo", "rloo"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_grpo_examples_run_on_a_tiny_model(path, small_vocab_model, tmp_path):
    """Each shipped grpo/rloo example runs as written, with the model swapped for a tiny one and 2 short steps."""
    cfg = load_config(path, [f"model_name_or_path={small_vocab_model}", f"output_dir={tmp_path / 'out'}",
                             "max_steps=2", "max_completion_length=8", f"dataset_dir={DATA}", "disable_tqdm=true",
                             "report_to=none", "gradient_accumulation_steps=1", "template=chatml", "plot_loss=false"])
    metrics = run_stage(cfg).metrics
    assert len(log_of(cfg)) == 2 and "train_reward_mean" in metrics


def test_dynamic_sampling_samples_again_until_groups_carry_a_signal(grpo_config, tmp_path):
    """A reward that is the same for a whole group on most prompts: DAPO's dynamic sampling samples more
    prompts (up to 4 rounds) and trains only on groups whose rewards differ."""
    (tmp_path / "sparse.py").write_text(
        "def score(prompts, completions, answer, **columns):\n"
        "    return [float(len(a) % 7 == 0) * len(c) for a, c in zip(answer, completions)]\n")
    cfg = load_config(grpo_config(reward_funcs="sparse.py:score", dynamic_sampling=True, max_steps=3,
                                  per_device_train_batch_size=8, num_generations=4))
    run_stage(cfg)
    log = log_of(cfg)
    assert all(1 <= r["sampling_rounds"] <= 4 and 0 <= r["kept_share"] <= 1 for r in log)
    assert any(r["sampling_rounds"] > 1 for r in log), log


def test_the_prompt_is_the_conversation_without_its_last_answer(demo_tokenizer_dir):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from lathe.data.templates import get_template
    from lathe.train.grpo_rollout import encode_prompt_batch

    tokenizer, template = AutoTokenizer.from_pretrained(demo_tokenizer_dir), get_template("chatml")
    turns = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"},
             {"role": "user", "content": "and 3 + 3?"}, {"role": "assistant", "content": "\\boxed{6}"}]
    out = encode_prompt_batch({"messages": [turns, turns[:3]], "system": ["", ""], "tools": ["", ""]},
                              template=template, tokenizer=tokenizer,
                              data_args=SimpleNamespace(default_system=None, cutoff_len=8))
    text = tokenizer.decode(out["input_ids"][0])
    assert text == template.render_prompt(tokenizer, turns[:3]) and text.endswith("<|im_start|>assistant\n")
    assert out["answer"] == ["\\boxed{6}", ""]  # a row ending with its prompt has no reference answer
    assert out["_drop"][0].startswith("prompt longer than cutoff_len")  # 8 tokens cannot hold it


def test_a_reward_model_mixes_with_reward_functions(grpo_config):
    """`reward_model` (here PPO's HTTP kind) is scored beside the functions, weighted last, logged as reward_model."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Scorer(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = json.dumps({"scores": [float(len(r)) for r in body["responses"]]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Scorer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = load_config(grpo_config(reward_funcs="length", reward_weights="1,0.5", max_steps=1,
                                      reward_model=f"http://127.0.0.1:{server.server_port}/score",
                                      reward_model_type="api"))
        run_stage(cfg)
    finally:
        server.shutdown()
    record = log_of(cfg)[0]
    assert record["rewards/reward_model/mean"] > 0
    expected = record["rewards/length/mean"] + 0.5 * record["rewards/reward_model/mean"]
    assert record["reward"] == pytest.approx(expected, abs=1e-5)


def test_grpo_options_are_refused_under_another_stage_and_shared_by_grpo_and_rloo(grpo_config):
    """Set away from its default, a grpo/rloo key under sft configures nothing: refused by name."""
    from lathe.errors import LatheError

    with pytest.raises(LatheError, match="`num_generations`.* only apply to `stage: grpo`, but this run uses `sft`"):
        load_config(grpo_config(stage="sft", num_generations=4))
    for stage in ("grpo", "rloo"):
        assert load_config(grpo_config(stage=stage, num_generations=4)).finetuning.stage == stage


def test_a_reference_column_is_what_the_rewards_compare_with(grpo_config, tmp_path):
    """lathe_arithmetic maps `reference: answer` (the bare number) while its response is a worked solution."""
    (tmp_path / "seen.py").write_text(
        "import json, pathlib\n"
        "def score(prompts, completions, answer, **columns):\n"
        f"    pathlib.Path({str(tmp_path / 'answers.json')!r}).write_text(json.dumps(list(answer)))\n"
        "    return [0.0] * len(completions)\n")
    run_stage(load_config(grpo_config(dataset="lathe_arithmetic", reward_funcs="seen.py:score", max_steps=1,
                                      cutoff_len=256)))
    answers = json.loads((tmp_path / "answers.json").read_text())
    assert answers and all(a.isdigit() for a in answers), answers[:4]


@pytest.mark.parametrize("finetuning", ["full", "lora"])
def test_completion_logps_through_the_chunked_output_layer_match_the_plain_path(tiny_llama, monkeypatch, finetuning):
    """Chunking forced on (threshold 0) and off: the same log-probs, entropies and gradients, to 1e-5."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lathe.model import memory
    from lathe.train import grpo_rollout

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    if finetuning == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.train()
    ids = torch.randint(5, 1000, (3, 18))
    attn = torch.ones_like(ids)
    attn[1, :4] = 0  # a left-padded prompt
    attn[2, 15:] = 0  # a completion that stopped early
    weights = torch.randn(3, 8)
    calls = []
    real = grpo_rollout.token_logps_and_entropy
    monkeypatch.setattr(grpo_rollout, "token_logps_and_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(threshold: int):
        monkeypatch.setattr(memory, "CHUNK_THRESHOLD_BYTES", threshold)
        logps, entropy = grpo_rollout.completion_logps(model, ids, attn, 10, 0.7, with_entropy=True)
        (logps * weights).sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            no_entropy = grpo_rollout.completion_logps(model, ids, attn, 10, 0.7)
        return logps.detach(), entropy, grads, no_entropy

    plain = run(1 << 62)
    assert not calls
    chunked = run(0)
    assert len(calls) == 2

    def close(got, want):
        return got.shape == want.shape and (got - want).abs().max() <= 1e-5 * want.abs().max() + 1e-9

    assert chunked[0].shape == (3, 8) and close(chunked[0], plain[0]) and close(chunked[1], plain[1])
    assert not chunked[1].requires_grad and chunked[3][1] is None and close(chunked[3][0], plain[0])
    assert chunked[2].keys() == plain[2].keys() and plain[2]
    assert all(close(chunked[2][k], plain[2][k]) for k in plain[2])


@pytest.mark.parametrize("method", [
    {"finetuning_type": "freeze", "freeze_trainable_layers": 1},
    {"finetuning_type": "lora", "lora_rank": 4, "quantization_bit": 4},  # QLoRA: bitsandbytes' CPU backend
    {"finetuning_type": "lora", "lora_rank": 4, "disable_gradient_checkpointing": False},
], ids=["freeze", "qlora", "lora-checkpointing"])
def test_grpo_trains_with_freeze_qlora_and_checkpointing(grpo_config, method):
    cfg = load_config(grpo_config(max_steps=2, **method))
    run_stage(cfg)
    assert [r["current_steps"] for r in log_of(cfg)] == [1, 2]
