"""Optimizers chosen from the finetuning options, beyond a plain Trainer `optim` string.

GaLore and APOLLO are the Trainer's own optimizers; lathe fills in their arguments with the
model's linear layers. BAdam wraps AdamW in its block optimizer.

LoRA+ (Hayou et al. 2024): the B matrices learn `loraplus_lr_ratio` times faster than A, and
LoRA on embeddings gets its own small rate; transformers' optimizer names cannot say that,
so the parameter groups are built here and handed to the Trainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..config import RunConfig


def loraplus_groups(model: torch.nn.Module, lr: float, ratio: float, embedding_lr: float, weight_decay: float):
    groups = {"a": [], "b": [], "b_no_decay": [], "embedding": [], "other": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_embedding" in name:
            groups["embedding"].append(p)
        elif "lora_B" in name:
            groups["b" if p.ndim > 1 else "b_no_decay"].append(p)
        elif "lora_A" in name:
            groups["a"].append(p)
        else:
            groups["other"].append(p)
    return [
        {"params": groups["a"], "lr": lr, "weight_decay": weight_decay},
        {"params": groups["b"], "lr": lr * ratio, "weight_decay": weight_decay},
        {"params": groups["b_no_decay"], "lr": lr * ratio, "weight_decay": 0.0},
        {"params": groups["embedding"], "lr": embedding_lr, "weight_decay": weight_decay},
        {"params": groups["other"], "lr": lr, "weight_decay": weight_decay},
    ]


def custom_optimizer(model: torch.nn.Module, cfg: "RunConfig") -> torch.optim.Optimizer | None:
    """The optimizer for the configured method, or None to let the Trainer build its own."""
    f, t = cfg.finetuning, cfg.training
    for flag, build in FULL_OPTIMIZERS.items():
        if getattr(f, flag):
            return build(model, cfg)
    if f.use_galore or f.use_apollo:
        set_low_rank_optimizer(model, cfg)
        return low_rank_optimizer(model, cfg)
    if f.finetuning_type == "lora" and f.loraplus_lr_ratio:
        groups = [g for g in loraplus_groups(model, t.learning_rate, f.loraplus_lr_ratio, f.loraplus_lr_embedding,
                                             t.weight_decay) if g["params"]]
        return torch.optim.AdamW(groups, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon)
    return None


def _targets(model: torch.nn.Module, names: str) -> list[str]:
    from ..model.adapters.common import split_names
    from ..model.adapters.lora import linear_module_names

    available = linear_module_names(model)  # every linear layer but the output head
    wanted = split_names(names)
    if wanted == ["all"]:
        return available
    missing = [n for n in wanted if n not in available]
    if missing:
        from ..errors import LatheError

        raise LatheError(f"target {', '.join(missing)} is not a linear layer of this model; choose from {', '.join(available)}.")
    return wanted


def set_low_rank_optimizer(model: torch.nn.Module, cfg: "RunConfig") -> None:
    """GaLore / APOLLO through the Trainer's own optimizers: fill in its `optim` arguments."""
    f, t = cfg.finetuning, cfg.training
    if f.use_galore:
        t.optim = "galore_adamw_layerwise" if f.galore_layerwise else "galore_adamw"
        t.optim_target_modules = _targets(model, f.galore_target)
        t.optim_args = (f"rank={f.galore_rank},update_proj_gap={f.galore_update_interval},"
                        f"scale={f.galore_scale},proj_type={f.galore_proj_type}")
    elif f.use_apollo:
        t.optim = "apollo_adamw_layerwise" if f.apollo_layerwise else "apollo_adamw"
        t.optim_target_modules = _targets(model, f.apollo_target)
        t.optim_args = (f"rank={f.apollo_rank},proj={f.apollo_proj},scale_type={f.apollo_scale_type},"
                        f"update_proj_gap={f.apollo_update_interval},scale={f.apollo_scale},proj_type={f.apollo_proj_type}")


def low_rank_optimizer(model: torch.nn.Module, cfg: "RunConfig") -> torch.optim.Optimizer:
    """GaLore / APOLLO as transformers builds them, with the Adam settings and weight decay it leaves out.

    transformers gives GaLore's optimizer the learning rate alone (APOLLO's, outside the projected
    matrices): betas and eps fell back to the optimizer's defaults (eps 1e-6 where the config says
    1e-8) and `weight_decay` to 0, three options silently ignored, and on the benchmark run lathe's
    GaLore learned less than LLaMA-Factory's, which passes them. Here every parameter group gets
    them, with weight decay spared for biases and norms as the Trainer's AdamW spares them. In
    layer-wise mode (one optimizer per parameter, built by transformers with its hooks) the same
    settings go into each optimizer's group.
    """
    from transformers import Trainer

    t = cfg.training
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(t, model)
    adam = {"betas": (t.adam_beta1, t.adam_beta2), "eps": t.adam_epsilon}
    decay_names = set(Trainer.get_decay_parameter_names(None, model))  # a method that reads only the model
    decays = {id(p) for n, p in model.named_parameters() if n in decay_names}

    def with_decay(group: dict, params: list) -> dict:  # biases and norms get none, as in the Trainer's AdamW
        return {**group, **adam, "params": params, "weight_decay": t.weight_decay if id(params[0]) in decays else 0.0}

    groups = kwargs.pop("params")
    if "optimizer_dict" in kwargs:  # layer-wise: one optimizer per parameter, already built
        for param, optimizer in kwargs["optimizer_dict"].items():
            optimizer.param_groups[:] = [with_decay(group, [param]) for group in optimizer.param_groups]
        return optimizer_cls(kwargs.pop("optimizer_dict"), **kwargs)
    split = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        for part in ([p for p in params if id(p) in decays], [p for p in params if id(p) not in decays]):
            if part:
                split.append(with_decay(group, part))
    return optimizer_cls(split, **kwargs)


def badam_optimizer(model: torch.nn.Module, cfg: "RunConfig") -> torch.optim.Optimizer:
    """BAdam (Luo et al. 2024): Adam on one block of layers at a time, switching every N steps."""
    from badam import BlockOptimizer

    from ..model.adapters.common import decoder_layers

    f, t = cfg.finetuning, cfg.training
    if f.badam_mode == "ratio":
        from badam import BlockOptimizerRatio

        from ..model.patches import apply

        apply("sparse_grad_norm")

        # Every matrix trains, but each step updates only a `badam_update_ratio` share of its
        # entries (adjacent or scattered), so Adam's states exist for that share alone.
        return BlockOptimizerRatio(
            param_groups=[{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": t.weight_decay}],
            named_parameters_list=list(model.named_parameters()), update_ratio=f.badam_update_ratio,
            switch_every=f.badam_switch_interval, mask_mode=f.badam_mask_mode, lr=t.learning_rate,
            betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon, verbose=f.badam_verbose, include_embedding=False,
        )
    prefix, layers = decoder_layers(model)
    base = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
        eps=t.adam_epsilon, weight_decay=t.weight_decay,
    )
    return BlockOptimizer(
        base_optimizer=base,
        named_parameters_list=list(model.named_parameters()),
        block_prefix_list=[[f"{prefix}.{i}."] for i in range(len(layers))],
        switch_block_every=f.badam_switch_interval,
        start_block=f.badam_start_block,
        switch_mode=f.badam_switch_mode,
        verbose=f.badam_verbose,
    )


def adam_mini_optimizer(model: torch.nn.Module, cfg: "RunConfig") -> torch.optim.Optimizer:
    """Adam-mini (Zhang et al. 2024): one second-moment value per block (head, neuron) instead of per weight.

    It cuts Adam's state about in half; it needs the attention shape to find the head blocks.
    """
    from adam_mini import Adam_mini

    t, c = cfg.training, model.config
    return Adam_mini(
        named_parameters=[(n, p) for n, p in model.named_parameters() if p.requires_grad], lr=t.learning_rate,
        betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon, weight_decay=t.weight_decay, dim=c.hidden_size,
        n_heads=c.num_attention_heads, n_kv_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
    )


class OptimizerPair(torch.optim.Optimizer):
    """Two optimizers over disjoint parameters that the Trainer and its scheduler see as one.

    Their parameter groups are shared (not copied), so the scheduler's learning rates reach both.
    """

    def __init__(self, first: torch.optim.Optimizer, second: torch.optim.Optimizer):
        self.optimizers = (first, second)
        self.param_groups = first.param_groups + second.param_groups
        self.defaults = dict(first.defaults)

    @property
    def state(self):
        return {**self.optimizers[0].state, **self.optimizers[1].state}

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict):
        for opt, sd in zip(self.optimizers, state_dict["optimizers"]):
            opt.load_state_dict(sd)


def muon_optimizer(model: torch.nn.Module, cfg: "RunConfig") -> torch.optim.Optimizer:
    """Muon (Jordan et al. 2024, torch.optim.Muon) for the hidden 2-D weights, AdamW for the rest.

    Muon orthogonalises each matrix's momentum update (Newton-Schulz); it is defined for
    matrices, and embeddings and the output head are better served by AdamW, as its authors advise.
    """
    t = cfg.training
    skip = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    matrices, rest = [], []
    for p in model.parameters():
        if p.requires_grad:
            (matrices if p.ndim == 2 and id(p) not in skip else rest).append(p)
    muon = torch.optim.Muon(matrices, lr=t.learning_rate, weight_decay=t.weight_decay, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(rest, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
                              weight_decay=t.weight_decay)
    return OptimizerPair(muon, adamw)


# Options that replace the whole optimizer of a full-parameter run (at most one is set; validate.py).
FULL_OPTIMIZERS = {"use_badam": badam_optimizer, "use_adam_mini": adam_mini_optimizer, "use_muon": muon_optimizer}
