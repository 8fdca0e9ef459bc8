"""LLaMA-Factory's own example configs: every key is known to lathe.

Each config either loads, or is refused because it asks for something lathe does not run
yet, with the message naming that option. None may fail as an unknown key: that would mean a
LLaMA-Factory user's config breaks on a name lathe forgot.
"""

from __future__ import annotations

import pytest

from lathe.config.load import build_config, read_config_file
from lathe.errors import LatheError
from tests.conftest import SHARED

EXAMPLES = SHARED / "llamafactory-examples"
CONFIGS = sorted(p for p in EXAMPLES.rglob("*.yaml") if "model_name_or_path" in p.read_text()) if EXAMPLES.exists() else []


@pytest.mark.skipif(not CONFIGS, reason="../shared/llamafactory-examples is absent (lathe workplace only)")
@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(EXAMPLES)) for p in CONFIGS])
def test_example_config_keys_are_known(path):
    raw = read_config_file(path)
    raw.setdefault("output_dir", "saves/x")  # inference configs have none
    try:
        build_config(raw, str(path))
    except LatheError as e:
        message = str(e)
        assert "unknown option" not in message, message
        assert "lathe does not run: " in message, message


@pytest.mark.skipif(not CONFIGS, reason="../shared/llamafactory-examples is absent (lathe workplace only)")
def test_plain_lora_sft_example_loads_unchanged():
    path = EXAMPLES / "train_lora" / "qwen3_lora_sft.yaml"
    cfg = build_config(read_config_file(path), str(path))
    assert cfg.finetuning.finetuning_type == "lora" and cfg.training.bf16
