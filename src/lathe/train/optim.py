"""Optimizers chosen from the finetuning options, beyond a plain Trainer `optim` string.

Each optimizer that a `use_<name>` flag switches on is one registered `Optimizer` (at the end
of this module): GaLore and APOLLO are the Trainer's own optimizers, for which lathe fills in
the arguments with the model's linear layers; BAdam wraps AdamW in its block optimizer;
Adam-mini and Muon are built here.

LoRA+ (Hayou et al. 2024): the B matrices learn `loraplus_lr_ratio` times faster than A, and
LoRA on embeddings gets its own small rate; transformers' optimizer names cannot say that,
so the parameter groups are built here and handed to the Trainer.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..errors import LatheError
from ..registry import OPTIMIZERS, Choice

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


@dataclass(frozen=True, kw_only=True)
class Optimizer(Choice):
    """An optimizer a `use_<name>` flag switches on in place of the Trainer's AdamW (full-parameter training).

    `build(model, cfg, args)` makes it; `settings(model, cfg)` are the Trainer arguments it needs
    (GaLore and APOLLO are the Trainer's own optimizers, named by `optim`); `with_fsdp` says it
    works on FSDP-sharded parameters (none works under DeepSpeed, which brings its own).
    """

    flag: str
    build: Callable[..., torch.optim.Optimizer] = field(compare=False)
    settings: Callable[..., dict[str, Any]] | None = field(default=None, compare=False)
    with_fsdp: bool = False
    planned_state: Callable[..., int] | None = field(default=None, compare=False)  # bytes, for `lathe plan`


def optimizer_setup(model: torch.nn.Module, cfg: "RunConfig", args) -> tuple[torch.optim.Optimizer | None, Any]:
    """The optimizer of the configured method (None: the Trainer builds its own), and the Trainer
    arguments to train with: the run's `args`, or a copy with the settings the optimizer needs
    (GaLore's `optim`, ...). The config is never edited."""
    f = cfg.finetuning
    for optimizer in OPTIMIZERS.values():
        if getattr(f, optimizer.flag):
            if optimizer.settings is not None:
                from ..config.training import editable_copy

                args = editable_copy(args, **optimizer.settings(model, cfg))
            return optimizer.build(model, cfg, args), args
    if f.loraplus_lr_ratio:
        groups = [g for g in loraplus_groups(model, args.learning_rate, f.loraplus_lr_ratio, f.loraplus_lr_embedding,
                                             args.weight_decay) if g["params"]]
        return torch.optim.AdamW(groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon), args
    return None, args


def _linear_targets(model: torch.nn.Module, key: str, names: str) -> list[str]:
    from ..model.adapters.common import resolve_targets
    from ..model.adapters.lora import linear_module_names

    return resolve_targets(key, names, linear_module_names(model))  # every linear layer but the output head


def _projected_settings(model: torch.nn.Module, cfg: "RunConfig", name: str, optim_args: str) -> dict[str, Any]:
    """The Trainer's `optim` arguments of GaLore or APOLLO (`name`): its optimizer, the layers it projects, its own arguments."""
    f = cfg.finetuning
    return {
        "optim": f"{name}_adamw_layerwise" if getattr(f, f"{name}_layerwise") else f"{name}_adamw",
        "optim_target_modules": _linear_targets(model, f"{name}_target", getattr(f, f"{name}_target")),
        "optim_args": optim_args,
    }


def galore_settings(model: torch.nn.Module, cfg: "RunConfig") -> dict[str, Any]:
    f = cfg.finetuning
    return _projected_settings(model, cfg, "galore", f"rank={f.galore_rank},update_proj_gap={f.galore_update_interval},"
                                                     f"scale={f.galore_scale},proj_type={f.galore_proj_type}")


def apollo_settings(model: torch.nn.Module, cfg: "RunConfig") -> dict[str, Any]:
    f = cfg.finetuning
    return _projected_settings(model, cfg, "apollo", f"rank={f.apollo_rank},proj={f.apollo_proj},"
                                                     f"scale_type={f.apollo_scale_type},update_proj_gap={f.apollo_update_interval},"
                                                     f"scale={f.apollo_scale},proj_type={f.apollo_proj_type}")


def low_rank_optimizer(model: torch.nn.Module, cfg: "RunConfig", args) -> torch.optim.Optimizer:
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

    t = args
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(t, model)
    adam = {"betas": (t.adam_beta1, t.adam_beta2), "eps": t.adam_epsilon}
    decay_names = set(Trainer.get_decay_parameter_names(None, model))  # a method that reads only the model
    decays = {id(p) for n, p in model.named_parameters() if n in decay_names}

    def with_decay(group: dict, params: list) -> dict:  # biases and norms get none, as in the Trainer's AdamW
        return {**group, **adam, "params": params, "weight_decay": t.weight_decay if id(params[0]) in decays else 0.0}

    groups = kwargs.pop("params")
    # APOLLO reads `scale_front` from the optimizer, not from a group, and transformers never sets it.
    scale_front = {"scale_front": True} if cfg.finetuning.use_apollo and cfg.finetuning.apollo_scale_front else {}
    if "optimizer_dict" in kwargs:  # layer-wise: one optimizer per parameter, already built
        for param, optimizer in kwargs["optimizer_dict"].items():
            optimizer.param_groups[:] = [with_decay(group, [param]) for group in optimizer.param_groups]
            optimizer.__dict__.update(scale_front)
        return optimizer_cls(kwargs.pop("optimizer_dict"), **kwargs)
    split = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        for part in ([p for p in params if id(p) in decays], [p for p in params if id(p) not in decays]):
            if part:
                split.append(with_decay(group, part))
    return optimizer_cls(split, **kwargs, **scale_front)


def badam_optimizer(model: torch.nn.Module, cfg: "RunConfig", args) -> torch.optim.Optimizer:
    """BAdam (Luo et al. 2024): Adam on one block of layers at a time, switching every N steps."""
    from badam import BlockOptimizer

    from ..model.adapters.common import decoder_layers
    from ..model.patches import apply

    f, t = cfg.finetuning, args
    if f.badam_mode == "ratio":
        from badam import BlockOptimizerRatio

        apply("sparse_grad_norm")

        # Every matrix trains, but each step updates only a `badam_update_ratio` share of its
        # entries (adjacent or scattered), so Adam's states exist for that share alone.
        return BlockOptimizerRatio(
            param_groups=[{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": t.weight_decay}],
            named_parameters_list=list(model.named_parameters()), update_ratio=f.badam_update_ratio,
            switch_every=f.badam_switch_interval, mask_mode=f.badam_mask_mode, lr=t.learning_rate,
            betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon, include_embedding=False,
        )

    prefix, layers = decoder_layers(model)
    if f.badam_start_block is not None and not 0 <= f.badam_start_block < len(layers):
        raise LatheError(f"`badam_start_block: {f.badam_start_block}`: BAdam's blocks are this model's {len(layers)} "
                         f"layers, numbered 0 to {len(layers) - 1}.")
    base = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
        eps=t.adam_epsilon, weight_decay=t.weight_decay,
    )
    apply("badam_verbose")  # 0: quiet, 1: each switch's block, 2: also the parameters it trains
    return BlockOptimizer(
        base_optimizer=base,
        named_parameters_list=list(model.named_parameters()),
        block_prefix_list=[[f"{prefix}.{i}."] for i in range(len(layers))],
        switch_block_every=f.badam_switch_interval,
        start_block=f.badam_start_block,
        verbose=f.badam_verbose,
        # null: BAdam's own default order (descending), as LLaMA-Factory leaves it to BAdam
        **({"switch_mode": f.badam_switch_mode} if f.badam_switch_mode is not None else {}),
    )


def adam_mini_optimizer(model: torch.nn.Module, cfg: "RunConfig", args) -> torch.optim.Optimizer:
    """Adam-mini (Zhang et al. 2024): one second-moment value per block (head, neuron) instead of per weight.

    It cuts Adam's state about in half; it needs the attention shape to find the head blocks.
    """
    from adam_mini import Adam_mini

    t, c = args, model.config
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


def muon_optimizer(model: torch.nn.Module, cfg: "RunConfig", args) -> torch.optim.Optimizer:
    """Muon (Jordan et al. 2024, torch.optim.Muon) for the hidden 2-D weights, AdamW for the rest.

    Muon orthogonalises each matrix's momentum update (Newton-Schulz); it is defined for
    matrices, and embeddings and the output head are better served by AdamW, as its authors advise.
    """
    t = args
    skip = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    matrices, rest = [], []
    for p in model.parameters():
        if p.requires_grad:
            (matrices if p.ndim == 2 and id(p) not in skip else rest).append(p)
    muon = torch.optim.Muon(matrices, lr=t.learning_rate, weight_decay=t.weight_decay, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(rest, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
                              weight_decay=t.weight_decay)
    return OptimizerPair(muon, adamw)


# ------------------------------------------------------------------ the optimizers, registered by their flag


def _layerwise_check(name: str):
    def check(cfg: "RunConfig") -> None:
        if getattr(cfg.finetuning, f"{name}_layerwise") and cfg.training.gradient_accumulation_steps != 1:
            raise LatheError(f"{cfg.source}: layer-wise {name} updates during backward: set gradient_accumulation_steps: 1.")
    return check


def _badam_check(cfg: "RunConfig") -> None:
    f = cfg.finetuning
    if f.badam_mode == "ratio" and cfg.training.max_grad_norm:
        raise LatheError(f"{cfg.source}: BAdam ratio mode keeps sparse gradients, which cannot be norm-clipped: "
                         f"set `max_grad_norm: 0`.")
    layer_only = [key for key, unset in (("badam_start_block", None), ("badam_verbose", 0), ("badam_switch_mode", "ascending"))
                  if getattr(f, key) not in (unset, None)]
    if f.badam_mode == "ratio" and layer_only:
        raise LatheError(f"{cfg.source}: `{layer_only[0]}` is about BAdam's blocks of layers (`badam_mode: layer`); ratio "
                         f"mode trains a share of every matrix and has no blocks: remove it or use `badam_mode: layer`.")


def _adam_mini_check(cfg: "RunConfig") -> None:
    if importlib.util.find_spec("adam_mini") is None:
        raise LatheError(f"{cfg.source}: `use_adam_mini` needs the adam-mini package: pip install adam-mini "
                         f"(or lathe[optimizers]).")


def _muon_check(cfg: "RunConfig") -> None:
    if not hasattr(torch.optim, "Muon"):
        raise LatheError(f"{cfg.source}: `use_muon` uses torch.optim.Muon (torch >= 2.9); upgrade torch.")


def planned_galore_state(shape, f) -> int:
    """Two fp32 moments for the weights GaLore does not project, and its rank-r projected moments for the rest."""
    projected = sum(2 * f.galore_rank * max(i, o) for i, o in shape.linear_in_layers.values())
    return (shape.total - shape.linear_params) * 8 + projected * 4


GALORE = OPTIMIZERS.register(Optimizer(
    name="galore", flag="use_galore", help="low-rank projected Adam states", build=low_rank_optimizer,
    settings=galore_settings, check=_layerwise_check("galore"), planned_state=planned_galore_state,
    options=("galore_target", "galore_rank", "galore_update_interval", "galore_scale", "galore_proj_type",
             "galore_layerwise"),
))
APOLLO = OPTIMIZERS.register(Optimizer(
    name="apollo", flag="use_apollo", help="random-projected Adam scaling", build=low_rank_optimizer,
    settings=apollo_settings, check=_layerwise_check("apollo"),
    options=("apollo_target", "apollo_rank", "apollo_update_interval", "apollo_scale", "apollo_proj",
             "apollo_proj_type", "apollo_scale_type", "apollo_layerwise", "apollo_scale_front"),
))
BADAM = OPTIMIZERS.register(Optimizer(
    name="badam", flag="use_badam", help="one block at a time", build=badam_optimizer, check=_badam_check,
    options=("badam_mode", "badam_update_ratio", "badam_mask_mode", "badam_start_block", "badam_switch_mode",
             "badam_switch_interval", "badam_verbose"),
))
ADAM_MINI = OPTIMIZERS.register(Optimizer(
    name="adam_mini", flag="use_adam_mini", help="one second moment per block", build=adam_mini_optimizer,
    check=_adam_mini_check, with_fsdp=True,
))
MUON = OPTIMIZERS.register(Optimizer(
    name="muon", flag="use_muon", help="orthogonalised momentum for matrices", build=muon_optimizer,
    check=_muon_check, with_fsdp=True,
))
