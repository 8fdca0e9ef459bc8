"""GRPO's formulas (lathe.train.losses.grpo) against numbers computed by hand, and the reward functions."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lathe.errors import LatheError
from lathe.train.losses.grpo import (
    LOSS_TYPES,
    LossSettings,
    clipped_token_loss,
    constant_groups,
    group_advantages,
    grpo_loss,
    importance_log_ratio,
    k3_kl,
    rloo_advantages,
)
from lathe.train.reward_funcs import (
    BUILTIN_REWARDS,
    RewardFunction,
    call_reward,
    final_answer,
    last_boxed,
    load_user_function,
    overlong_penalty,
    same_answer,
    valid_calls,
)

# ---------------------------------------------------------------------------------------------- advantages


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0])  # two groups of two
    # group 1: mean 2, unbiased std sqrt(2); group 2: equal rewards, std 0 -> advantage 0
    a = 1 / (math.sqrt(2) + 1e-4)
    assert torch.allclose(group_advantages(rewards, 2, "group"), torch.tensor([-a, a, 0.0, 0.0]))
    # batch: the group's mean, the batch's std: var = (1 + 1 + 0 + 0) / 3
    b = 1 / (math.sqrt(2 / 3) + 1e-4)
    assert torch.allclose(group_advantages(rewards, 2, "batch"), torch.tensor([-b, b, 0.0, 0.0]))
    assert torch.equal(group_advantages(rewards, 2, "none"), torch.tensor([-1.0, 1.0, 0.0, 0.0]))


def test_rloo_leave_one_out_baseline_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    # baselines (6 - 1) / 2 = 2.5, (6 - 2) / 2 = 2, (6 - 3) / 2 = 1.5; a constant group gets 0
    assert torch.allclose(rloo_advantages(rewards, 3), torch.tensor([-1.5, 0.0, 1.5, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError):
        rloo_advantages(rewards, 1)


def test_constant_groups_are_found():
    assert constant_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0]), 2).tolist() == [True, False, True]


# ---------------------------------------------------------------------------------------------- pieces of the loss


def test_k3_kl_by_hand():
    # policy 0.5, reference 0.25: exp(q - p) - (q - p) - 1 = 0.5 + ln 2 - 1
    kl = k3_kl(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert kl.item() == pytest.approx(0.5 + math.log(2) - 1)
    assert k3_kl(torch.tensor([-1.0]), torch.tensor([-1.0])).item() == 0.0


def test_clip_higher_by_hand():
    coef = torch.tensor([[1.5, 1.5, 0.5, 0.5]])
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    # 1.5 with A > 0 is cut at 1 + 0.28; with A < 0 the unclipped (worse) term wins; 0.5 with A < 0 is cut at 0.8
    assert clipped_token_loss(coef, adv, 0.2, 0.28).tolist()[0] == pytest.approx([-1.28, 1.5, 0.8, -0.5])


def test_sequence_ratio_is_the_masked_mean_of_token_log_ratios():
    logps = torch.tensor([[0.1, 0.2, 0.3]])
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert importance_log_ratio(logps, old, mask, "sequence").item() == pytest.approx(0.15)
    assert torch.equal(importance_log_ratio(logps, old, mask, "token"), logps)


# ---------------------------------------------------------------------------------------------- normalisations

# Ratio 1 (on-policy), so each token's loss is -A: row 1 [-1, -1, -1], row 2 [2] (two tokens masked).
ADV = torch.tensor([1.0, -2.0])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
LOGPS = torch.full((2, 3), -1.0)


@pytest.mark.parametrize("loss_type, num_items, expected", [
    ("grpo", None, (-1.0 + 2.0) / 2),  # each row's token mean, then the mean of rows
    ("bnpo", None, (-3.0 + 2.0) / 4),  # the micro-batch's 4 tokens
    ("dapo", None, (-3.0 + 2.0) / 4),  # by default the tokens given ...
    ("dapo", 8, (-3.0 + 2.0) / 8),  # ... but the whole optimiser batch's when told
    ("dr_grpo", None, (-3.0 + 2.0) / (2 * 5)),  # rows x max_completion_length 5
])
def test_each_loss_type_normalises_as_written(loss_type, num_items, expected):
    out = grpo_loss(LOGPS, LOGPS, ADV, MASK, LossSettings(loss_type=loss_type, max_completion_length=5),
                    num_items=num_items)
    assert out.loss.item() == pytest.approx(expected)
    assert out.clip_ratio == 0.0 and out.kl is None


def test_kl_term_adds_beta_times_k3():
    ref = LOGPS + math.log(0.5)  # exp(q - p) = 0.5 at every token
    k3 = 0.5 + math.log(2) - 1
    out = grpo_loss(LOGPS, LOGPS, torch.zeros(2), MASK, LossSettings(loss_type="grpo", beta=0.1), ref_logps=ref)
    assert out.loss.item() == pytest.approx(0.1 * k3)
    assert out.kl == pytest.approx(k3)
    with pytest.raises(ValueError):
        grpo_loss(LOGPS, LOGPS, ADV, MASK, LossSettings(beta=0.1))


def test_clip_ratio_counts_tokens_cut_towards_their_advantage():
    logps = torch.tensor([[math.log(1.5), 0.0, 0.0], [0.0, 0.0, 0.0]])
    out = grpo_loss(logps, torch.zeros(2, 3), ADV, MASK, LossSettings(loss_type="bnpo", epsilon=0.2))
    assert out.clip_ratio == pytest.approx(1 / 4)  # one of the 4 completion tokens


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_micro_batches_sum_to_the_whole_batch(loss_type, level):
    """Two micro-batches, each weighted by its loss type's `weight`, give the gradient of one batch of 4
    (bnpo: the mean of the micro-batches' token means, as TRL averages over accumulation steps)."""
    torch.manual_seed(0)
    logits = torch.randn(4, 5, requires_grad=True)
    old = torch.randn(4, 5)
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.float)
    settings = LossSettings(loss_type=loss_type, importance_sampling_level=level, max_completion_length=5)
    items = float(mask.sum())
    whole = grpo_loss(logits, old, adv, mask, settings, num_items=items).loss
    if loss_type == "bnpo":
        whole = (grpo_loss(logits[:2], old[:2], adv[:2], mask[:2], settings).loss
                 + grpo_loss(logits[2:], old[2:], adv[2:], mask[2:], settings).loss) / 2
    parts = sum(LOSS_TYPES[loss_type].weight(2, 4, 2)
                * grpo_loss(logits[s], old[s], adv[s], mask[s], settings, num_items=items).loss
                for s in (slice(0, 2), slice(2, 4)))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------- rewards


def test_final_answer_extraction():
    assert last_boxed(r"so \boxed{1} then \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert last_boxed("no box") is None
    assert final_answer("It costs 3 apples and 1,250 coins.") == "1,250"
    assert final_answer(r"\boxed{42} and 7") == "42"
    assert final_answer("none") is None
    assert same_answer("1,000", "1000.0") and same_answer("4/2", "2") and same_answer(" Paris ", "paris")
    assert not same_answer("3", "4")


def cfg_stub(**finetuning):
    base = {"reward_format_pattern": None, "max_completion_length": 10, "overlong_buffer_len": 4}
    return SimpleNamespace(finetuning=SimpleNamespace(**{**base, **finetuning}), source="c.yaml")


def test_accuracy_reward():
    score = BUILTIN_REWARDS["accuracy"].make(cfg_stub(), None)
    got = score(["p"] * 3, [r"the answer is \boxed{12}", "I think 7", "no idea"],
                answer=["12", "The answer is 8.", "3"])
    assert got == [1.0, 0.0, 0.0]
    with pytest.raises(LatheError, match="no reference answer"):
        score(["p"], ["1"], answer=[""])


def test_format_reward():
    default = BUILTIN_REWARDS["format"].make(cfg_stub(), None)
    assert default(["p"] * 3, ["<think>hm</think> 4", "4", "<think>hm</think>"]) == [1.0, 0.0, 0.0]
    custom = BUILTIN_REWARDS["format"].make(cfg_stub(reward_format_pattern=r"Answer: \d+"), None)
    assert custom(["p"] * 2, ["Answer: 12", "Answer: twelve"]) == [1.0, 0.0]


def test_overlong_penalty_by_hand():
    # max 10, buffer 4: free up to 6, then linear to -1 at 10
    assert [overlong_penalty(n, 10, 4) for n in (3, 6, 8, 10, 12)] == [0.0, 0.0, -0.5, -1.0, -1.0]
    score = BUILTIN_REWARDS["length"].make(cfg_stub(), None)
    assert score(["p"] * 2, ["a", "b"], completion_length=[7, 9]) == [-0.25, -0.75]


def test_tool_call_reward_parses_with_the_template():
    from lathe.data.templates import get_template

    template = get_template("qwen")
    tools = '[{"type": "function", "function": {"name": "add", "parameters": {"required": ["a", "b"]}}}]'
    good = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    missing = '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>'
    other = '<tool_call>\n{"name": "mul", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    assert valid_calls(template.parse_tool_calls(good), tools)
    score = BUILTIN_REWARDS["tool_call"].make(cfg_stub(), template)
    assert score(["p"] * 4, [good, missing, other, "just text"], tools=[tools] * 4) == [1.0, 0.0, 0.0, 0.0]


def test_bad_reward_functions_name_themselves(tmp_path, caplog):
    def wrong_length(prompts, completions, **_):
        return [1.0]

    def nan(prompts, completions, **_):
        return [float("nan")] * len(completions)

    def raising(prompts, completions, **_):
        raise KeyError("gold")

    for fn, message in ((wrong_length, "returned 1 scores for 2 completions"), (nan, "finite"),
                        (raising, "raised KeyError")):
        with pytest.raises(LatheError, match=f"`{fn.__name__}`.*{message}"):
            call_reward(RewardFunction(fn.__name__, fn), ["p", "q"], ["a", "b"], {})
    assert caplog.text.count("Traceback") == 1  # the raising one, once

    with pytest.raises(LatheError, match="file not found"):
        load_user_function("nowhere.py:score", tmp_path)
    (tmp_path / "mine.py").write_text("def scroe(prompts, completions, **columns):\n    return [0.0]\n")
    with pytest.raises(LatheError, match="no function `score`.*scroe"):
        load_user_function("mine.py:score", tmp_path)
