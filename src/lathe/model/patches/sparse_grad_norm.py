"""The Trainer's gradient-norm log with sparse gradients (BAdam's ratio mode).

transformers 5.x's Trainer computes the gradient norm on every optimizer step, for its log, with
`clip_grad_norm_(..., inf)`; torch has no norm kernel for sparse tensors, so a run whose
gradients are sparse (BAdam ratio mode masks them) stops at its first step. The wrapped method
computes the norm of the sparse gradients' stored values itself and defers to the original
whenever no gradient is sparse.
"""

from __future__ import annotations

import torch


def install() -> bool:
    from transformers import Trainer

    original = Trainer._get_grad_norm
    if getattr(original, "_lathe_sparse", False):
        return True

    def _get_grad_norm(self, model, grad_norm=None):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grad_norm is not None or not any(g.is_sparse for g in grads):
            return original(self, model, grad_norm=grad_norm)
        squares = [(g.coalesce().values() if g.is_sparse else g).float().pow(2).sum() for g in grads]
        return torch.stack(squares).sum().sqrt()

    _get_grad_norm._lathe_sparse = True
    Trainer._get_grad_norm = _get_grad_norm
    return True
