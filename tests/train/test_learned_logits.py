"""Logits only at learned positions: the same loss and gradients as the full output layer."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from lathe.train.learned_logits import accepts_logits_to_keep, learned_positions


def test_same_loss_and_gradients_as_all_logits(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).train()
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (3, 24))
    labels = ids.clone()
    labels[:, :9] = -100  # the prompt
    labels[1, 17:] = -100  # padding of a shorter row
    labels[2, :] = -100  # a row with nothing to learn
    n = int((labels[:, 1:] != -100).sum())
    assert accepts_logits_to_keep(model)

    def loss_and_grads(inputs):
        model.zero_grad()
        out = model(**inputs, num_items_in_batch=n)
        out.loss.backward()
        return out, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    full, full_grads = loss_and_grads({"input_ids": ids, "labels": labels})
    kept_inputs = learned_positions({"input_ids": ids, "labels": labels})
    kept, kept_grads = loss_and_grads(kept_inputs)
    assert kept.logits.shape[1] == 15 < full.logits.shape[1]  # positions 8..22 predict a learned token
    torch.testing.assert_close(kept.loss, full.loss, rtol=1e-6, atol=0)  # fp32 summation order
    for name, grad in full_grads.items():
        torch.testing.assert_close(kept_grads[name], grad, rtol=1e-5, atol=1e-7)


def test_nothing_learned_leaves_the_batch_alone():
    inputs = {"input_ids": torch.ones(1, 4, dtype=torch.long), "labels": torch.full((1, 4), -100)}
    assert learned_positions(inputs) is inputs
