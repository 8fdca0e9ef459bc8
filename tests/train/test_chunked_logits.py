"""The chunked output layer (train/chunked_logits.py): the same losses and gradients as the plain path
(1e-5, float32) for cross-entropy, LoRA on the head, DFT / EAFT / ASFT, DPO's sequence log-probs and
Gemma's softcap; never more than one chunk of logits alive; an sft run through it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM

from lathe.model import memory
from lathe.train import chunked_logits as cl
from lathe.train.chunked_logits import (
    OutputHead,
    chunked_token_logps,
    chunked_token_losses,
    final_hidden,
    head_of,
    probe_head,
    shifted_targets,
    token_logps,
)
from lathe.train.learned_logits import learned_positions, model_inputs, next_token_targets
from lathe.train.losses.logps import sequence_logps, sum_token_logps
from lathe.train.losses.sft import (
    asft_loss,
    chunked_asft_loss,
    chunked_dft_loss,
    chunked_eaft_loss,
    dft_loss,
    eaft_loss,
)


def batch(seed: int = 0, rows: int = 3, length: int = 20):
    torch.manual_seed(seed)
    ids = torch.randint(5, 1000, (rows, length))
    labels = ids.clone()
    labels[:, :7] = -100  # the prompt
    labels[1, 15:] = -100  # padding of a shorter row
    return ids, labels


def grads(model) -> dict[str, torch.Tensor]:
    out = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> bool:
    """Equal to `tol` of the tensor's scale (float32 sums in another order differ by ~1e-7 of it)."""
    return got.shape == want.shape and (got - want).abs().max().item() <= tol * want.abs().max().item() + 1e-9


def assert_same(loss, ref_loss, got: dict, want: dict):
    assert close(loss, ref_loss), (loss, ref_loss)
    assert got.keys() == want.keys() and want
    for name, grad in want.items():
        assert close(got[name], grad), name


def chunked_ce(model, inputs, num_items, chunk=5):
    hidden, _ = final_hidden(model, model_inputs(inputs))
    out = chunked_token_losses(hidden, head_of(model), next_token_targets(inputs), chunk=chunk)
    return out.total / num_items


# --------------------------------------------------------------------------- the autograd functions


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_token_losses_match_the_plain_path_with_bias_softcap_and_ignored_rows(softcap):
    torch.manual_seed(0)
    hidden = torch.randn(2, 13, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    bias = torch.randn(50, requires_grad=True)
    ref_hidden, ref_weight = torch.randn(2, 13, 8), torch.randn(50, 8)
    targets = torch.randint(0, 50, (2, 13))
    targets[0, :4] = -100

    def capped(logits):
        return logits if softcap is None else torch.tanh(logits / softcap) * softcap

    for case in ("ce", "dft", "eaft", "asft"):
        logits = capped(F.linear(hidden, weight, bias))
        ref_logits = capped(F.linear(ref_hidden, ref_weight))
        if case == "ce":
            want = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum") / 7
        elif case == "dft":
            want = dft_loss(logits, targets, num_items=7).loss
        elif case == "eaft":
            want = eaft_loss(logits, targets, 1.5, num_items=7).loss
        else:
            want = asft_loss(logits, ref_logits, targets, 0.3, num_items=7).loss
        want_grads = torch.autograd.grad(want, (hidden, weight, bias))
        head = OutputHead(weight, bias, softcap)
        if case == "ce":
            got = chunked_token_losses(hidden, head, targets, chunk=4).total / 7
        elif case == "dft":
            got = chunked_dft_loss(hidden, head, targets, num_items=7).loss
        elif case == "eaft":
            got = chunked_eaft_loss(hidden, head, targets, 1.5, num_items=7).loss
        else:
            got = chunked_asft_loss(hidden, head, ref_hidden, OutputHead(ref_weight, None, softcap), targets, 0.3,
                                    num_items=7).loss
        got_grads = torch.autograd.grad(got, (hidden, weight, bias))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=case)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7, msg=case)


@pytest.mark.parametrize("softcap, temperature", [(None, 1.0), (2.0, 0.7)])
def test_token_logps_match_log_softmax_and_their_gradients(softcap, temperature):
    torch.manual_seed(1)
    hidden = torch.randn(3, 11, 8, requires_grad=True)
    weight = torch.randn(40, 8, requires_grad=True)
    bias = torch.randn(40, requires_grad=True)
    targets = torch.randint(0, 40, (3, 11))
    targets[2] = -100
    upstream = torch.randn(3, 11)
    logits = F.linear(hidden, weight, bias)
    logits = (logits if softcap is None else torch.tanh(logits / softcap) * softcap) / temperature
    want = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    want = want * (targets != -100)
    want_grads = torch.autograd.grad((want * upstream).sum(), (hidden, weight, bias))
    got = chunked_token_logps(hidden, OutputHead(weight, bias, softcap, temperature), targets, chunk=4)
    got_grads = torch.autograd.grad((got * upstream).sum(), (hidden, weight, bias))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for each in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(each, torch.Tensor):
                self.largest = max(self.largest, each.numel())
        return out


@pytest.mark.parametrize("kind", ["loss", "logps"])
def test_no_tensor_larger_than_one_chunk_of_logits(kind):
    """The memory claim, deterministic: forward + backward allocate nothing bigger than chunk x V."""
    torch.manual_seed(2)
    n, hidden_size, vocab, chunk = 256, 16, 1000, 32
    hidden = torch.randn(n, hidden_size, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))

    def run(chunked: bool):
        with LargestTensor() as probe:
            if chunked and kind == "loss":
                loss = chunked_token_losses(hidden, OutputHead(weight), targets, chunk=chunk).total
            elif chunked:
                loss = chunked_token_logps(hidden, OutputHead(weight), targets, chunk=chunk).sum()
            else:
                loss = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
            loss.backward()
        return probe.largest

    assert run(chunked=False) >= n * vocab
    assert run(chunked=True) <= max(chunk * vocab, vocab * hidden_size)  # the weight's gradient is V x H


# --------------------------------------------------------------------------- through a model


def test_model_loss_and_gradients_match_with_ignored_positions(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).train()
    ids, labels = batch()
    inputs = learned_positions({"input_ids": ids, "labels": labels})
    n = int((labels[:, 1:] != -100).sum())
    want = model(**inputs, num_items_in_batch=n).loss
    want.backward()
    want_grads = grads(model)
    got = chunked_ce(model, inputs, n)
    got.backward()
    assert_same(got, want, grads(model), want_grads)


def test_lora_on_the_output_layer_trains_through_its_merged_weight(tiny_llama):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"], lora_dropout=0.0)).train()
    torch.manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # B = 0 would hide a wrong gradient for A
    ids, labels = batch(1)
    inputs = learned_positions({"input_ids": ids, "labels": labels})
    n = int((labels[:, 1:] != -100).sum())
    want = model(**inputs, num_items_in_batch=n).loss
    want.backward()
    want_grads = grads(model)
    assert any("lm_head.lora_A" in k for k in want_grads)
    got = chunked_ce(model, inputs, n)
    got.backward()
    assert_same(got, want, grads(model), want_grads)

    dropped = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                             LoraConfig(r=4, target_modules=["lm_head"], lora_dropout=0.1)).train()
    assert "dropout" in head_of(dropped)  # not one merged weight in training: the plain path


def test_dft_from_a_model_matches(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).train()
    ids, labels = batch(2)
    inputs = learned_positions({"input_ids": ids, "labels": labels})
    n = int((labels[:, 1:] != -100).sum())
    want = dft_loss(model(**model_inputs(inputs)).logits, next_token_targets(inputs), num_items=n)
    want.loss.backward()
    want_grads = grads(model)
    hidden, _ = final_hidden(model, model_inputs(inputs))
    got = chunked_dft_loss(hidden, head_of(model), next_token_targets(inputs), num_items=n)
    got.loss.backward()
    assert_same(got.loss, want.loss, grads(model), want_grads)
    for key, value in want.metrics.items():
        torch.testing.assert_close(got.metrics[key], value, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ld_alpha", [None, 0.5])
def test_dpo_sequence_logps_match(tiny_llama, ld_alpha):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).train()
    ids, labels = batch(3, rows=4)
    mask = torch.ones_like(ids)
    want_sums, want_counts = sequence_logps(model(input_ids=ids, attention_mask=mask).logits, labels,
                                            ld_alpha=ld_alpha)
    (want_sums * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()  # any per-sequence weights
    want_grads = grads(model)
    targets = shifted_targets(labels)
    sums, counts = sum_token_logps(token_logps(model, ids, mask, targets), targets, ld_alpha=ld_alpha)
    (sums * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
    assert torch.equal(counts, want_counts)
    assert_same(sums, want_sums, grads(model), want_grads)


def test_gemma2_softcap_is_applied_by_the_chunked_head():
    config = Gemma2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=0.5)
    torch.manual_seed(4)
    model = Gemma2ForCausalLM(config).train()
    assert head_of(model).softcap == 0.5
    ids = torch.randint(0, 300, (2, 12))
    inputs = learned_positions({"input_ids": ids, "labels": ids.clone()})
    want = model(**inputs, num_items_in_batch=22).loss
    want.backward()
    want_grads = grads(model)
    got = chunked_ce(model, inputs, 22)
    got.backward()
    assert model.config.final_logit_softcapping == 0.5  # switched off only while the hidden states ran
    assert_same(got, want, grads(model), want_grads)


def test_probe_catches_a_model_that_changes_its_logits_after_the_head(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids, _ = batch()
    assert probe_head(model, ids) is None
    real = type(model).forward

    def masked(self, *args, **kwargs):  # a vocabulary mask after the output layer (as some multimodal models)
        out = real(self, *args, **kwargs)
        out.logits[..., :10] = -1e4
        return out

    type(model).forward = masked
    try:
        assert "does not reproduce" in probe_head(model, ids)
    finally:
        type(model).forward = real


def test_switch_on_follows_the_size_of_the_scored_logits():
    assert not memory.worth_chunking(512, 32_000)  # 62.5 MiB
    assert memory.worth_chunking(4096, 151_936)  # 2.3 GiB
    assert memory.chunk_rows(151_936) == 220 and memory.chunk_rows(300) == memory.MAX_CHUNK


# --------------------------------------------------------------------------- a training run


def test_sft_run_trains_through_the_chunked_head(sft_config, monkeypatch, tmp_path):
    """An sft run with the threshold at 0 takes the chunked path, and its losses are the plain run's."""
    from lathe.config import load_config
    from lathe.train import run_stage

    def train_lines(cfg) -> list[dict]:
        lines = Path(cfg.training.output_dir, "trainer_log.jsonl").read_text().splitlines()
        return [line for line in map(json.loads, lines) if "loss" in line]

    calls = []
    real = cl.chunked_token_losses
    monkeypatch.setattr(cl, "chunked_token_losses", lambda *a, **k: calls.append(1) or real(*a, **k))

    def losses(name: str, threshold: int) -> list[float]:
        monkeypatch.setattr(memory, "CHUNK_THRESHOLD_BYTES", threshold)
        cfg = load_config(sft_config(max_steps=2, output_dir=str(tmp_path / name)))
        run_stage(cfg)
        return [line["loss"] for line in train_lines(cfg)]

    chunked = losses("chunked", 0)
    assert len(calls) == 2
    plain = losses("plain", 1 << 62)
    assert len(calls) == 2
    assert all(math.isfinite(x) for x in chunked)
    assert chunked == pytest.approx(plain, rel=1e-4)


def run_losses(sft_config, monkeypatch, tmp_path, name: str, threshold: int, **overrides) -> list[dict]:
    from lathe.config import load_config
    from lathe.train import run_stage

    monkeypatch.setattr(memory, "CHUNK_THRESHOLD_BYTES", threshold)
    cfg = load_config(sft_config(**{"max_steps": 2, **overrides, "output_dir": str(tmp_path / name)}))
    run_stage(cfg)
    lines = Path(cfg.training.output_dir, "trainer_log.jsonl").read_text().splitlines()
    return [line for line in map(json.loads, lines) if "loss" in line]


def compare_runs(sft_config, monkeypatch, tmp_path, spied: str, keys=("loss",), **overrides):
    calls = []
    real = getattr(cl, spied)
    monkeypatch.setattr(cl, spied, lambda *a, **k: calls.append(1) or real(*a, **k))
    chunked = run_losses(sft_config, monkeypatch, tmp_path, "chunked", 0, **overrides)
    assert calls, f"{spied} never ran"
    count = len(calls)
    plain = run_losses(sft_config, monkeypatch, tmp_path, "plain", 1 << 62, **overrides)
    assert len(calls) == count  # the plain run did not chunk
    for key in keys:
        assert [x[key] for x in chunked] == pytest.approx([x[key] for x in plain], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("overrides", [
    {"pref_loss": "sigmoid", "ld_alpha": 0.5},  # LoRA: the reference is the adapter switched off
    {"pref_loss": "sigmoid", "finetuning_type": "full", "learning_rate": 1e-3},  # a frozen copy as reference
])
def test_dpo_runs_match_the_plain_path(sft_config, monkeypatch, tmp_path, overrides):
    from tests.train.test_dpo import PAIRS, write_pairs

    folder = write_pairs(tmp_path, PAIRS)
    compare_runs(sft_config, monkeypatch, tmp_path, "chunked_token_logps_and_entropy", ("loss", "rewards/margins"),
                 stage="dpo", dataset="pairs", dataset_dir=str(folder), **overrides)


def test_kto_run_matches_the_plain_path(sft_config, monkeypatch, tmp_path):
    from tests.train.test_kto import ROWS

    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "label": tag}
            for q, a, tag in ROWS]
    folder = tmp_path / "kto"
    folder.mkdir()
    (folder / "kto.json").write_text(json.dumps(rows))
    (folder / "dataset_info.json").write_text(json.dumps({"fb": {
        "file_name": "kto.json", "formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    compare_runs(sft_config, monkeypatch, tmp_path, "chunked_token_logps_and_entropy", ("loss", "kl"),
                 stage="kto", dataset="fb", dataset_dir=str(folder), per_device_train_batch_size=8)


def test_asft_run_matches_the_plain_path(sft_config, monkeypatch, tmp_path):
    """ASFT with LoRA: the reference (the adapter switched off) is chunked too."""
    compare_runs(sft_config, monkeypatch, tmp_path, "chunked_token_losses", ("loss", "kl"), max_steps=3,
                 use_asft_loss=True, asft_alpha=0.5, learning_rate=2e-2)


def test_a_model_adding_its_router_loss_keeps_the_plain_path(tiny_llama):
    from lathe.train.learned_logits import router_loss_on

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert not router_loss_on(model)
    model.config.output_router_logits = True  # what moe_aux_loss_coef sets on a MoE model (model/moe.py)
    assert router_loss_on(model)


def test_ppo_response_logprobs_and_values_match(tiny_llama, monkeypatch):
    """PPO's rollout / update scoring (temperature, value head on the final hidden states) through the chunked head."""
    from lathe.train.ppo import forward_response

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).train()
    value_head = torch.nn.Linear(model.config.hidden_size, 1)
    ids, _ = batch(5, rows=2, length=16)
    attn = torch.ones_like(ids)
    attn[1, :3] = 0  # a left-padded prompt
    weights = torch.randn(2, 10)

    def run(threshold: int):
        monkeypatch.setattr(memory, "CHUNK_THRESHOLD_BYTES", threshold)
        logprobs, values = forward_response(model, value_head, ids, attn, prompt_len=6, temperature=0.7)
        ((logprobs * weights).sum() + values.sum()).backward()
        return logprobs, values, grads(model) | {"value_head": value_head.weight.grad.clone()}

    from lathe.train import ppo

    calls = []
    real = ppo.chunked_token_logps
    monkeypatch.setattr(ppo, "chunked_token_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = run(1 << 62)
    value_head.zero_grad()
    assert not calls
    chunked = run(0)
    assert calls
    assert close(chunked[0], plain[0]) and close(chunked[1], plain[1])
    assert_same(chunked[0].sum(), plain[0].sum(), chunked[2], plain[2])


def test_token_logps_and_entropy_for_rl_scoring(tiny_llama):
    """What an RL stage asks (GRPO): completion log-probs under logits / temperature and each position's entropy."""
    from lathe.train.chunked_logits import token_logps_and_entropy

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    ids, _ = batch(6, rows=2, length=14)
    targets = shifted_targets(torch.where(torch.arange(14) >= 9, ids, -100))  # the completion: tokens 9..13
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float() / 0.8
        logp = torch.log_softmax(logits, -1)
        want = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * (targets != -100)
        want_entropy = -(logp.exp() * logp).sum(-1) * (targets != -100)
        got, entropy = token_logps_and_entropy(model, ids, None, targets, temperature=0.8)
    assert close(got, want) and close(entropy, want_entropy)
    assert (got[:, :8] == 0).all() and not got.requires_grad
