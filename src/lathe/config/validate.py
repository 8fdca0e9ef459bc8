"""Checks across options, run at load time so a bad combination costs seconds, not hours.

Each option's own constraints sit on its declaration (`options.py`), each group's between its
options in the group's `check`, and what a stage, method, preference loss or optimizer
needs in that member's descriptor (its `check` and its `options`). What is left here are
the rules across groups, and the one place that asks each chosen member to check the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import LatheError
from ..registry import METHODS, OPTIMIZERS, PREFERENCE_LOSSES, STAGES
from . import engines
from .load import owner
from .options import GROUPS
from .training import training_fields

if TYPE_CHECKING:
    from .load import RunConfig


def validate(cfg: "RunConfig") -> None:
    m, d, t = cfg.model, cfg.data, cfg.training
    src = cfg.source
    if not m.model_name_or_path:
        raise LatheError(f"{src}: `model_name_or_path` is required: a local model folder or a hub id.")
    if t.do_train and not d.dataset:
        raise LatheError(f"{src}: `do_train: true` needs `dataset` (comma list of names in dataset_info.json).")
    for name in GROUPS:
        group = getattr(cfg, name)
        if hasattr(group, "check"):
            group.check(src)
    _check_members(cfg)
    _check_across_groups(cfg)
    engines.check(cfg)  # DeepSpeed / FSDP combinations


def _check_members(cfg: "RunConfig") -> None:
    """The chosen stage, method, preference loss and optimizer each check the run; the others' options are refused.

    An option that belongs to a member the run did not pick is refused when it is set away from
    its default (it would configure something that does not run); at its default it is accepted,
    as LLaMA Board writes every key into the configs it saves. An optimizer's options are inert
    while its `use_` flag is off.
    """
    f = cfg.finetuning
    method = METHODS[f.finetuning_type]
    for registry, chosen in ((METHODS, f.finetuning_type), (STAGES, f.stage), (PREFERENCE_LOSSES, f.pref_loss)):
        shared = set(registry[chosen].options)  # grpo and rloo share theirs: set under either, they apply
        for other in registry.values():
            changed = [k for k in other.options if k not in shared and _value(cfg, k) != _default(k)]
            if other.name != chosen and changed:
                raise LatheError(
                    f"{cfg.source}: {', '.join(f'`{k}`' for k in changed)} only apply to `{registry.key}: {other.name}`, "
                    f"but this run uses `{chosen}`. Remove them or change {registry.key}."
                )
    chosen_optimizers = [o for o in OPTIMIZERS.values() if getattr(f, o.flag)]
    if len(chosen_optimizers) > 1:
        raise LatheError(f"{cfg.source}: {', '.join(f'`{o.flag}`' for o in chosen_optimizers)} each replace the "
                         f"optimizer; use one.")
    if chosen_optimizers and method.adapter:
        raise LatheError(f"{cfg.source}: `{chosen_optimizers[0].flag}` trains full-rank weights; it cannot go with "
                         f"`finetuning_type: {method.name}`.")
    members = [STAGES[f.stage], method, PREFERENCE_LOSSES[f.pref_loss], *chosen_optimizers]
    for member in members:
        if member.check is not None:
            member.check(cfg)


def _value(cfg: "RunConfig", key: str) -> Any:
    return getattr(getattr(cfg, owner(key)), key)


def _default(key: str) -> Any:
    group = owner(key)
    fields = training_fields() if group == "training" else GROUPS[group].__dataclass_fields__
    return fields[key].default


def _check_across_groups(cfg: "RunConfig") -> None:
    m, d, f, t = cfg.model, cfg.data, cfg.finetuning, cfg.training
    src = cfg.source
    method = METHODS[f.finetuning_type]
    if m.adapter_name_or_path and t.do_train and not method.adapter:
        raise LatheError(
            f"{src}: `adapter_name_or_path` continues adapter training and needs {_methods_where('adapter')} "
            f"(to train a merged model in full, export the merge first)."
        )
    if m.quantization_bit is not None and not method.quantized_base:
        raise LatheError(
            f"{src}: `quantization_bit` needs {_methods_where('quantized_base')} (QLoRA): quantized weights cannot be "
            f"trained in full; this run uses `{f.finetuning_type}`."
        )
    bnb_4bit = m.quantization_method == "bnb" and 4 in (m.quantization_bit, f.ref_model_quantization_bit,
                                                          f.reward_model_quantization_bit)
    bnb_only = [k for k, default in (("quantization_type", "nf4"), ("double_quantization", True)) if getattr(m, k) != default]
    if bnb_only and not bnb_4bit:
        raise LatheError(f"{src}: `{bnb_only[0]}` shapes bitsandbytes' 4-bit weights, and this run loads none "
                         f"(`quantization_method: bnb` with `quantization_bit: 4`, or a reference / reward model in 4 bits); "
                         f"remove it.")
    if m.quantization_device_map is not None and t.do_train:
        raise LatheError(f"{src}: `quantization_device_map: auto` spreads a model over devices for inference and export; "
                         f"training cannot use it. Remove it from the training config (keep it in the chat / export config).")
    if m.use_unsloth and not method.unsloth:
        raise LatheError(f"{src}: `use_unsloth` builds {_methods_where('unsloth')} (QLoRA 4-bit at most); this run "
                         f"uses `{f.finetuning_type}`: drop `use_unsloth` or change finetuning_type.")
    if d.streaming:
        if t.max_steps is None or t.max_steps <= 0:
            raise LatheError(f"{src}: `streaming: true` needs `max_steps`: a stream has no known length to count epochs.")
        for key in ("packing", "neat_packing"):
            if getattr(d, key) and not (key == "packing" and STAGES[f.stage].packs_by_default):
                raise LatheError(f"{src}: `{key}` works on the whole data set up front; it cannot go with `streaming: true`.")
        if 0 < d.val_size < 1:
            raise LatheError(f"{src}: with `streaming: true`, `val_size` must be a whole count of samples, got {d.val_size}.")
    if d.tokenize_in_background:
        _check_background_tokenizing(cfg)
    if d.padding_free and m.shift_attn:
        raise LatheError(f"{src}: `shift_attn` groups each padded row's tokens; it cannot go with `padding_free: true`.")
    if f.pure_bf16 and (t.fp16 or m.dtype not in ("auto", "bfloat16")):
        raise LatheError(f"{src}: `pure_bf16` trains in bf16; it cannot go with `fp16: true` or `dtype: {m.dtype}`.")
    if t.do_predict and not (d.eval_dataset or d.val_size > 0):
        raise LatheError(f"{src}: `do_predict` needs `eval_dataset` (or `val_size` > 0) to predict on.")
    if (t.do_eval or t.eval_strategy != "no") and not (d.eval_dataset or d.val_size > 0):
        raise LatheError(f"{src}: evaluation needs `eval_dataset` or `val_size` > 0.")
    if m.moe_aux_loss_coef is not None:
        _check_router_loss(cfg)
    if d.eval_on_each_dataset:
        _check_eval_on_each_dataset(cfg)
    if d.eval_num_beams is not None and not (t.do_predict and t.predict_with_generate):
        raise LatheError(f"{src}: `eval_num_beams` is the beam width of `predict_with_generate`; set `do_predict: true` "
                         f"and `predict_with_generate: true`, or drop it.")
    if t.learning_rate < 0:
        raise LatheError(f"{src}: `learning_rate` must not be negative, got {t.learning_rate}.")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(t, key) <= 0:
            raise LatheError(f"{src}: `{key}` must be positive, got {getattr(t, key)}.")
    if t.bf16 and t.fp16:
        raise LatheError(f"{src}: set at most one of `bf16` and `fp16`.")


def _check_router_loss(cfg: "RunConfig") -> None:
    """An MoE router's loss is added to the loss the model returns; a stage computing its loss from the
    logits would drop it (sft's own token losses say so in sft's check)."""
    src, stage = cfg.source, cfg.finetuning.stage
    if not STAGES[stage].model_loss:
        with_it = " or ".join(name for name, each in STAGES.items() if each.model_loss)
        raise LatheError(f"{src}: `moe_aux_loss_coef` adds the router loss to the model's own loss, which `stage: {stage}` "
                         f"does not train on (it computes its loss from the logits); use it with stage {with_it}, or remove it.")


def _check_eval_on_each_dataset(cfg: "RunConfig") -> None:
    """One evaluation per named eval dataset needs those names and a Trainer's evaluation loop."""
    d, src, key = cfg.data, cfg.source, "`eval_on_each_dataset: true`"
    if d.val_size > 0:
        raise LatheError(f"{src}: {key} evaluates each dataset of `eval_dataset` on its own; `val_size` holds out one "
                         f"set from the training data. Name the eval datasets in `eval_dataset` (and drop `val_size`), "
                         f"or drop `eval_on_each_dataset`.")
    if not d.eval_dataset:
        raise LatheError(f"{src}: {key} evaluates each dataset of `eval_dataset` on its own, and none is named. "
                         f"Set `eval_dataset`, or drop `eval_on_each_dataset`.")
    if not STAGES[cfg.finetuning.stage].trainer:
        raise LatheError(f"{src}: {key}: `stage: {cfg.finetuning.stage}` runs no evaluation loop. Drop `eval_on_each_dataset`.")
    if cfg.training.do_predict:
        raise LatheError(f"{src}: {key} cannot go with `do_predict`, which predicts on one set. Predict in a run of its "
                         f"own (one `eval_dataset`), or drop `eval_on_each_dataset`.")


def _check_background_tokenizing(cfg: "RunConfig") -> None:
    src, d, stage = cfg.source, cfg.data, STAGES[cfg.finetuning.stage]
    if not (d.streaming and d.tokenized_path):
        raise LatheError(f"{src}: `tokenize_in_background` trains from the shards of `tokenized_path` as they are "
                         f"written: set `streaming: true` and `tokenized_path`, or remove it.")
    if not stage.processor.parallel or d.packing or d.neat_packing:
        raise LatheError(f"{src}: `tokenize_in_background` hands samples to training shard by shard; `stage: "
                         f"{stage.name}` with packing sees the whole data set at once. Remove `tokenize_in_background`.")


def check_raw_combinations(raw: dict, source: str) -> None:
    """Options that must be refused before transformers sees them (it would fail obscurely)."""
    if raw.get("deepspeed") and raw.get("fsdp"):
        raise LatheError(f"{source}: `deepspeed` and `fsdp` both shard the model; set one of them.")


def _methods_where(flag: str) -> str:
    """`finetuning_type: a` or `finetuning_type: b`: the methods whose descriptor sets `flag`."""
    return " or ".join(f"`finetuning_type: {name}`" for name, method in METHODS.items() if getattr(method, flag))
