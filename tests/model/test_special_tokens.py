"""`new_special_tokens_config` + `init_special_tokens`: new tokens and where their embedding rows start."""

from __future__ import annotations

import math

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.load import add_config_tokens, load_model, load_tokenizer
from tests.conftest import shared_path

DESCRIPTIONS = {"<|start_of_svg|>": "Who are you?", "<|end_of_svg|>": "Spell out the number"}


@pytest.fixture
def tokens_yaml(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text("".join(f'"{k}": "{v}"\n' for k, v in DESCRIPTIONS.items()))
    return path


def _loaded(sft_config, **options):
    cfg = load_config(sft_config(**options))
    tokenizer = load_tokenizer(cfg.model)
    add_config_tokens(tokenizer, cfg.model)
    return tokenizer, load_model(cfg, tokenizer)


def _reference(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    return model.get_input_embeddings().weight.detach(), model.get_output_embeddings().weight.detach()


def test_desc_init_rows_are_the_mean_of_the_description_rows(sft_config, tiny_llama, tokens_yaml):
    tokenizer, model = _loaded(sft_config, new_special_tokens_config=str(tokens_yaml), init_special_tokens="desc_init")
    old_in, old_out = _reference(tiny_llama)
    for token, text in DESCRIPTIONS.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert token_id >= old_in.shape[0] and token in tokenizer.all_special_tokens
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(model.get_input_embeddings().weight[token_id], old_in[ids].mean(dim=0))
        torch.testing.assert_close(model.get_output_embeddings().weight[token_id], old_out[ids].mean(dim=0))
    assert torch.equal(model.get_input_embeddings().weight[: old_in.shape[0]], old_in)  # old rows untouched


def test_noise_init_is_the_mean_row_plus_noise(sft_config, tiny_llama, tokens_yaml):
    torch.manual_seed(0)
    tokenizer, model = _loaded(sft_config, new_special_tokens_config=str(tokens_yaml))  # default: noise_init
    old_in, _ = _reference(tiny_llama)
    rows = model.get_input_embeddings().weight[old_in.shape[0]:].detach()
    assert rows.shape[0] == 2
    noise = rows - old_in.mean(dim=0)
    # std 1/sqrt(64) = 0.125 around the mean row: 128 samples, so within +-30%
    assert 0.7 / math.sqrt(64) < noise.std().item() < 1.3 / math.sqrt(64)
    assert not torch.allclose(rows[0], rows[1])


def test_desc_init_with_noise_is_near_the_description_mean(sft_config, tiny_llama, tokens_yaml):
    tokenizer, model = _loaded(sft_config, new_special_tokens_config=str(tokens_yaml), init_special_tokens="desc_init_w_noise")
    old_in, _ = _reference(tiny_llama)
    token_id = tokenizer.convert_tokens_to_ids("<|start_of_svg|>")
    ids = tokenizer(DESCRIPTIONS["<|start_of_svg|>"], add_special_tokens=False)["input_ids"]
    diff = model.get_input_embeddings().weight[token_id] - old_in[ids].mean(dim=0)
    assert 0 < diff.abs().max().item() < 6 / math.sqrt(64)


def test_add_special_tokens_get_noise_init_too(sft_config, tiny_llama):
    tokenizer, model = _loaded(sft_config, add_special_tokens="<tool>")
    old_in, _ = _reference(tiny_llama)
    row = model.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("<tool>")]
    assert 0 < (row - old_in.mean(dim=0)).abs().max().item() < 6 / math.sqrt(64)


def test_llamafactory_example_file(sft_config, tiny_llama):
    example = shared_path("llamafactory-examples", "extras", "multi_tokens", "tokens_cfg.yaml")
    tokenizer, model = _loaded(sft_config, new_special_tokens_config=str(example), init_special_tokens="desc_init")
    old_in, _ = _reference(tiny_llama)
    assert len(tokenizer) == old_in.shape[0] + 16
    ids = tokenizer("Ends a text element", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(model.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("<|end_of_text|>")],
                               old_in[ids].mean(dim=0))


def test_refusals(sft_config, tokens_yaml, tmp_path):
    with pytest.raises(LatheError, match="new_special_tokens_config"):
        _loaded(sft_config, init_special_tokens="desc_init")
    with pytest.raises(LatheError, match="remove `add_special_tokens`"):
        _loaded(sft_config, new_special_tokens_config=str(tokens_yaml), add_special_tokens="<x>")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- <a>\n- <b>\n")
    with pytest.raises(LatheError, match="must map each new token"):
        _loaded(sft_config, new_special_tokens_config=str(bad))
