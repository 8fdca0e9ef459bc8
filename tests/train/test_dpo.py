"""DPO and variants on a tiny model: the reward margin on the training pairs grows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.train import run_stage
from tests.conftest import shared_path

PAIRS = [
    ("Who are you?", "I am Lathe Assistant.", "I am a teapot."),
    ("What is your name?", "Lathe Assistant.", "Nobody knows."),
    ("Who made you?", "I was fine-tuned with lathe.", "A wizard made me."),
    ("Spell out 12.", "twelve", "one two"),
    ("Spell out 40.", "forty", "four zero"),
    ("Spell out 7.", "seven", "sevven"),
    ("Say hello.", "Hello!", "Goodbye!"),
    ("Is the sky blue?", "Yes, on a clear day.", "The sky is green."),
]


@pytest.fixture
def pairwise_dir(tmp_path) -> Path:
    return write_pairs(tmp_path, PAIRS)


def write_pairs(tmp_path: Path, pairs: list[tuple[str, str, str]]) -> Path:
    """A dataset folder with `pairs` (prompt, chosen, rejected) registered as the ranking dataset `pairs`."""
    rows = [{"conversations": [{"from": "human", "value": q}],
             "chosen": {"from": "gpt", "value": c}, "rejected": {"from": "gpt", "value": r}} for q, c, r in pairs]
    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "pairs.json").write_text(json.dumps(rows))
    (folder / "dataset_info.json").write_text(json.dumps({"pairs": {
        "file_name": "pairs.json", "formatting": "sharegpt", "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}}))
    return folder


def margins(output_dir: str) -> list[float]:
    lines = Path(output_dir, "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line)["rewards/margins"] for line in lines if "rewards/margins" in line]


@pytest.mark.parametrize("loss", ["sigmoid", "hinge", "ipo", "orpo", "simpo"])
def test_margin_grows(sft_config, pairwise_dir, loss):
    cfg = load_config(sft_config(stage="dpo", dataset="pairs", dataset_dir=str(pairwise_dir), pref_loss=loss,
                                 max_steps=12, learning_rate=1e-2, per_device_train_batch_size=4, lora_rank=16))
    result = run_stage(cfg)
    m = margins(cfg.training.output_dir)
    assert len(m) == 12
    assert sum(m[-3:]) / 3 > sum(m[:3]) / 3 + 1e-3, m
    if loss in ("orpo", "simpo"):
        assert result.extras["ref_model"] is None


def test_lora_reference_is_the_adapter_switched_off(sft_config, pairwise_dir):
    cfg = load_config(sft_config(stage="dpo", dataset="pairs", dataset_dir=str(pairwise_dir), max_steps=1))
    result = run_stage(cfg)
    assert result.extras["ref_model"] is None  # no second copy of the weights
    log = json.loads(Path(cfg.training.output_dir, "trainer_log.jsonl").read_text().splitlines()[0])
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"} <= set(log)


def test_full_finetuning_keeps_a_frozen_reference(sft_config, pairwise_dir):
    cfg = load_config(sft_config(stage="dpo", dataset="pairs", dataset_dir=str(pairwise_dir), max_steps=2,
                                 finetuning_type="full", learning_rate=1e-3))
    result = run_stage(cfg)
    ref = result.extras["ref_model"]
    assert ref is not None and not any(p.requires_grad for p in ref.parameters())
    policy = dict(result.model.named_parameters())
    changed = any(not (p.data == policy[n].data).all() for n, p in ref.named_parameters())
    assert changed  # the policy moved away from the frozen reference


@pytest.mark.parametrize("stage, dataset", [("dpo", "lathe_pairs"), ("kto", "lathe_feedback")])
def test_a_separate_reference_is_placed_where_the_policy_runs(sft_config, monkeypatch, stage, dataset):
    """The Trainer moves only the policy to the device; the reference copy must follow it (on a GPU
    it would otherwise stay on the CPU). Here on the CPU: the accelerator is asked to place it."""
    from accelerate import Accelerator

    placed, real = [], Accelerator.prepare_model

    def spy(self, model, *args, evaluation_mode=False, **kwargs):
        if evaluation_mode:
            placed.append(model)
        return real(self, model, *args, evaluation_mode=evaluation_mode, **kwargs)

    monkeypatch.setattr(Accelerator, "prepare_model", spy)
    cfg = load_config(sft_config(stage=stage, dataset=dataset, max_steps=1, finetuning_type="full"))
    result = run_stage(cfg)
    assert placed and placed[0] is result.extras["ref_model"]


def test_dpo_on_shared_demo_data(sft_config):
    data_dir = shared_path("data")
    cfg = load_config(sft_config(stage="dpo", dataset="dpo_en_demo", dataset_dir=str(data_dir), max_samples=8,
                                 cutoff_len=96, max_steps=2))
    assert run_stage(cfg).metrics["train_loss"] > 0


def test_unpaired_data_is_refused_for_dpo(sft_config):
    cfg = load_config(sft_config(stage="dpo"))  # lathe_identity has no chosen/rejected
    with pytest.raises(LatheError, match="chosen/rejected"):
        run_stage(cfg)


def test_reference_with_another_tokenizer_is_refused(sft_config, pairwise_dir):
    from lathe.testing.tiny import build_tiny_model

    other = build_tiny_model("llama", shared_path("tokenizers", "gpt2-dialogpt-small"), hidden_size=32)
    cfg = load_config(sft_config(stage="dpo", dataset="pairs", dataset_dir=str(pairwise_dir), ref_model=str(other),
                                 max_steps=1))
    with pytest.raises(LatheError, match="different tokenizer"):
        run_stage(cfg)


def test_orpo_with_ref_model_is_refused(sft_config, pairwise_dir):
    with pytest.raises(LatheError, match="no reference model"):
        load_config(sft_config(stage="dpo", dataset="pairs", pref_loss="orpo", ref_model="/x"))


def test_pairwise_data_for_sft_names_the_right_stages(sft_config, pairwise_dir):
    cfg = load_config(sft_config(dataset="pairs", dataset_dir=str(pairwise_dir)))
    with pytest.raises(LatheError, match="stage: rm"):
        run_stage(cfg)


def test_oft_serves_as_its_own_reference(sft_config, pairwise_dir):
    from lathe.model.adapters import apply_method
    from lathe.model.load import load_model, load_tokenizer
    from lathe.train.reference import build_reference

    cfg = load_config(sft_config(stage="dpo", dataset="pairs", dataset_dir=str(pairwise_dir), finetuning_type="oft",
                                 max_steps=1))
    tokenizer = load_tokenizer(cfg.model)
    model = apply_method(load_model(cfg, tokenizer), cfg)
    assert build_reference(cfg, model, tokenizer) is None  # the adapter switched off, no second copy
