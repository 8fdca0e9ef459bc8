"""What a loaded model's code can do, asked in one place instead of `model_type ==` branches around the code.

Each answer reads what transformers declares or imports for the architecture, never its source text.
"""

from __future__ import annotations

import sys

import torch

from .adapters.common import base_model


def separates_flattened_samples(model: torch.nn.Module) -> bool:
    """Whether the model keeps the samples of a flattened row apart (padding-free batches, packing).

    A flattened batch is one row whose position ids restart at each sample; transformers' mask
    builder `masking_utils.create_causal_mask` turns that into a block-diagonal mask. A model
    whose code builds its mask otherwise (old or remote-code architectures), or that mixes tokens
    outside attention (recurrent and convolution blocks, which use only the sliding-window
    builder), would let samples reach each other.
    """
    from transformers import masking_utils

    module = sys.modules.get(type(base_model(model)).__module__)
    return getattr(module, "create_causal_mask", None) is masking_utils.create_causal_mask
