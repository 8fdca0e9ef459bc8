"""use_unsloth / use_unsloth_gc: refused with the reason where they cannot run (no CUDA GPU here)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError


@pytest.mark.skipif(torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None,
                    reason="unsloth can run here")
def test_unsloth_refused_without_cuda_or_package(sft_config):
    with pytest.raises(LatheError, match="CUDA GPU and the unsloth package"):
        load_config(sft_config(use_unsloth=True))


@pytest.mark.skipif(torch.accelerator.is_available(), reason="a GPU is here")
def test_unsloth_gc_without_unsloth_is_offloaded_checkpointing(sft_config):
    """LLaMA-Factory's use_unsloth_gc is its own offloading checkpoint function, unsloth or not: lathe's
    offload_activations (tests/model/test_memory_saving.py), which has nothing to offload on a CPU."""
    with pytest.raises(LatheError, match="no GPU"):
        load_config(sft_config(use_unsloth_gc=True))


@pytest.mark.parametrize("extra, needle", [
    ({"finetuning_type": "full"}, "finetuning_type: lora"),
    ({"use_dora": True}, "drop DoRA"),
    ({"quantization_bit": 8}, "8-bit"),
])
def test_unsloth_builds_plain_lora_only(sft_config, monkeypatch, extra, needle):
    """What unsloth cannot build is refused at load even where it could run (a CUDA GPU and the package, faked)."""
    import importlib.machinery

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: importlib.machinery.ModuleSpec(name, None)
                        if name == "unsloth" else real_find_spec(name, *a))
    with pytest.raises(LatheError, match=needle):
        load_config(sft_config(use_unsloth=True, **extra))
