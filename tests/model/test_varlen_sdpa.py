"""sdpa per sample of a flattened row: the padded batch's loss and gradients, without cross-sample work."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from lathe.model.patches import varlen_sdpa


def run(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_flattened_row_equals_the_padded_batch(tiny_llama):
    torch.manual_seed(0)
    lengths = [7, 12, 5]
    samples = [torch.randint(5, 1000, (n,)) for n in lengths]
    longest = max(lengths)
    ids = torch.zeros(3, longest, dtype=torch.long)
    mask = torch.zeros(3, longest, dtype=torch.long)
    labels = torch.full((3, longest), -100)
    for i, s in enumerate(samples):
        ids[i, : len(s)], mask[i, : len(s)], labels[i, 1: len(s)] = s, 1, s[1:]
    flat = {"input_ids": torch.cat(samples)[None],
            "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
            "labels": torch.cat([torch.cat([torch.tensor([-100]), s[1:]]) for s in samples])[None]}
    padded = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="sdpa").train()
    assert varlen_sdpa.usable(model.config)
    reference, reference_grads = run(model, padded)
    model.set_attn_implementation(varlen_sdpa.register())
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counting(q, *a, **k):
        calls.append(q.shape[2])
        return original(q, *a, **k)

    torch.nn.functional.scaled_dot_product_attention = counting
    try:
        loss, grads = run(model, flat)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    assert sorted(set(calls)) == sorted(set(lengths))  # one call per sample, never the whole row
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    for name, grad in reference_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6)
    calls.clear()
    torch.nn.functional.scaled_dot_product_attention = counting
    try:  # right-padded rows: each over its own tokens, no length-squared mask
        padded_again, padded_grads = run(model, padded)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    assert sorted(set(calls)) == sorted(set(lengths))
    torch.testing.assert_close(padded_again, reference, rtol=1e-5, atol=1e-6)
    for name, grad in reference_grads.items():
        torch.testing.assert_close(padded_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_models_with_more_than_causal_attention_are_left_alone():
    from types import SimpleNamespace

    assert not varlen_sdpa.usable(SimpleNamespace(model_type="mistral", sliding_window=4096))
    assert not varlen_sdpa.usable(SimpleNamespace(model_type="gemma2", sliding_window=None))
    assert varlen_sdpa.segments(torch.arange(6)[None]) is None  # one sample: plain causal sdpa
    assert varlen_sdpa.segments(torch.tensor([[0, 1, 2, 0, 1]])) == [0, 3, 5]


def test_one_unpadded_row_gets_no_mask():
    """A packed row's block-diagonal mask (length squared booleans) is never built; padded batches keep sdpa's."""
    assert varlen_sdpa.varlen_mask(1, 8, 8, attention_mask=torch.ones(1, 8, dtype=torch.long)) is None
    assert varlen_sdpa.varlen_mask(1, 8, 8) is None
    right = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert torch.equal(varlen_sdpa.varlen_mask(2, 4, 4, attention_mask=right), right.bool())  # rows run alone
    left = varlen_sdpa.varlen_mask(2, 4, 4, attention_mask=torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]]))
    assert left is not None and left.shape == (2, 1, 4, 4)  # left padding (generation): sdpa's mask
    from transformers.masking_utils import sdpa_mask

    cached = dict(q_offset=6, kv_offset=0, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 1]]))
    assert torch.equal(varlen_sdpa.varlen_mask(1, 3, 9, **cached), sdpa_mask(1, 3, 9, **cached))  # with a cache
    assert varlen_sdpa._packed(torch.tensor([[0, 1, 2, 0, 1]]), torch.zeros(1, 1, 5, 2))
    assert not varlen_sdpa._packed(torch.arange(3, 8)[None], torch.zeros(1, 1, 5, 2))
