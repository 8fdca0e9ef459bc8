"""Logits never whole: the output layer and the token losses, a chunk of positions at a time.

With a large vocabulary the scored logits are the biggest tensors of a step: 16k positions x
152k words x 4 bytes is 9.3 GiB in float32, and the plain path holds them, their softmax and
their gradient at once. Here the output layer is applied to `chunk` positions at a time, each
chunk's loss and gradient are taken, and the chunk's logits are freed before the next one, so
at most one `[chunk, V]` block (plus its softmax, computed in place) exists at any moment.

Two autograd functions, both exact (the same loss and gradients as the plain path, tested to
1e-5 in float32):

- `_ChunkedTokenLoss`: a scalar `sum_n c_n * -log p(y_n) + alpha * sum_n KL_n`, the token
  losses of SFT and pre-training (c = 1), DFT (c = p(y), detached), EAFT (c from the top-20
  entropy, detached) and ASFT (+ the KL to the reference, whose logits are chunked too). The
  per-token coefficients are known in the forward pass, so the gradients of the hidden states
  and the output weight are taken there too (as Liger's and PyTorch's fused linear
  cross-entropy do): three matmuls over the vocabulary, the same as the plain path.
- `_ChunkedTokenLogps`: per-token log-probabilities, for losses whose weight on each token is
  known only after the forward pass (DPO / KTO / ORPO / SimPO sums, GRPO's ratios). The
  gradient of each log-prob with respect to its hidden state is an H-vector computed in the
  forward pass; the output weight's gradient (full fine-tuning only) recomputes the chunk's
  logits in the backward pass.

Why not a library: PyTorch 2.13's `F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())`
runs on CPU and GPU and gives the plain cross-entropy, but no per-token coefficients, no
KL, no softcap, and on this CPU it was 1.8x (batch_chunk_size 1024) to 12x (its own chunking)
slower than the plain path at 4,096 x 151,936 (docs/efficiency.md). Liger's fused linear
cross-entropy and cut-cross-entropy are Triton kernels (GPU only).

The hidden states come from the model's own forward with its output layer switched to the
identity (`head_bypassed`): every wrapper around the model still runs (peft, DDP, accelerate's
autocast), so do the model's own steps before and after the head (a logit scale commutes with
the head; Gemma's final-logit softcap is switched off for the call and applied here). The head
is read from `get_output_embeddings()`: a plain Linear, peft's `modules_to_save` copy, or a
LoRA Linear (its merged weight `W + s * B @ A`, through which A and B get their gradients).
`head_of` says why it cannot be used otherwise (DoRA, LoRA dropout on the head, a quantized
head), and the callers keep the plain path then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..data.sample import IGNORE_INDEX
from ..model.adapters.common import base_model
from ..model.memory import chunk_rows, worth_chunking  # sized in model/memory.py, which the plan reads too

logger = logging.getLogger(__name__)

SOFTCAP_KEYS = ("final_logit_softcapping",)

# c_n from a chunk: (float32 logits [n, V] after any softcap, nll [n]) -> coefficients [n], no gradient
Coefficient = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- the output layer


@dataclass
class OutputHead:
    """What the chunked functions need of the output layer: `logits = softcap(hidden @ weight.T + bias) / temperature`.

    `weight` may be an expression (LoRA's merged weight), so gradients reach what it is made of.
    `temperature` is the sampling temperature of RL stages (their log-probs are the sampling
    distribution's); 1 for training losses.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    softcap: float | None = None
    temperature: float = 1.0

    @property
    def vocab(self) -> int:
        return self.weight.shape[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits of `hidden` rows (the plain path's `lm_head(h).float()`, capped, over the temperature)."""
        logits = F.linear(hidden, self.weight.to(hidden.dtype),
                          None if self.bias is None else self.bias.to(hidden.dtype)).float()
        logits = _cap(logits, self.softcap)
        return logits if self.temperature == 1.0 else logits / self.temperature

    def saves_logits(self) -> bool:
        """Whether the gradient through the head needs the chunk's logits (the softcap's derivative)."""
        return self.softcap is not None

    def raw_grad_(self, grad: torch.Tensor, logits: torch.Tensor | None) -> torch.Tensor:
        """d loss / d (hidden @ W.T + b) from d loss / d `logits` (this head's output), in place of `grad`:
        / temperature, times the softcap's 1 - tanh^2 = 1 - (capped / cap)^2."""
        if self.temperature != 1.0:
            grad.div_(self.temperature)
        if self.softcap is not None:
            grad.mul_(1 - (logits * (self.temperature / self.softcap)) ** 2)
        return grad


def _cap(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


def softcap_of(config) -> float | None:
    """The model's final-logit softcap (Gemma 2/3/4), from its config or its text config."""
    for each in (config, getattr(config, "text_config", None)):
        for key in SOFTCAP_KEYS:
            value = getattr(each, key, None) if each is not None else None
            if value is not None:
                return float(value)
    return None


def _active_module(module):
    """peft's `modules_to_save` wrapper: the copy that runs (the original with adapters off)."""
    from peft.utils.other import ModulesToSaveWrapper

    if isinstance(module, ModulesToSaveWrapper):
        if module.disable_adapters or not module.active_adapters:
            return module.original_module
        return module.modules_to_save[module.active_adapters[0]]
    return module


def transformers_model(model):
    """The transformers model inside DDP / DeepSpeed / compile wrappers and a peft model."""
    from accelerate.utils import extract_model_from_parallel

    return base_model(extract_model_from_parallel(model, keep_torch_compile=False))


def head_of(model) -> OutputHead | str:
    """The output layer of `model` (a transformers causal LM, maybe in peft / DDP wrappers) as an `OutputHead`,
    or why not."""
    base = transformers_model(model)
    get = getattr(base, "get_output_embeddings", None)
    module = get() if get is not None else None
    if module is None:
        return f"{type(base).__name__} has no output layer (get_output_embeddings() is None)"
    module = _active_module(module)
    softcap = softcap_of(base.config)
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is a dependency; kept optional here for a bare transformers model
        LoraLayer = ()
    if isinstance(module, LoraLayer):
        return _lora_head(module, softcap)
    if type(module) is not torch.nn.Linear or not module.weight.is_floating_point():
        return f"the output layer is a {type(module).__name__}, not a plain Linear"
    if module.weight.device.type == "meta":
        return "the output layer's weight is offloaded (device_map)"
    return OutputHead(module.weight, module.bias, softcap)


def _lora_head(layer, softcap: float | None) -> OutputHead | str:
    """A LoRA-wrapped Linear head as its merged weight, where that equals its forward (no dropout, no DoRA)."""
    base_layer = layer.get_base_layer()
    if type(base_layer) is not torch.nn.Linear:
        return f"the LoRA output layer wraps a {type(base_layer).__name__}, not a plain Linear"
    weight, bias = base_layer.weight, base_layer.bias
    if layer.disable_adapters or layer.merged:
        return OutputHead(weight, bias, softcap)
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if name in getattr(layer, "lora_variant", {}):
            return f"the output layer's adapter `{name}` is a LoRA variant (DoRA, ...)"
        if layer.training and not isinstance(layer.lora_dropout[name], torch.nn.Identity):
            return f"the output layer's adapter `{name}` has LoRA dropout (its forward is not one merged weight)"
        a, b, scale = layer.lora_A[name].weight, layer.lora_B[name], layer.scaling[name]
        weight = weight + (b.weight @ a.to(b.weight.dtype)).to(weight.dtype) * scale
        if b.bias is not None:
            bias = (bias if bias is not None else 0) + b.bias * scale
    return OutputHead(weight, bias, softcap)


@contextlib.contextmanager
def head_bypassed(model):
    """Within: `model(...)` returns the final hidden states where it returned logits.

    The output layer's forward is the identity (its hooks still run) and a final-logit softcap
    in the config is off (the chunked functions apply it). The model's other steps after the
    head must commute with it (a scale does; `probe_head` checks a model once).
    """
    base = transformers_model(model)
    module = base.get_output_embeddings()
    configs = [c for c in (base.config, getattr(base.config, "text_config", None))
               if c is not None and any(getattr(c, k, None) is not None for k in SOFTCAP_KEYS)]
    saved = [(c, k, getattr(c, k)) for c in configs for k in SOFTCAP_KEYS if getattr(c, k, None) is not None]
    own_forward = module.__dict__.get("forward")  # accelerate's device hooks replace `forward` on the instance
    module.forward = _identity
    for config, key, _ in saved:
        setattr(config, key, None)
    try:
        yield
    finally:
        if own_forward is not None:
            module.forward = own_forward
        else:
            del module.forward
        for config, key, value in saved:
            setattr(config, key, value)


def _identity(hidden, *args, **kwargs):
    return hidden


def final_hidden(model, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    """`model(**inputs)` with the output layer bypassed: the hidden states where the logits were, and the outputs."""
    with head_bypassed(model):
        outputs = model(**inputs)
    return outputs.logits, outputs


@torch.no_grad()
def probe_head(model, input_ids: torch.Tensor, tokens: int = 8) -> str | None:
    """None when the chunked head reproduces the model's logits on a few tokens, else what differs.

    Run once per model before the chunked path is trusted: a model that does more after its
    output layer than a scale (masking words, slicing the vocabulary) is caught here.
    """
    head = head_of(model)
    if isinstance(head, str):
        return head
    ids = input_ids[:1, :tokens]
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=ids).logits.float()
        hidden, _ = final_hidden(model, {"input_ids": ids})
        ours = head.logits(hidden)
    except Exception as error:  # a model that needs more than token ids (some multimodal ones): not chunked
        return f"the probe of {tokens} tokens failed ({type(error).__name__}: {error})"
    finally:
        model.train(was_training)
    if ours.shape != logits.shape:
        return f"the model's logits {tuple(logits.shape)} are not its output layer's {tuple(ours.shape)}"
    scale = logits.abs().max().clamp(min=1e-6)
    if not torch.allclose(ours, logits, rtol=2e-2, atol=2e-2 * scale.item()):
        return "the model transforms its output layer's logits in a way the chunked path does not reproduce"
    return None


_PROBED: "weakref.WeakKeyDictionary[torch.nn.Module, str | None]" = weakref.WeakKeyDictionary()


def chunkable(model, input_ids: torch.Tensor, positions: int) -> OutputHead | None:
    """For a loop outside the Trainer (PPO, GRPO): the output layer to chunk over `positions` scored positions, or None.

    None where the logits are small (`worth_chunking`), the head cannot be chunked (`head_of`)
    or the probe (run once per model, its answer kept) finds the model's logits differ.
    """
    head = head_of(model)
    if isinstance(head, str) or not worth_chunking(positions, head.vocab):
        return None
    base = transformers_model(model)
    if base not in _PROBED:
        _PROBED[base] = probe_head(model, input_ids)
        if _PROBED[base] is not None:
            logger.info("chunked logits off: %s; the output layer runs whole", _PROBED[base])
    return head if _PROBED[base] is None else None


# --------------------------------------------------------------------------- token losses


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _softmax_grad_(logits: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """softmax(logits) in place of `logits`."""
    return logits.sub_(lse.unsqueeze(-1)).exp_()


class _ChunkedTokenLoss(torch.autograd.Function):
    """`sum_n c_n nll_n + alpha sum_n KL(q_n || p_n)` over learned rows; gradients taken in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, head, coefficient, ref_hidden, ref_head, alpha, chunk):
        n = hidden.shape[0]
        needs = ctx.needs_input_grad
        grad_hidden = torch.zeros_like(hidden) if needs[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs[1] else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if bias is not None and needs[2] \
            else None
        nll = hidden.new_zeros(n, dtype=torch.float32)
        coef = hidden.new_ones(n, dtype=torch.float32)
        kl = hidden.new_zeros(n if ref_hidden is not None else 0, dtype=torch.float32)
        total = hidden.new_zeros((), dtype=torch.float32)
        for rows in _chunks(n, chunk):
            h, y = hidden[rows], targets[rows]
            logits = head.logits(h)  # [c, V] float32
            lse = torch.logsumexp(logits, dim=-1)
            nll_c = lse - logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
            c = coefficient(logits, nll_c).float() if coefficient is not None else torch.ones_like(nll_c)
            capped = logits.clone() if head.saves_logits() and (needs[0] or needs[1] or needs[2]) else None
            row_total = c * nll_c
            ref_p = None
            if ref_hidden is not None:  # KL(q || p) = sum_v q (log q - log p), as F.kl_div(log p, log q)
                ref_logp = torch.log_softmax(ref_head.logits(ref_hidden[rows]), dim=-1)
                ref_p = ref_logp.exp()
                kl_c = (ref_p * (ref_logp - (logits - lse.unsqueeze(-1)))).sum(-1)
                kl[rows] = kl_c
                row_total = row_total + alpha * kl_c
                del ref_logp
            grad = _softmax_grad_(logits, lse)  # p, in place
            if ref_p is not None:
                grad.mul_(c.unsqueeze(-1) + alpha).sub_(ref_p.mul_(alpha))  # c (p - e_y) + alpha (p - q)
                del ref_p
            else:
                grad.mul_(c.unsqueeze(-1))
            grad.scatter_add_(-1, y.unsqueeze(-1), -c.unsqueeze(-1))
            total += row_total.sum()
            nll[rows], coef[rows] = nll_c, c
            head.raw_grad_(grad, capped)
            del capped
            if grad_hidden is not None:
                grad_hidden[rows] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(grad.t(), h.float())
            if grad_bias is not None:
                grad_bias += grad.sum(0)
            del grad, logits
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        ctx.mark_non_differentiable(nll, coef, kl)
        return total, nll, coef, kl

    @staticmethod
    def backward(ctx, grad_total, *unused):
        grad_hidden, grad_weight, grad_bias = ctx.grads
        scale = grad_total
        return (
            grad_hidden * scale.to(grad_hidden.dtype) if grad_hidden is not None else None,
            (grad_weight * scale).to(ctx.dtypes[0]) if grad_weight is not None else None,
            (grad_bias * scale).to(ctx.dtypes[1]) if grad_bias is not None else None,
            None, None, None, None, None, None, None,
        )


@dataclass
class TokenLosses:
    """`total`: the summed (weighted) token losses, with gradients; per learned token, detached: `nll`
    (-log p(y)), `coefficient` (c_n) and `kl` (ASFT's, empty without a reference)."""

    total: torch.Tensor
    nll: torch.Tensor
    coefficient: torch.Tensor
    kl: torch.Tensor


def _learned_rows(hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int):
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden states {tuple(hidden.shape)} and targets {tuple(targets.shape)} are not aligned.")
    mask = targets != ignore_index
    return hidden[mask], targets[mask], mask


def _graded(head: OutputHead) -> OutputHead:
    """`head` with its tensors detached under `torch.no_grad()`: a custom Function's `needs_input_grad`
    follows `requires_grad` alone, and no gradient should be taken (or memory spent on one) there."""
    if torch.is_grad_enabled():
        return head
    return OutputHead(head.weight.detach(), None if head.bias is None else head.bias.detach(), head.softcap,
                      head.temperature)


def _on_head(rows: torch.Tensor, labels: torch.Tensor, head: OutputHead):
    """The learned rows and their targets on the output weight's device (a model split by device_map ends
    elsewhere), detached under `torch.no_grad()` (see `_graded`)."""
    if not torch.is_grad_enabled():
        rows = rows.detach()
    return rows.to(head.weight.device), labels.to(head.weight.device)


def chunked_token_losses(hidden: torch.Tensor, head: OutputHead, targets: torch.Tensor, *,
                         coefficient: Coefficient | None = None, ref_hidden: torch.Tensor | None = None,
                         ref_head: OutputHead | None = None, alpha: float = 0.0, chunk: int | None = None,
                         ignore_index: int = IGNORE_INDEX) -> TokenLosses:
    """The token losses of the positions whose target is not `ignore_index`, chunk by chunk.

    `hidden` `[..., H]` are the final hidden states at the scored positions and `targets` `[...]`
    the tokens they predict (already shifted). `total = sum_n c_n * -log p(y_n)` (+ `alpha *
    sum_n KL(p_ref || p)` with `ref_hidden` / `ref_head`, the reference model's states and
    head at the same positions). Divide `total` by the normaliser the loss uses.
    """
    rows, labels, mask = _learned_rows(hidden, targets, ignore_index)
    ref_rows = ref_hidden[mask].detach() if ref_hidden is not None else None
    if ref_rows is not None and ref_head is None:
        raise ValueError("chunked_token_losses: ref_hidden needs ref_head.")
    head = _graded(head)
    rows, labels = _on_head(rows, labels, head)
    ref_rows = ref_rows.to(ref_head.weight.device) if ref_rows is not None else None
    total, nll, coef, kl = _ChunkedTokenLoss.apply(
        rows, head.weight, head.bias, labels, head, coefficient, ref_rows, ref_head, alpha,
        chunk or chunk_rows(head.vocab))
    return TokenLosses(total, nll, coef, kl)


# --------------------------------------------------------------------------- per-token log-probs


class _ChunkedTokenLogps(torch.autograd.Function):
    """log p(y_n) per row (and, asked, each row's entropy, no gradient); d/d hidden taken in forward,
    d/d weight recomputed chunk by chunk in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, head, chunk, with_entropy):
        n = hidden.shape[0]
        needs = ctx.needs_input_grad
        logps = hidden.new_zeros(n, dtype=torch.float32)
        entropy = hidden.new_zeros(n if with_entropy else 0, dtype=torch.float32)
        jacobian = torch.zeros_like(hidden) if needs[0] else None  # d logp_n / d hidden_n, [N, H]
        for rows in _chunks(n, chunk):
            logits = head.logits(hidden[rows])
            y = targets[rows]
            lse = torch.logsumexp(logits, dim=-1)
            logps[rows] = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) - lse
            if with_entropy:  # H = lse - sum_v p_v z_v
                entropy[rows] = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
            if jacobian is not None:
                grad = _ChunkedTokenLogps._grad_(logits, lse, y, head)
                jacobian[rows] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
            del logits
        ctx.head, ctx.chunk = head, chunk
        ctx.save_for_backward(hidden if needs[1] or needs[2] else None, targets, jacobian)
        ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    def _grad_(logits: torch.Tensor, lse: torch.Tensor, y: torch.Tensor, head: OutputHead) -> torch.Tensor:
        """d log p(y) / d raw logits = e_y - softmax (through the head's temperature and softcap), in place."""
        capped = logits.clone() if head.saves_logits() else None
        grad = _softmax_grad_(logits, lse).neg_()
        grad.scatter_add_(-1, y.unsqueeze(-1), torch.ones_like(y, dtype=grad.dtype).unsqueeze(-1))
        return head.raw_grad_(grad, capped)

    @staticmethod
    def backward(ctx, grad_logps, grad_entropy):
        hidden, targets, jacobian = ctx.saved_tensors
        head, needs = ctx.head, ctx.needs_input_grad
        grad_hidden = jacobian * grad_logps.unsqueeze(-1).to(jacobian.dtype) if jacobian is not None else None
        grad_weight = grad_bias = None
        if needs[1] or needs[2]:
            weight = head.weight
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
            with torch.no_grad():
                for rows in _chunks(hidden.shape[0], ctx.chunk):
                    logits = head.logits(hidden[rows])
                    lse = torch.logsumexp(logits, dim=-1)
                    grad = _ChunkedTokenLogps._grad_(logits, lse, targets[rows], head)
                    grad.mul_(grad_logps[rows].float().unsqueeze(-1))
                    grad_weight.addmm_(grad.t(), hidden[rows].float())
                    grad_bias += grad.sum(0)
                    del grad, logits
            grad_weight = grad_weight.to(weight.dtype) if needs[1] else None
            grad_bias = grad_bias.to(head.bias.dtype) if needs[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def chunked_token_logps(hidden: torch.Tensor, head: OutputHead, targets: torch.Tensor, *, chunk: int | None = None,
                        ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """log p(target) at every position of `hidden` `[..., H]` (targets `[...]`, already shifted), float32,
    0 where the target is `ignore_index`; never more than one chunk's logits at a time."""
    return chunked_token_logps_and_entropy(hidden, head, targets, chunk=chunk, ignore_index=ignore_index,
                                           with_entropy=False)[0]


def chunked_token_logps_and_entropy(hidden: torch.Tensor, head: OutputHead, targets: torch.Tensor, *,
                                    chunk: int | None = None, ignore_index: int = IGNORE_INDEX,
                                    with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`chunked_token_logps` and (`with_entropy`) the entropy of each scored position's distribution
    (detached; 0 where the target is `ignore_index`), from the same chunks of logits."""
    rows, labels, mask = _learned_rows(hidden, targets, ignore_index)
    out = hidden.new_zeros(targets.shape, dtype=torch.float32)
    if rows.shape[0] == 0:
        return out + rows.sum() * 0, (out.clone() if with_entropy else None)  # keeps the graph for an empty batch
    head = _graded(head)
    rows, labels = _on_head(rows, labels, head)
    logps, entropy = _ChunkedTokenLogps.apply(rows, head.weight, head.bias, labels, head,
                                              chunk or chunk_rows(head.vocab), with_entropy)
    return (out.masked_scatter(mask, logps.to(out.device)),
            out.detach().masked_scatter(mask, entropy.to(out.device)) if with_entropy else None)


# --------------------------------------------------------------------------- from a model


def shifted_targets(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The token each position predicts: labels shifted left by one, `ignore_index` at the end."""
    return F.pad(labels[..., 1:], (0, 1), value=ignore_index)


def scored_columns(targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The positions with a scored target in any row (the model's `logits_to_keep`)."""
    return (targets != ignore_index).any(dim=0).nonzero().squeeze(-1)


def token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, targets: torch.Tensor, *,
                temperature: float = 1.0, extra: dict[str, Any] | None = None,
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-token log-probabilities `[B, T]` (float32) of `targets` under `model`, never holding the whole logits.

    `targets[b, t]` is the token position t predicts (labels shifted left by one, see
    `shifted_targets`), `ignore_index` where nothing is scored (there the result is 0). The
    model runs once with its output layer bypassed, only the positions scored in some row are
    kept (`logits_to_keep`, where the model takes it), and the head + log-softmax run a chunk
    at a time (`chunked_token_logps`). Gradients flow to the model when grad is enabled; under
    `torch.no_grad()` it is the reference / old-policy scoring of RL and preference stages.
    `temperature`: the log-probs of `softmax(logits / temperature)`, the sampling distribution
    of an RL stage's generations. `extra` adds model inputs (position_ids, pixel_values, ...).
    Raises ValueError where the model's output layer cannot be chunked (`head_of`): check it
    first where a fallback exists (`chunkable`). `token_logps_and_entropy` adds each position's
    entropy (detached).
    """
    return token_logps_and_entropy(model, input_ids, attention_mask, targets, temperature=temperature, extra=extra,
                                   ignore_index=ignore_index, with_entropy=False)[0]


def token_logps_and_entropy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                            targets: torch.Tensor, *, temperature: float = 1.0, extra: dict[str, Any] | None = None,
                            ignore_index: int = IGNORE_INDEX, with_entropy: bool = True,
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`token_logps` and the entropy `[B, T]` of each scored position's distribution (detached, 0 elsewhere)."""
    from .learned_logits import accepts_logits_to_keep

    head = head_of(model)
    if isinstance(head, str):
        raise ValueError(f"token_logps: {head}.")
    head = dataclasses.replace(head, temperature=temperature)
    inputs = {"input_ids": input_ids, **({"attention_mask": attention_mask} if attention_mask is not None else {}),
              **(extra or {})}
    keep = scored_columns(targets, ignore_index) if accepts_logits_to_keep(transformers_model(model)) else None
    if keep is not None and keep.numel():
        inputs["logits_to_keep"] = keep
    hidden, _ = final_hidden(model, inputs)
    kept = keep is not None and keep.numel()
    logps, entropy = chunked_token_logps_and_entropy(hidden, head, targets[:, keep] if kept else targets,
                                                     ignore_index=ignore_index, with_entropy=with_entropy)
    if not kept:
        return logps, entropy
    spread = logps.new_zeros(targets.shape).index_copy(1, keep, logps)
    return spread, (entropy.new_zeros(targets.shape).index_copy(1, keep, entropy) if with_entropy else None)
