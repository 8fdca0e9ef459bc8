"""Model loading: dtype, attention, new tokens resize the embeddings and train their rows."""

from __future__ import annotations

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.load import load_model, load_tokenizer, resolve_attention, resolve_dtype
from lathe.train import run_stage
from tests.conftest import shared_path


def test_dtype_resolution(sft_config):
    assert resolve_dtype(load_config(sft_config())) == torch.float32
    assert resolve_dtype(load_config(sft_config(bf16=True))) == torch.bfloat16
    assert resolve_dtype(load_config(sft_config(dtype="float16"))) == torch.float16


def test_attention_choice():
    assert resolve_attention("disabled") == "eager"
    assert resolve_attention("sdpa") == "sdpa"
    if not torch.cuda.is_available():
        with pytest.raises(LatheError, match="flash-attn"):
            resolve_attention("fa2")


def test_eager_attention_loads(sft_config):
    cfg = load_config(sft_config(flash_attn="disabled"))
    model = load_model(cfg, load_tokenizer(cfg.model))
    assert model.config._attn_implementation == "eager"


def test_hub_id_offline_gives_clear_error(sft_config, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(sft_config(model_name_or_path="nobody/no-such-model-xyz"))
    with pytest.raises(LatheError, match="offline|hub"):
        load_tokenizer(cfg.model)


def test_template_tokens_missing_from_tokenizer_are_added_and_trained(sft_config):
    """gpt2's tokenizer has no <|im_start|>/<|im_end|>: chatml adds them, the embeddings grow,
    and with LoRA the embedding and output rows are trained (saved as modules_to_save)."""
    from lathe.testing.tiny import build_tiny_model

    model_dir = build_tiny_model("llama", shared_path("tokenizers", "gpt2-dialogpt-small"), hidden_size=32)
    cfg = load_config(sft_config(model_name_or_path=str(model_dir), template="chatml", max_steps=2))
    result = run_stage(cfg)
    tokenizer = result.tokenizer
    assert "<|im_end|>" in tokenizer.get_vocab()
    rows = result.model.get_input_embeddings().weight.shape[0]
    assert rows == len(tokenizer) > 50257
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert any("embed_tokens" in n for n in trainable) and any("lm_head" in n for n in trainable)


def test_add_special_tokens_option(sft_config):
    cfg = load_config(sft_config(add_special_tokens="<tool>,</tool>", finetuning_type="full", max_steps=1))
    result = run_stage(cfg)
    assert result.model.get_input_embeddings().weight.shape[0] == len(result.tokenizer)
    assert "<tool>" in result.tokenizer.get_vocab()


@pytest.mark.parametrize("config_json, message", [
    ({"model_type": "qwen9_moe"}, r"model type `qwen9_moe` is unknown to the transformers installed here .*upgrade"),
    ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]},
     r"is a `t5` model \(T5ForConditionalGeneration\), which transformers .* cannot build as a causal language model"),
])
def test_a_model_transformers_cannot_build_fails_in_one_paragraph_before_the_data(
        sft_config, tiny_llama, tmp_path, config_json, message):
    """Not transformers' list of every causal-LM config class, and not after the data is tokenized."""
    import json
    import shutil

    folder = tmp_path / "odd"
    shutil.copytree(tiny_llama, folder)
    (folder / "config.json").write_text(json.dumps(config_json))
    cfg = load_config(sft_config(model_name_or_path=str(folder), dataset="no_such_dataset"))
    with pytest.raises(LatheError, match=message) as err:  # the unknown dataset would fail later
        run_stage(cfg)
    assert len(str(err.value)) < 400 and "\n" not in str(err.value)
