"""LongLoRA S2-Attn (`shift_attn`): grouped attention while training, normal attention otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.load import load_model, load_tokenizer


def _models(sft_config, cutoff_len):
    normal_cfg = load_config(sft_config(cutoff_len=cutoff_len, flash_attn="sdpa"))
    s2_cfg = load_config(sft_config(cutoff_len=cutoff_len, shift_attn=True))
    tokenizer = load_tokenizer(normal_cfg.model)
    return load_model(normal_cfg, tokenizer).train(), load_model(s2_cfg, tokenizer).train()


def _loss(model, ids, mask=None):
    torch.manual_seed(0)
    return model(input_ids=ids, attention_mask=mask, labels=ids).loss


def test_short_sequence_loss_equals_normal_attention(sft_config):
    normal, s2 = _models(sft_config, cutoff_len=128)  # groups of 32 tokens
    assert s2.config._attn_implementation.startswith("lathe_s2")
    ids = torch.randint(5, 300, (2, 30))
    torch.testing.assert_close(_loss(s2, ids), _loss(normal, ids))
    long_ids = torch.randint(5, 300, (2, 100))
    assert not torch.allclose(_loss(s2, long_ids), _loss(normal, long_ids))  # longer: grouped, so different
    s2.eval()  # inference is normal attention
    with torch.no_grad():
        torch.testing.assert_close(s2(input_ids=long_ids).logits, normal.eval()(input_ids=long_ids).logits)


def test_no_token_sees_the_future(sft_config):
    _, s2 = _models(sft_config, cutoff_len=64)
    ids = torch.randint(5, 300, (1, 64))
    changed = ids.clone()
    changed[0, 40:] = 7
    a, b = s2(input_ids=ids).logits, s2(input_ids=changed).logits
    torch.testing.assert_close(a[0, :40], b[0, :40])  # the shifted groups wrap nothing round


def test_padding_and_gradients(sft_config):
    _, s2 = _models(sft_config, cutoff_len=64)
    ids = torch.randint(5, 300, (2, 50))
    mask = torch.ones_like(ids)
    mask[1, 35:] = 0
    loss = _loss(s2, ids, mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in s2.parameters() if p.grad is not None)


def test_long_sequence_scores_are_a_quarter(sft_config, monkeypatch):
    """The attention score entries (what memory and FLOPs of attention scale with) drop about 4-fold."""
    normal, s2 = _models(sft_config, cutoff_len=256)
    sizes: list[int] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        sizes.append(q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2])
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    ids = torch.randint(5, 300, (1, 256))
    _loss(normal, ids)
    full, sizes[:] = sum(sizes), []
    _loss(s2, ids)
    grouped = sum(sizes)
    assert 0 < grouped < full / 3  # 4 groups (+ one padded group for the shifted half)


def test_trains_end_to_end(sft_config):
    from lathe.train import run_stage

    result = run_stage(load_config(sft_config(shift_attn=True, cutoff_len=32, max_steps=2)))
    assert result.metrics["train_loss"] > 0


def test_other_families_are_refused(sft_config, demo_tokenizer_dir):
    from lathe.testing.tiny import build_tiny_model

    gemma = build_tiny_model("gemma", demo_tokenizer_dir, hidden_size=64, num_layers=1)
    cfg = load_config(sft_config(model_name_or_path=str(gemma), shift_attn=True))
    with pytest.raises(LatheError, match="llama-family"):
        load_model(cfg, load_tokenizer(cfg.model))
