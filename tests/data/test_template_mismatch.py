"""A template whose special tokens the model's tokenizer lacks is another family's format: the run says so."""

from __future__ import annotations

import logging

from transformers import AutoTokenizer

from lathe.config.load import build_config
from lathe.data.loader import warn_template_mismatch
from lathe.data.templates import get_template
from tests.conftest import shared_path


def _warnings(caplog, model: str, template: str) -> list[str]:
    tokenizer = AutoTokenizer.from_pretrained(shared_path("tokenizers", "llama3.2-instruct"))
    cfg = build_config({"model_name_or_path": model, "output_dir": "o", "template": template})
    chosen = get_template(template)
    with caplog.at_level(logging.WARNING, logger="lathe.data.loader"):
        warn_template_mismatch(cfg, chosen, chosen.fix_tokenizer(tokenizer))
    return [r.getMessage() for r in caplog.records if r.name == "lathe.data.loader"]


def test_a_qwen_template_on_a_llama_vocabulary_warns_with_the_catalogs_choice(caplog):
    [message] = _warnings(caplog, "meta-llama/Llama-3.2-1B-Instruct", "qwen")
    assert "<|im_start|>" in message and "added as new, untrained tokens" in message
    assert "The catalog's template for Llama-3.2-1B-Instruct is `llama3`." in message


def test_the_models_own_template_is_quiet(caplog):
    assert _warnings(caplog, "meta-llama/Llama-3.2-1B-Instruct", "llama3") == []
