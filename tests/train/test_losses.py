"""The training losses against numbers worked out by hand (plain `math`), plus their properties."""

from __future__ import annotations

import math

import pytest
import torch

from lathe.config import load_config
from lathe.config.options import FinetuningArguments
from lathe.errors import LatheError
from lathe.registry import PREFERENCE_LOSSES
from lathe.train.losses.logps import sequence_logps
from lathe.train.losses.ppo import (
    AdaptiveKLController,
    FixedKLController,
    gae_advantages,
    kl_penalty_rewards,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)
from lathe.train.losses.preference import kto_loss, orpo_loss, sigmoid_loss, simpo_loss
from lathe.train.losses.reward import pairwise_accuracy, pairwise_reward_loss


def dpo_loss(pc, pr, rc, rr, beta, loss_type="sigmoid", label_smoothing=0.0):
    """A reference-based `pref_loss` through its registered descriptor: what the DPO stage runs."""
    args = FinetuningArguments(pref_beta=beta, dpo_label_smoothing=label_smoothing)
    out = PREFERENCE_LOSSES[loss_type].compute(pc, pr, rc, rr, args)
    return out.losses, out.chosen_rewards, out.rejected_rewards


def t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def neg_logsigmoid(x: float) -> float:
    return math.log(1 + math.exp(-x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def close(actual: torch.Tensor, expected: list[float] | float, tol: float = 1e-9) -> None:
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    assert torch.allclose(actual.detach().double(), expected_t, atol=tol, rtol=0), (actual, expected)


# ----------------------------------------------------------------------------- sequence_logps


def test_sequence_logps_matches_manual_log_softmax_and_skips_ignored():
    logits = torch.tensor(
        [
            [[1.0, 2.0, 0.0], [0.5, 0.5, 3.0], [2.0, 0.0, 1.0], [0.0, 0.0, 0.0]],
            [[3.0, 1.0, 1.0], [0.0, 2.0, 1.0], [1.0, 1.0, 4.0], [9.0, 9.0, 9.0]],
        ]
    )
    labels = torch.tensor([[7, 1, 2, 0], [-100, -100, 1, -100]])  # labels[:, 0] is never scored

    def lp(row: list[float], k: int) -> float:  # log softmax(row)[k], by hand
        return row[k] - math.log(sum(math.exp(v) for v in row))

    # row 0: logits[0,0] predicts labels[0,1]=1, logits[0,1] predicts 2, logits[0,2] predicts 0
    expected0 = lp([1.0, 2.0, 0.0], 1) + lp([0.5, 0.5, 3.0], 2) + lp([2.0, 0.0, 1.0], 0)
    # row 1: only labels[1,2]=1 is scored, predicted by logits[1,1]
    expected1 = lp([0.0, 2.0, 1.0], 1)
    sums, counts = sequence_logps(logits, labels)
    close(sums, [expected0, expected1], tol=1e-5)
    assert counts.tolist() == [3, 1]

    # and the same as torch's own log_softmax + gather
    safe = labels[:, 1:].clamp(min=0)
    ref = logits[:, :-1].log_softmax(-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    ref = (ref * (labels[:, 1:] != -100)).sum(-1)
    close(sums, ref.double().tolist(), tol=1e-5)


def test_sequence_logps_custom_ignore_index_bf16_and_backward():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.tensor([[0, 3, 4, -1, -1], [-1, 10, 0, 2, 5]])
    sums, counts = sequence_logps(logits, labels, ignore_index=-1)
    assert sums.dtype == torch.float32 and counts.tolist() == [2, 4]
    ref = logits.float()[:, :-1].log_softmax(-1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    close(sums, (ref * (labels[:, 1:] != -1)).sum(-1).double().tolist(), tol=1e-4)
    sums.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()
    assert logits.grad[:, -1].abs().sum() == 0  # the last position predicts nothing


def test_sequence_logps_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="logits"):
        sequence_logps(torch.zeros(2, 4, 3), torch.zeros(2, 5, dtype=torch.long))


# ----------------------------------------------------------------------------- DPO


def test_dpo_sigmoid_by_hand():
    pc, pr, rc, rr = t(-1.0, -2.0, grad=True), t(-3.0, -1.0), t(-1.5, -2.0), t(-2.5, -1.5)
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta=0.1)
    # h = (pc - rc) - (pr - rr): row 0 (0.5) - (-0.5) = 1.0; row 1 (0.0) - (0.5) = -0.5
    close(losses, [neg_logsigmoid(0.1 * 1.0), neg_logsigmoid(0.1 * -0.5)])
    close(cr, [0.05, 0.0])
    close(rj, [-0.05, 0.05])
    assert not cr.requires_grad and not rj.requires_grad
    losses.sum().backward()
    assert pc.grad is not None and (pc.grad < 0).all()  # raising the chosen logp lowers the loss


def test_dpo_sigmoid_is_log2_when_policy_equals_reference():
    x = t(-4.0, -7.5, -0.3)
    y = t(-1.0, -2.0, -9.0)
    losses, cr, rj = dpo_loss(x, y, x, y, beta=0.5)
    close(losses, [math.log(2)] * 3)
    close(cr, [0.0] * 3)
    close(rj, [0.0] * 3)


def test_dpo_larger_chosen_margin_lowers_loss():
    ref = t(-5.0)
    values = [dpo_loss(t(c), t(-5.0), ref, ref, beta=0.1)[0].item() for c in (-6.0, -5.0, -4.0, -1.0)]
    assert values == sorted(values, reverse=True) and len(set(values)) == 4


def test_dpo_label_smoothing_by_hand_and_symmetric_at_half():
    ref = t(0.0, 0.0)
    pc, pr = t(2.0, -2.0), t(0.0, 0.0)  # h = +2 and -2
    losses, _, _ = dpo_loss(pc, pr, ref, ref, beta=1.0, label_smoothing=0.25)
    close(losses, [0.75 * neg_logsigmoid(2) + 0.25 * neg_logsigmoid(-2), 0.75 * neg_logsigmoid(-2) + 0.25 * neg_logsigmoid(2)])
    half, _, _ = dpo_loss(pc, pr, ref, ref, beta=1.0, label_smoothing=0.5)
    close(half[0], half[1].item())  # L(h) == L(-h): a coin-flip label teaches no preference


def test_dpo_hinge_by_hand_and_zero_beyond_margin():
    ref = t(0.0, 0.0, 0.0)
    losses, _, _ = dpo_loss(t(1.0, 5.0, 20.0), t(0.0, 0.0, 0.0), ref, ref, beta=0.1, loss_type="hinge")
    # 1 - beta*h: 1 - 0.1 = 0.9; 1 - 0.5 = 0.5; h = 20 > 1/beta = 10 -> 0
    close(losses, [0.9, 0.5, 0.0])


def test_dpo_ipo_by_hand_and_minimum_at_half_inverse_beta():
    beta = 0.25  # target margin 1/(2 beta) = 2
    ref = t(0.0, 0.0, 0.0)
    losses, _, _ = dpo_loss(t(2.0, 0.0, 3.0), t(0.0, 0.0, 0.0), ref, ref, beta=beta, loss_type="ipo")
    close(losses, [0.0, 4.0, 1.0])
    h = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    loss, _, _ = dpo_loss(h, t(0.0), t(0.0), t(0.0), beta=beta, loss_type="ipo")
    loss.sum().backward()
    assert h.grad.abs().item() < 1e-12  # stationary point
    # and a larger margin than the target is penalised too, unlike DPO
    assert dpo_loss(t(4.0), t(0.0), t(0.0), t(0.0), beta=beta, loss_type="ipo")[0].item() > 0


def test_unknown_loss_type_and_smoothing_out_of_range_are_refused():
    x = t(0.0)
    with pytest.raises(LatheError, match="hinge, ipo, kto_pair, orpo, sigmoid, simpo"):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="robust")
    with pytest.raises(ValueError, match="label_smoothing"):
        sigmoid_loss(x, x, x, x, beta=0.1, label_smoothing=0.7)


def test_label_smoothing_belongs_to_the_sigmoid_loss(tmp_path):
    base = ["model_name_or_path=m", f"output_dir={tmp_path}", "stage=dpo"]
    with pytest.raises(LatheError, match="dpo_label_smoothing.*pref_loss: sigmoid"):
        load_config(None, [*base, "pref_loss=hinge", "dpo_label_smoothing=0.1"])
    assert load_config(None, [*base, "dpo_label_smoothing=0.1"]).finetuning.dpo_label_smoothing == 0.1


def test_each_preference_loss_says_what_it_needs():
    """Which losses compare with a reference and which average per token: declared on the loss, nowhere else."""
    needs = {name: (loss.reference, loss.average) for name, loss in PREFERENCE_LOSSES.items()}
    assert needs == {"sigmoid": (True, False), "hinge": (True, False), "ipo": (True, True),
                     "orpo": (False, True), "simpo": (False, True), "kto_pair": (True, False)}


# ----------------------------------------------------------------------------- ORPO / SimPO


def test_orpo_by_hand():
    c, r = math.log(0.8), math.log(0.5)
    chosen, rejected = t(c, grad=True), t(r)
    losses, ratio = orpo_loss(chosen, rejected, beta=0.1)
    # odds(0.8) = 4, odds(0.5) = 1 -> log odds ratio = log 4
    close(ratio, [math.log(4)])
    close(losses, [0.1 * neg_logsigmoid(math.log(4))])  # = 0.1 * log(1.25)
    close(losses, [0.1 * math.log(1.25)])
    losses.sum().backward()
    assert chosen.grad.item() < 0


def test_orpo_is_finite_near_zero_logp():
    for dtype in (torch.float32, torch.float64):
        chosen = torch.tensor([-1e-6, 0.0, -1e-12], dtype=dtype, requires_grad=True)
        rejected = torch.tensor([-3.0, -1e-6, 0.0], dtype=dtype, requires_grad=True)
        losses, ratio = orpo_loss(chosen, rejected, beta=0.2)
        assert torch.isfinite(losses).all() and torch.isfinite(ratio).all()
        losses.sum().backward()
        assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    # -1e-6: log odds = log(1 - 1e-6) - log(1 - exp(-1e-6)) ~ -log(1e-6) = 13.8155...
    _, ratio = orpo_loss(t(-1e-6), t(math.log(0.5)), beta=1.0)
    close(ratio, [math.log((math.exp(-1e-6)) / -math.expm1(-1e-6))], tol=1e-6)


def test_simpo_by_hand():
    # LLaMA-Factory's form: logits = c - r - gamma/beta; loss = -logsigmoid(beta * logits)
    c, r, beta, gamma = -0.5, -1.25, 2.0, 0.5
    losses = simpo_loss(t(c, -1.0, grad=True), t(r, -1.0), beta=beta, gamma=gamma)
    close(losses, [neg_logsigmoid(beta * (c - r) - gamma), neg_logsigmoid(-gamma)])
    close(losses[0], neg_logsigmoid(2.0 * 0.75 - 0.5))  # = log(1 + e^-1)
    losses.sum().backward()


# ----------------------------------------------------------------------------- KTO


def test_kto_by_hand_with_weights():
    beta, kl = 0.5, 0.4
    pc, rc = t(-1.0, -2.0, grad=True), t(-2.0, -2.0)  # log-ratios 1.0, 0.0
    pr, rr = t(-3.0), t(-1.0)  # log-ratio -2.0
    losses, cr, rj = kto_loss(pc, pr, rc, rr, torch.tensor(kl), beta, desirable_weight=1.5, undesirable_weight=0.5)
    expected = [
        1.5 * (1 - sigmoid(0.5 * (1.0 - 0.4))),
        1.5 * (1 - sigmoid(0.5 * (0.0 - 0.4))),
        0.5 * (1 - sigmoid(0.5 * (0.4 - -2.0))),
    ]
    close(losses, expected, tol=1e-7)  # kl goes through float64 from a float32 tensor
    close(cr, [0.5, 0.0])
    close(rj, [-1.0])
    losses.sum().backward()
    assert (pc.grad < 0).all()


def test_kto_kl_is_detached_clamped_and_averaged():
    pc, rc = t(0.0), t(0.0)
    empty = t()
    neg, _, _ = kto_loss(pc, empty, rc, empty, kl=-3.0, beta=1.0)
    close(neg, [0.5])  # a negative KL estimate is raised to 0: 1 - sigmoid(0)
    kl = torch.tensor([0.2, 0.6], dtype=torch.float64, requires_grad=True)
    pc = t(0.0, grad=True)
    losses, _, _ = kto_loss(pc, empty, rc, empty, kl=kl, beta=1.0)
    close(losses, [1 - sigmoid(-0.4)])  # the mean of the vector
    losses.sum().backward()
    assert pc.grad is not None
    assert kl.grad is None


def test_kto_empty_groups():
    beta = 0.1
    only_chosen, cr, rj = kto_loss(t(-1.0, grad=True), t(), t(-1.5), t(), kl=0.0, beta=beta)
    close(only_chosen, [1 - sigmoid(0.05)])
    assert cr.shape == (1,) and rj.shape == (0,)
    only_rejected, cr, rj = kto_loss(t(), t(-1.0, grad=True), t(), t(-1.5), kl=0.0, beta=beta)
    close(only_rejected, [1 - sigmoid(-0.05)])
    assert cr.shape == (0,) and rj.shape == (1,)
    only_rejected.sum().backward()
    nothing, _, _ = kto_loss(t(), t(), t(), t(), kl=0.0, beta=beta)
    assert nothing.shape == (0,)


# ----------------------------------------------------------------------------- reward model


def test_pairwise_reward_loss_and_accuracy_by_hand():
    chosen, rejected = t(2.0, 0.0, 1.0, grad=True), t(1.0, 0.5, 1.0)
    loss = pairwise_reward_loss(chosen, rejected)
    close(loss, (neg_logsigmoid(1.0) + neg_logsigmoid(-0.5) + math.log(2)) / 3)
    loss.backward()
    assert (chosen.grad < 0).all()
    close(pairwise_accuracy(chosen, rejected), 1 / 3, tol=1e-7)  # the tie counts as wrong (float32)


# ----------------------------------------------------------------------------- PPO pieces


def test_masked_mean_and_var_by_hand():
    x, mask = t(1.0, 2.0, 6.0, 100.0), t(1.0, 1.0, 1.0, 0.0)
    close(masked_mean(x, mask), 3.0)
    close(masked_var(x, mask), ((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2)  # 7.0
    with pytest.raises(ValueError, match="unmasked"):
        masked_mean(x, torch.zeros(4))
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, t(0.0, 1.0, 0.0, 0.0))


def test_masked_whiten_mean_zero_std_one_over_mask():
    torch.manual_seed(0)
    x = torch.randn(3, 7, dtype=torch.float64) * 5 + 3
    mask = torch.ones(3, 7, dtype=torch.float64)
    mask[0, 5:] = 0
    mask[2, 2:] = 0
    x[mask == 0] = 1e6  # padding must not reach the statistics
    w = masked_whiten(x, mask)
    close(masked_mean(w, mask), 0.0, tol=1e-9)
    close(masked_var(w, mask), 1.0, tol=1e-6)
    assert (w[mask == 0] == 0).all()
    kept = masked_whiten(x, mask, shift_mean=False)
    close(masked_mean(kept, mask), masked_mean(x, mask).item(), tol=1e-6)
    close(masked_var(kept, mask), 1.0, tol=1e-6)


def test_gae_hand_unrolled_three_steps():
    g, lam = 0.9, 0.8
    r = [1.0, 0.0, 2.0]
    v = [0.5, 1.0, 1.5]
    # right to left; no value after the last step
    d2 = r[2] + g * 0.0 - v[2]  # 0.5
    d1 = r[1] + g * v[2] - v[1]  # 0.35
    d0 = r[0] + g * v[1] - v[0]  # 1.4
    a2 = d2
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    adv, ret = gae_advantages(t(*r).unsqueeze(0), t(*v).unsqueeze(0), t(1.0, 1.0, 1.0).unsqueeze(0), g, lam)
    close(adv, [[a0, a1, a2]])
    close(ret, [[a0 + v[0], a1 + v[1], a2 + v[2]]])
    close(adv, [[1.4 + 0.72 * (0.35 + 0.72 * 0.5), 0.35 + 0.72 * 0.5, 0.5]])


def test_gae_padding_ends_the_episode():
    g, lam = 0.9, 0.8
    rewards = t(1.0, 0.0, 2.0, 7.0, 7.0).reshape(1, 5)
    values = t(0.5, 1.0, 1.5, 9.0, 9.0).reshape(1, 5)  # garbage after the response
    mask = t(1.0, 1.0, 1.0, 0.0, 0.0).reshape(1, 5)
    adv, ret = gae_advantages(rewards, values, mask, g, lam)
    short, short_ret = gae_advantages(rewards[:, :3], values[:, :3], mask[:, :3], g, lam)
    close(adv[:, :3], short.tolist())
    close(ret[:, :3], short_ret.tolist())
    assert (adv[:, 3:] == 0).all() and (ret[:, 3:] == 0).all()
    # gamma = lam = 1 and zero values: the advantage is the reward-to-go
    adv1, _ = gae_advantages(t(1.0, 2.0, 3.0).reshape(1, 3), torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3), 1.0, 1.0)
    close(adv1, [[6.0, 5.0, 3.0]])


def test_ppo_policy_loss_clipfrac_and_kl_by_hand():
    eps = 0.2
    ratios = [1.5, 0.5, 1.1, 1.5]
    advantages = t(1.0, 1.0, -1.0, -1.0)
    old = t(0.0, 0.0, 0.0, 0.0)
    new = torch.tensor([math.log(x) for x in ratios], dtype=torch.float64, requires_grad=True)
    mask = t(1.0, 1.0, 1.0, 1.0)
    loss, clipfrac, approx_kl = ppo_policy_loss(new, old, advantages, mask, eps)
    # token 0: A>0, ratio 1.5 -> clipped to 1.2 -> max(-1.5, -1.2) = -1.2 (clipped active)
    # token 1: A>0, ratio 0.5 -> max(-0.5, -0.8) = -0.5 (unclipped: pessimistic side)
    # token 2: A<0, ratio 1.1 inside the range -> 1.1
    # token 3: A<0, ratio 1.5 -> max(1.5, 1.2) = 1.5 (unclipped)
    close(loss, (-1.2 - 0.5 + 1.1 + 1.5) / 4)
    close(clipfrac, 0.25)
    close(approx_kl, 0.5 * sum(math.log(x) ** 2 for x in ratios) / 4)
    loss.backward()
    assert new.grad[0].item() == 0.0  # a clipped token gives no gradient
    assert not clipfrac.requires_grad and not approx_kl.requires_grad
    masked, masked_clip, _ = ppo_policy_loss(new, old, advantages, t(1.0, 1.0, 0.0, 0.0), eps)
    close(masked, (-1.2 - 0.5) / 2)
    close(masked_clip, 0.5)


def test_ppo_value_loss_by_hand():
    values = t(1.0, 0.5, 3.0, grad=True)
    old = t(0.0, 0.0, 0.0)
    returns = t(1.0, 0.0, 0.0)
    mask = t(1.0, 1.0, 0.0)
    loss, clipfrac = ppo_value_loss(values, old, returns, mask, clip_range_value=0.2)
    # token 0: v=1 -> err 0; clipped v=0.2 -> err 0.64 -> max 0.64 (clipped larger)
    # token 1: v=0.5 -> err 0.25; clipped v=0.2 -> err 0.04 -> max 0.25
    close(loss, 0.5 * (0.64 + 0.25) / 2)
    close(clipfrac, 0.5)
    loss.backward()
    assert values.grad[2].item() == 0.0


def test_kl_penalty_rewards_by_hand():
    score = torch.tensor([2.0, -1.0], dtype=torch.float64)
    logprobs = t(-1.0, -2.0, -0.5, -1.0, -3.0, -0.1).reshape(2, 3)
    ref = t(-1.5, -2.0, -1.0, -1.0, -2.0, -0.1).reshape(2, 3)
    mask = t(1.0, 1.0, 1.0, 1.0, 1.0, 0.0).reshape(2, 3)
    rewards = kl_penalty_rewards(score, logprobs, ref, mask, kl_coef=0.1)
    close(rewards, [[-0.05, 0.0, -0.05 + 2.0], [0.0, 0.1 - 1.0, 0.0]])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        kl_penalty_rewards(score, logprobs, ref, t(1.0, 0.0, 0.0, 0.0, 0.0, 0.0).reshape(2, 3), kl_coef=0.1)


def test_kl_controllers():
    fixed = FixedKLController(0.05)
    fixed.update(current_kl=100.0, n_steps=64)
    assert fixed.value == 0.05
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=256)  # error 0.5 clipped to 0.2
    assert math.isclose(ctl.value, 0.2 * (1 + 0.2 * 256 / 10000))
    before = ctl.value
    ctl.update(current_kl=5.4, n_steps=100)  # error -0.1
    assert math.isclose(ctl.value, before * (1 - 0.1 * 100 / 10000))
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
