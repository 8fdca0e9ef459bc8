"""peft's LoftQ on CPU: the same residual SVD, computed where the weights are.

`peft.utils.loftq_utils._loftq_init_new` (peft 0.12-0.21) moves the weights to "cuda" (or
"xpu") unconditionally. Here, the factors of the quantization residual W - dequant(Q(W)) are
computed on the quantized weight's own device with peft's own decomposition helper.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def _residual_factors(qweight, weight, num_bits: int, reduced_rank: int):
    import bitsandbytes as bnb
    from peft.utils.loftq_utils import _low_rank_decomposition

    if num_bits != 4:
        raise ValueError("LoftQ on a quantized model supports 4-bit (nf4/fp4) weights only.")
    dequantized = bnb.functional.dequantize_4bit(qweight.data, qweight.quant_state).float()
    residual = weight.to(device=dequantized.device, dtype=torch.float32) - dequantized
    parts = _low_rank_decomposition(residual, reduced_rank=reduced_rank)
    return parts["R"], parts["L"]  # lora_A [rank, in], lora_B [out, rank]


def install() -> bool:
    from peft.utils import loftq_utils

    if torch.cuda.is_available() or hasattr(torch, "xpu") and torch.xpu.is_available():
        return False
    loftq_utils._loftq_init_new = _residual_factors
    return True
