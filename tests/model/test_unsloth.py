"""use_unsloth / use_unsloth_gc: refused with the reason where unsloth cannot run (no CUDA GPU here)."""

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


def test_unsloth_gc_needs_unsloth(sft_config):
    with pytest.raises(LatheError, match="use_unsloth: true"):
        load_config(sft_config(use_unsloth_gc=True))
