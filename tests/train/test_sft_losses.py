"""SFT's reweighted token losses (DFT, ASFT, EAFT) against hand-computed values, their wiring into
the sft stage (logits only at learned positions, logged metrics, ASFT's reference) and
`ignore_pad_token_for_loss`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.train import run_stage
from lathe.train import sft as sft_module
from lathe.train.learned_logits import (
    learned_positions,
    model_inputs,
    next_token_targets,
)
from lathe.train.losses.sft import asft_loss, dft_loss, eaft_loss, top_k_entropy
from lathe.train.sft import label_pad_id, padding_free

LN2, LN3 = math.log(2), math.log(3)


def test_dft_weighs_each_token_by_its_detached_probability():
    # position 0: uniform over 3 -> p = 1/3; position 1: logits (ln 2, 0, 0) -> p(0) = 1/2; position 2 not learned
    logits = torch.tensor([[[0.0, 0.0, 0.0], [LN2, 0.0, 0.0], [5.0, 0.0, 0.0]]], requires_grad=True)
    targets = torch.tensor([[1, 0, -100]])
    per_token = [LN3 / 3, LN2 / 2]
    out = dft_loss(logits, targets)
    assert out.loss.item() == pytest.approx(sum(per_token) / 2)
    assert dft_loss(logits, targets, num_items=torch.tensor(4)).loss.item() == pytest.approx(sum(per_token) / 4)
    assert out.metrics["ce"].item() == pytest.approx((LN3 + LN2) / 2)
    assert out.metrics["dft_weight"].item() == pytest.approx((1 / 3 + 1 / 2) / 2)
    out.loss.backward()  # the weight is a constant: d/dz = p(y) * (softmax - onehot) / N
    expected = torch.tensor([[1 / 3, -2 / 3, 1 / 3], [-1 / 2, 1 / 4, 1 / 4]]) * torch.tensor([[1 / 3], [1 / 2]]) / 2
    torch.testing.assert_close(logits.grad[0, :2], expected)
    assert (logits.grad[0, 2] == 0).all()


def test_eaft_weight_is_the_top20_entropy_over_3_to_the_alpha():
    # uniform over 3: H = ln 3; (ln 2, 0, 0): p = (1/2, 1/4, 1/4), H = 1.5 ln 2
    logits = torch.tensor([[[0.0, 0.0, 0.0], [LN2, 0.0, 0.0]]])
    targets = torch.tensor([[2, 0]])
    weights = [(LN3 / 3) ** 2, (1.5 * LN2 / 3) ** 2]
    out = eaft_loss(logits, targets, alpha=2.0)
    assert out.loss.item() == pytest.approx((weights[0] * LN3 + weights[1] * LN2) / 2)
    assert out.metrics["eaft_weight"].item() == pytest.approx(sum(weights) / 2)
    assert eaft_loss(logits, targets, alpha=0.0).loss.item() == pytest.approx((LN3 + LN2) / 2)  # weight 1: plain CE


def test_eaft_entropy_only_sees_the_20_largest_logits():
    row = torch.cat([torch.zeros(20), torch.full((30,), -3.0)])  # 20 equal leaders and a tail the top-20 drops
    assert top_k_entropy(row[None]).item() == pytest.approx(math.log(20))
    full = torch.softmax(row, -1)
    assert -(full * full.log()).sum().item() > math.log(20)  # the whole distribution's entropy is larger


def test_asft_adds_alpha_times_kl_from_the_reference_to_the_policy():
    # policy (0, 0): p = (1/2, 1/2); reference (ln 3, 0): q = (3/4, 1/4); target 0
    logits = torch.tensor([[[0.0, 0.0], [1.0, 2.0]]])
    ref = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0]]])
    targets = torch.tensor([[0, -100]])  # the second position is not learned: no DFT, no KL
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(q || p), LLaMA-Factory's direction
    out = asft_loss(logits, ref, targets, alpha=0.1)
    assert out.loss.item() == pytest.approx(0.5 * LN2 + 0.1 * kl)
    assert out.metrics["kl"].item() == pytest.approx(kl)
    assert out.metrics["dft_loss"].item() == pytest.approx(0.5 * LN2)
    assert asft_loss(logits, logits, targets, alpha=0.1).loss.item() == pytest.approx(0.5 * LN2)  # no drift, no KL


@pytest.mark.parametrize("loss", [dft_loss, lambda lg, t, num_items=None: eaft_loss(lg, t, 1.0, num_items)])
def test_kept_logits_give_the_same_loss_and_gradients(tiny_llama, loss):
    """The learned-logits saving (learned_logits.py) holds with the reweighted losses."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).train()
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (3, 20))
    labels = ids.clone()
    labels[:, :8] = -100
    labels[1, 15:] = -100
    n = int((labels[:, 1:] != -100).sum())

    def run(inputs):
        model.zero_grad()
        out = loss(model(**model_inputs(inputs)).logits, next_token_targets(inputs), num_items=n)
        out.loss.backward()
        return out.loss, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    full_loss, full_grads = run({"input_ids": ids, "labels": labels})
    kept = learned_positions({"input_ids": ids, "labels": labels})
    assert kept["logits_to_keep"].numel() == 12 < ids.shape[1]  # positions 7..18 predict a learned token
    kept_loss, kept_grads = run(kept)
    torch.testing.assert_close(kept_loss, full_loss, rtol=1e-6, atol=0)
    for name, grad in full_grads.items():
        torch.testing.assert_close(kept_grads[name], grad, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- training runs


def log_lines(cfg) -> list[dict]:
    return [json.loads(line) for line in Path(cfg.training.output_dir, "trainer_log.jsonl").read_text().splitlines()]


def train_lines(cfg) -> list[dict]:
    return [line for line in log_lines(cfg) if "loss" in line]


@pytest.mark.parametrize("flag, metric", [("use_dft_loss", "dft_weight"), ("use_eaft_loss", "eaft_weight")])
def test_weighted_losses_train_and_log_their_weights(sft_config, monkeypatch, flag, metric):
    kept = []
    real = sft_module.model_inputs
    monkeypatch.setattr(sft_module, "model_inputs",
                        lambda inputs: kept.append("logits_to_keep" in inputs) or real(inputs))
    cfg = load_config(sft_config(**{flag: True}, max_steps=4))
    run_stage(cfg)
    assert kept and all(kept)  # the output layer ran only at learned positions
    lines = train_lines(cfg)
    assert len(lines) == 4
    for line in lines:
        assert math.isfinite(line["loss"]) and 0 < line[metric] < 1
        assert line["loss"] < line["ce"]  # each token's loss is scaled by a weight below 1


def test_dft_normalises_over_the_whole_accumulated_batch(sft_config, tmp_path):
    """batch 4 x 1 step == batch 2 x 2 accumulated: the loss is summed over learned tokens / the step's count."""
    def first_loss(name, batch, accumulation):
        cfg = load_config(sft_config(use_dft_loss=True, max_steps=1, per_device_train_batch_size=batch,
                                     gradient_accumulation_steps=accumulation, output_dir=str(tmp_path / name)))
        run_stage(cfg)
        return train_lines(cfg)[0]["loss"]

    assert first_loss("a", 4, 1) == pytest.approx(first_loss("b", 2, 2), rel=1e-4)


def test_asft_with_lora_anchors_to_the_adapter_switched_off(sft_config):
    cfg = load_config(sft_config(use_asft_loss=True, asft_alpha=0.5, max_steps=5, learning_rate=2e-2))
    result = run_stage(cfg)
    assert result.extras["ref_model"] is None  # no second copy of the weights
    lines = train_lines(cfg)
    assert all(math.isfinite(line["loss"]) for line in lines)
    assert lines[0]["kl"] == pytest.approx(0, abs=1e-6)  # LoRA starts as the base model: nothing to anchor yet
    assert lines[-1]["kl"] > 1e-5  # the policy moved; the KL to the base pulls it back
    last = lines[-1]
    assert last["loss"] == pytest.approx(last["dft_loss"] + 0.5 * last["kl"], rel=1e-3)


def test_asft_full_finetuning_keeps_a_frozen_copy(sft_config):
    cfg = load_config(sft_config(use_asft_loss=True, finetuning_type="full", max_steps=3, learning_rate=1e-3))
    result = run_stage(cfg)
    ref = result.extras["ref_model"]
    assert ref is not None and not any(p.requires_grad for p in ref.parameters())
    assert train_lines(cfg)[-1]["kl"] > 0


def test_asft_reference_from_ref_model(sft_config, tiny_llama):
    cfg = load_config(sft_config(use_asft_loss=True, ref_model=str(tiny_llama), max_steps=2))
    ref = run_stage(cfg).extras["ref_model"]
    assert ref is not None and not any(p.requires_grad for p in ref.parameters())  # that folder, loaded and frozen
    assert all(math.isfinite(line["kl"]) for line in train_lines(cfg))


def test_ignore_pad_token_for_loss_false_learns_the_padding(sft_config, tiny_llama):
    cfg = load_config(sft_config(ignore_pad_token_for_loss=False, padding_free=False))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    pad = label_pad_id(cfg, tokenizer)
    assert pad == tokenizer.pad_token_id and label_pad_id(load_config(sft_config()), tokenizer) == -100
    batch = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=pad)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5, 6], "labels": [-100, 6]}])
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 6, pad]]  # the padded position is a target now

    # unset, padding_free would flatten away the padding the option asks to learn: batches stay padded
    assert padding_free(load_config(sft_config(ignore_pad_token_for_loss=False)), model=None) is False

    ignored = load_config(sft_config(max_steps=1, per_device_train_batch_size=8, padding_free=False))
    run_stage(ignored)
    learned = load_config(sft_config(max_steps=1, per_device_train_batch_size=8, padding_free=False,
                                     ignore_pad_token_for_loss=False, output_dir=str(Path(cfg.training.output_dir)
                                                                                     .parent / "learned")))
    run_stage(learned)
    assert train_lines(learned)[0]["loss"] != pytest.approx(train_lines(ignored)[0]["loss"], rel=1e-4)


# --------------------------------------------------------------------------- refused combinations


@pytest.mark.parametrize("overrides, words", [
    ({"use_dft_loss": True, "use_eaft_loss": True}, "set one of them"),
    ({"eaft_alpha": 2.0}, "`use_eaft_loss: true`"),
    ({"asft_alpha": 0.3, "use_dft_loss": True}, "`use_asft_loss: true`"),
    ({"use_dft_loss": True, "label_smoothing_factor": 0.1}, "label_smoothing_factor"),
    ({"ref_model": "/nowhere"}, "use_asft_loss"),
    ({"ignore_pad_token_for_loss": False, "packing": True}, "no padding to learn"),
    ({"ignore_pad_token_for_loss": False, "padding_free": True}, "no padding to learn"),
    ({"stage": "pt", "use_dft_loss": True}, "stage: sft"),
    ({"stage": "rm", "ignore_pad_token_for_loss": False}, "stage: sft"),
])
def test_refused(sft_config, overrides, words):
    with pytest.raises(LatheError, match=words.replace("`", ".").replace(":", ".")):
        load_config(sft_config(**overrides))


def test_defaults_written_by_the_board_are_accepted(sft_config):
    load_config(sft_config(asft_alpha=0.1, eaft_alpha=1.0, use_dft_loss=False, ignore_pad_token_for_loss=True,
                           stage="pt"))
