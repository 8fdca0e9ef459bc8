"""Loading never runs code from a checkpoint: pickles load weights-only, remote code stays off."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from lathe.config import build_config
from lathe.errors import LatheError
from lathe.model.load import load_model, load_tokenizer


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_with_code_is_refused_and_never_run(tiny_llama, tmp_path):
    evil = tmp_path / "evil"
    shutil.copytree(tiny_llama, evil)
    for weights in evil.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": Payload(str(marker))}, evil / "pytorch_model.bin")
    cfg = build_config({"model_name_or_path": str(evil), "template": "chatml"}, purpose="infer")
    with pytest.raises(LatheError, match="weights-only"):
        load_model(cfg, load_tokenizer(cfg.model))
    assert not marker.exists()


def test_remote_code_is_off_unless_asked():
    cfg = build_config({"model_name_or_path": "x/y", "template": "chatml"}, purpose="infer")
    assert cfg.model.trust_remote_code is False
