"""DPO's variants: kto_pair, BCO (`pref_bco_weight`) and LD-DPO (`ld_alpha`), against hand-computed
values, then a few training steps of each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.train import run_stage
from lathe.train.losses.logps import ld_weights, sequence_logps
from lathe.train.losses.preference import RunningMean, bco_loss, kto_pair_loss, mix_bco
from tests.train.test_dpo import write_pairs


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_kto_pair_against_hand_values():
    # log-ratios: chosen (0.5, 0), rejected (-1, 1); reference points: z_c = max(0, 0.25), z_r = max(0, 0)
    losses = kto_pair_loss(t(-1, -2), t(-3, -1), t(-1.5, -2), t(-2, -2), beta=0.5)
    chosen = [1 - sigmoid(0.5 * (0.5 - 0)), 1 - sigmoid(0.5 * (0 - 0))]
    rejected = [1 - sigmoid(0.5 * (0.25 + 1)), 1 - sigmoid(0.5 * (0.25 - 1))]
    torch.testing.assert_close(losses, t((chosen[0] + rejected[0]) / 2, (chosen[1] + rejected[1]) / 2))


def test_kto_pair_floors_the_reference_points_at_zero():
    # both mean log-ratios negative: z_c = z_r = 0
    losses = kto_pair_loss(t(-2.0), t(-2.0), t(-1.0), t(-1.0), beta=1.0)
    assert losses.item() == pytest.approx(((1 - sigmoid(-1)) + (1 - sigmoid(1))) / 2)


def test_bco_against_hand_values():
    # rewards: chosen 0.1 * (−1 − (−2)) = 0.1, rejected 0.1 * (−3 − (−2)) = −0.1; baseline 0.05
    losses = bco_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.1, baseline=0.05)
    expected = -math.log(sigmoid(0.1 - 0.05)) - math.log(sigmoid(-(-0.1 - 0.05)))
    assert losses.item() == pytest.approx(expected)
    assert mix_bco(t(1.0), t(3.0), weight=0.5).item() == pytest.approx((1 + 1.5) / 1.5)


def test_running_mean_is_the_mean_of_everything_seen():
    mean = RunningMean()
    assert mean.update(t(1.0)) == pytest.approx(1.0)  # the first update sets it (count starts at 1e-24)
    assert mean.update(t(3.0)) == pytest.approx(2.0)
    assert mean.update(t(2.0, 6.0)) == pytest.approx(3.0)  # (1 + 3 + 2 + 6) / 4


def test_ld_weights_scale_the_tail_past_the_shorter_answer():
    scored = torch.tensor([
        [0, 1, 1, 1, 0],  # chosen 1: 3 tokens, its pair has 2 -> the third weighs alpha
        [0, 0, 1, 1, 1],  # chosen 2: 3 tokens, its pair has 4 -> all weigh 1
        [1, 1, 0, 0, 0],  # rejected 1
        [0, 1, 1, 1, 1],  # rejected 2: its fourth weighs alpha
    ]).bool()
    expected = torch.tensor([[0, 1, 1, 0.25, 0], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 1, 1, 0.25]])
    torch.testing.assert_close(ld_weights(scored, 0.25), expected)


def test_sequence_logps_with_ld_alpha():
    logits = torch.zeros(2, 5, 4)  # uniform: every token has log-prob -ln 4
    labels = torch.tensor([[-100, 1, 2, 3, -100], [-100, 1, 2, -100, -100]])  # 3 and 2 learned tokens
    plain, counts = sequence_logps(logits, labels)
    weighted, ld_counts = sequence_logps(logits, labels, ld_alpha=0.5)
    ln4 = math.log(4)
    torch.testing.assert_close(plain, torch.tensor([-3 * ln4, -2 * ln4]))
    torch.testing.assert_close(weighted, torch.tensor([-(2 + 0.5) * ln4, -2 * ln4]))
    assert counts.tolist() == ld_counts.tolist() == [3, 2]  # averages still divide by the full length


# --------------------------------------------------------------------------- training runs

PAIRS = [
    ("Who are you?", "I am Lathe Assistant, a helpful model.", "A teapot."),
    ("What is your name?", "Lathe.", "Nobody knows my name at all."),
    ("Spell out 12.", "twelve", "one two"),
    ("Say hello.", "Hello! Nice to meet you.", "Bye."),
]


@pytest.fixture
def pairs_dir(tmp_path) -> Path:
    return write_pairs(tmp_path, PAIRS)


def dpo_lines(sft_config, pairs_dir, name, **overrides) -> list[dict]:
    cfg = load_config(sft_config(stage="dpo", dataset="pairs", dataset_dir=str(pairs_dir), learning_rate=1e-2,
                                 per_device_train_batch_size=4, output_dir=str(pairs_dir.parent / name), **overrides))
    run_stage(cfg)
    lines = Path(cfg.training.output_dir, "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"loss"' in line]


def test_kto_pair_trains(sft_config, pairs_dir):
    lines = dpo_lines(sft_config, pairs_dir, "kto_pair", pref_loss="kto_pair", max_steps=8)
    assert all(math.isfinite(line["loss"]) for line in lines)
    assert lines[0]["loss"] == pytest.approx(0.5, abs=1e-4)  # LoRA starts at the reference: 1 - sigmoid(0)
    assert lines[-1]["rewards/margins"] > lines[0]["rewards/margins"]


def test_bco_is_mixed_in_with_its_running_baseline(sft_config, pairs_dir):
    lines = dpo_lines(sft_config, pairs_dir, "bco", pref_bco_weight=0.5, max_steps=4)
    for line in lines:
        assert math.isfinite(line["loss"]) and math.isfinite(line["bco_loss"])
    # step 1: policy == reference, every reward 0, baseline 0: DPO's ln 2 and BCO's 2 ln 2, mixed 1:0.5
    assert lines[0]["bco_baseline"] == pytest.approx(0, abs=1e-6)
    assert lines[0]["loss"] == pytest.approx((math.log(2) + 0.5 * 2 * math.log(2)) / 1.5, rel=1e-4)
    assert lines[-1]["bco_baseline"] != 0  # it follows the mean reward


def test_ld_alpha_down_weights_the_longer_answers_tail(sft_config, pairs_dir):
    plain = dpo_lines(sft_config, pairs_dir, "plain", max_steps=2)
    ld = dpo_lines(sft_config, pairs_dir, "ld", ld_alpha=0.0, max_steps=2)
    assert all(math.isfinite(line["loss"]) for line in ld)
    # step 1 sees the same model and batch: only the weighting differs; the longer answers lose their tail
    assert ld[0]["logps/chosen"] > plain[0]["logps/chosen"]
    assert ld[0]["logps/rejected"] > plain[0]["logps/rejected"]


@pytest.mark.parametrize("overrides, words", [
    ({"stage": "dpo", "pref_loss": "simpo", "pref_bco_weight": 0.5}, "uses none"),
    ({"stage": "sft", "pref_bco_weight": 0.5}, "stage: dpo"),
    ({"stage": "kto", "ld_alpha": 0.5}, "stage: dpo"),
])
def test_refused(sft_config, overrides, words):
    with pytest.raises(LatheError, match=words.replace(":", ".")):
        load_config(sft_config(**overrides))
