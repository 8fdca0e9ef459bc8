"""Checks across options, run at load time so a bad combination costs seconds, not hours."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from ..errors import LatheError

if TYPE_CHECKING:
    from .load import RunConfig

# Methods with a working implementation today; the others are recognised LLaMA-Factory
# names that lathe refuses with a clear message. (Every stage in schema.STAGES runs.)
AVAILABLE_FINETUNING_TYPES = ("full", "freeze", "lora", "oft")

LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "use_rslora", "use_dora", "loraplus_lr_ratio",
             "loraplus_lr_embedding", "pissa_init", "pissa_iter", "create_new_adapter", "loftq_init", "pissa_convert")
FREEZE_KEYS = ("freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules", "use_llama_pro")
OFT_KEYS = ("oft_rank", "oft_block_size", "oft_target", "module_dropout")
METHOD_KEYS = {"lora": LORA_KEYS + ("additional_target",), "freeze": FREEZE_KEYS, "oft": OFT_KEYS}
ADAPTER_TYPES = ("lora", "oft")  # peft adapters: continue from adapter_name_or_path, train on quantized weights


def validate(cfg: "RunConfig") -> None:
    m, d, f, t = cfg.model, cfg.data, cfg.finetuning, cfg.training
    src = cfg.source
    if not m.model_name_or_path:
        raise LatheError(f"{src}: `model_name_or_path` is required: a local model folder or a hub id.")
    if f.finetuning_type not in AVAILABLE_FINETUNING_TYPES:
        raise LatheError(
            f"{src}: `finetuning_type: {f.finetuning_type}` is not available yet; "
            f"use one of {', '.join(AVAILABLE_FINETUNING_TYPES)}."
        )
    for method, keys in METHOD_KEYS.items():
        _only_with(cfg, keys, method)
    if m.adapter_name_or_path and t.do_train and f.finetuning_type not in ADAPTER_TYPES:
        raise LatheError(
            f"{src}: `adapter_name_or_path` continues adapter training and needs `finetuning_type: lora` (or oft) "
            f"(to train a merged model in full, export the merge first)."
        )
    if f.lora_rank <= 0:
        raise LatheError(f"{src}: `lora_rank` must be a positive integer, got {f.lora_rank}.")
    if f.lora_alpha is not None and f.lora_alpha <= 0:
        raise LatheError(f"{src}: `lora_alpha` must be positive, got {f.lora_alpha}.")
    if not 0.0 <= f.lora_dropout < 1.0:
        raise LatheError(f"{src}: `lora_dropout` must be in [0, 1), got {f.lora_dropout}.")
    if f.oft_rank < 0 or f.oft_block_size < 0 or not f.oft_rank and not f.oft_block_size or not 0 <= f.module_dropout < 1:
        raise LatheError(f"{src}: OFT needs `oft_rank` >= 0 or `oft_block_size` > 0, and `module_dropout` in [0, 1).")
    if f.use_llama_pro and f.freeze_trainable_layers <= 0:
        raise LatheError(f"{src}: `use_llama_pro` needs `freeze_trainable_layers` = the number of blocks added (> 0).")
    if f.freeze_trainable_layers == 0:
        raise LatheError(f"{src}: `freeze_trainable_layers` must not be 0 (N > 0: last N layers, N < 0: first N).")
    if d.cutoff_len <= 0:
        raise LatheError(f"{src}: `cutoff_len` must be a positive number of tokens, got {d.cutoff_len}.")
    if d.max_samples is not None and d.max_samples <= 0:
        raise LatheError(f"{src}: `max_samples` must be positive, got {d.max_samples}.")
    if d.val_size < 0 or (d.val_size >= 1 and not float(d.val_size).is_integer()):
        raise LatheError(f"{src}: `val_size` is a fraction in [0, 1) or a whole count, got {d.val_size}.")
    if t.do_train and not d.dataset:
        raise LatheError(f"{src}: `do_train: true` needs `dataset` (comma list of names in dataset_info.json).")
    if d.streaming:
        if t.max_steps is None or t.max_steps <= 0:
            raise LatheError(f"{src}: `streaming: true` needs `max_steps`: a stream has no known length to count epochs.")
        for key in ("packing", "neat_packing", "tokenized_path"):
            if getattr(d, key) and not (key == "packing" and f.stage == "pt"):
                raise LatheError(f"{src}: `{key}` works on the whole data set up front; it cannot go with `streaming: true`.")
        if 0 < d.val_size < 1:
            raise LatheError(f"{src}: with `streaming: true`, `val_size` must be a whole count of samples, got {d.val_size}.")
        if d.buffer_size <= 0:
            raise LatheError(f"{src}: `buffer_size` must be positive, got {d.buffer_size}.")
    if d.neat_packing and d.packing is False:
        raise LatheError(f"{src}: `neat_packing: true` packs samples; it cannot go with `packing: false`.")
    if d.padding_free and m.shift_attn:
        raise LatheError(f"{src}: `shift_attn` groups each padded row's tokens; it cannot go with `padding_free: true`.")
    if d.interleave_probs and not d.mix_strategy.startswith("interleave"):
        raise LatheError(f"{src}: `interleave_probs` needs `mix_strategy: interleave_under` or `interleave_over`.")
    if d.interleave_probs:
        try:
            probs = [float(p) for p in d.interleave_probs.split(",")]
        except ValueError:
            raise LatheError(f"{src}: `interleave_probs` must be a comma list of numbers, got {d.interleave_probs!r}.") from None
        if len(probs) != len([n for n in (d.dataset or "").split(",") if n.strip()]):
            raise LatheError(f"{src}: `interleave_probs` needs one probability per dataset in `dataset`.")
        if any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            raise LatheError(f"{src}: `interleave_probs` must be non-negative and sum to 1, got {d.interleave_probs}.")
    if f.pref_beta <= 0:
        raise LatheError(f"{src}: `pref_beta` must be positive, got {f.pref_beta}.")
    if not 0.0 <= f.dpo_label_smoothing <= 0.5:
        raise LatheError(f"{src}: `dpo_label_smoothing` must be in [0, 0.5], got {f.dpo_label_smoothing}.")
    if f.dpo_label_smoothing and f.pref_loss != "sigmoid":
        raise LatheError(f"{src}: `dpo_label_smoothing` applies to `pref_loss: sigmoid` only.")
    if f.ref_model and f.pref_loss in ("orpo", "simpo"):
        raise LatheError(f"{src}: `pref_loss: {f.pref_loss}` uses no reference model; remove `ref_model`.")
    if f.kto_chosen_weight < 0 or f.kto_rejected_weight < 0:
        raise LatheError(f"{src}: `kto_chosen_weight` and `kto_rejected_weight` must not be negative.")
    if m.quantization_bit is not None:
        if f.finetuning_type not in ADAPTER_TYPES:
            raise LatheError(
                f"{src}: `quantization_bit` needs `finetuning_type: lora` (QLoRA) or oft: quantized weights cannot be "
                f"trained in full; this run uses `{f.finetuning_type}`."
            )
        if m.quantization_bit not in (1, 2, 3, 4, 8) or m.quantization_bit < 4 and m.quantization_method != "hqq":
            raise LatheError(f"{src}: `quantization_bit` must be 4 or 8 (1, 2 and 3 with `quantization_method: hqq`), "
                             f"got {m.quantization_bit}.")
        if f.pissa_init:
            raise LatheError(f"{src}: `pissa_init` needs full-precision base weights; it cannot go with `quantization_bit`.")
    chosen = [k for k in ("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon") if getattr(f, k)]
    if len(chosen) > 1:
        raise LatheError(f"{src}: {', '.join(f'`{k}`' for k in chosen)} each replace the optimizer; use one.")
    if chosen and f.finetuning_type in ADAPTER_TYPES:
        raise LatheError(f"{src}: `{chosen[0]}` trains full-rank weights; it cannot go with `finetuning_type: {f.finetuning_type}`.")
    if f.use_badam and f.badam_mode == "ratio" and not 0 < f.badam_update_ratio <= 1:
        raise LatheError(f"{src}: `badam_update_ratio` is a share in (0, 1], got {f.badam_update_ratio}.")
    if f.use_badam and f.badam_mode == "ratio" and t.max_grad_norm:
        raise LatheError(f"{src}: BAdam ratio mode keeps sparse gradients, which cannot be norm-clipped: set `max_grad_norm: 0`.")
    if f.use_adam_mini and importlib.util.find_spec("adam_mini") is None:
        raise LatheError(f"{src}: `use_adam_mini` needs the adam-mini package: pip install adam-mini (or lathe[optimizers]).")
    if f.use_muon and not hasattr(__import__("torch").optim, "Muon"):
        raise LatheError(f"{src}: `use_muon` uses torch.optim.Muon (torch >= 2.9); upgrade torch.")
    if chosen and (f.loraplus_lr_ratio or t.deepspeed):
        raise LatheError(f"{src}: `{chosen[0]}` cannot go with LoRA+ or DeepSpeed.")
    if (f.galore_layerwise and f.use_galore or f.apollo_layerwise and f.use_apollo) and t.gradient_accumulation_steps != 1:
        raise LatheError(f"{src}: layer-wise GaLore/APOLLO update during backward: set gradient_accumulation_steps: 1.")
    for name in ("galore", "apollo"):
        if getattr(f, f"use_{name}") and getattr(f, f"{name}_rank") <= 0:
            raise LatheError(f"{src}: `{name}_rank` must be positive.")
    if f.loftq_init and (m.quantization_bit != 4 or m.quantization_method != "bnb"):
        raise LatheError(f"{src}: `loftq_init` starts LoRA at the error of 4-bit quantization: it needs `quantization_bit: 4` "
                         f"(quantization_method bnb).")
    if f.loftq_init and (f.pissa_init or f.use_dora or m.adapter_name_or_path and not f.create_new_adapter):
        raise LatheError(f"{src}: `loftq_init` initialises a new plain LoRA adapter; it cannot go with `pissa_init`, "
                         f"`use_dora` or continuing an adapter.")
    if f.pure_bf16 and (t.fp16 or m.dtype not in ("auto", "bfloat16")):
        raise LatheError(f"{src}: `pure_bf16` trains in bf16; it cannot go with `fp16: true` or `dtype: {m.dtype}`.")
    if f.pissa_convert and not f.pissa_init:
        raise LatheError(f"{src}: `pissa_convert` converts a PiSSA adapter; it needs `pissa_init: true`.")
    if f.use_dora and f.pissa_init:
        raise LatheError(f"{src}: `use_dora` and `pissa_init` are two different LoRA initialisations; pick one.")
    if f.loraplus_lr_ratio is not None and f.loraplus_lr_ratio <= 0:
        raise LatheError(f"{src}: `loraplus_lr_ratio` must be positive, got {f.loraplus_lr_ratio}.")
    if f.create_new_adapter and not m.adapter_name_or_path:
        raise LatheError(f"{src}: `create_new_adapter` needs `adapter_name_or_path` (the adapters to merge first).")
    if m.use_unsloth_gc and not m.use_unsloth:
        raise LatheError(f"{src}: `use_unsloth_gc` is unsloth's offloaded gradient checkpointing; it needs `use_unsloth: true`.")
    if m.use_unsloth:
        import torch

        if not torch.cuda.is_available() or importlib.util.find_spec("unsloth") is None:
            lacks = "a CUDA GPU" if not torch.cuda.is_available() else "the unsloth package (pip install unsloth)"
            raise LatheError(f"{src}: `use_unsloth` needs a CUDA GPU and the unsloth package (its Triton kernels have no "
                             f"CPU backend); this machine lacks {lacks}. Remove `use_unsloth` to train with transformers + peft.")
        if f.finetuning_type != "lora" or f.use_dora or f.pissa_init or f.loftq_init or m.shift_attn or (
                m.quantization_bit not in (None, 4)):
            raise LatheError(f"{src}: `use_unsloth` runs plain LoRA / 4-bit QLoRA here; drop DoRA, PiSSA, LoftQ, shift_attn, "
                             f"8-bit or other finetuning types, or drop `use_unsloth`.")
    if m.enable_liger_kernel:
        import torch

        if importlib.util.find_spec("liger_kernel") is None or not torch.cuda.is_available():
            raise LatheError(
                f"{src}: `enable_liger_kernel` needs the liger-kernel package and a CUDA GPU "
                f"(Triton has no CPU backend); pip install liger-kernel on a GPU machine, or remove it."
            )
    if f.stage == "ppo":
        if not f.reward_model:
            raise LatheError(f"{src}: `stage: ppo` needs `reward_model` (a folder from `stage: rm`, or an API URL).")
        if f.reward_model_type == "lora" and f.finetuning_type != "lora":
            raise LatheError(
                f"{src}: `reward_model_type: lora` swaps a reward adapter onto the policy's LoRA model; "
                f"use `finetuning_type: lora` or `reward_model_type: full`."
            )
        if f.reward_model_type == "api" and not f.reward_model.startswith(("http://", "https://")):
            raise LatheError(f"{src}: `reward_model_type: api` needs `reward_model` to be an http(s) URL.")
        if f.ppo_epochs <= 0 or f.ppo_buffer_size <= 0:
            raise LatheError(f"{src}: `ppo_epochs` and `ppo_buffer_size` must be positive.")
        if t.resume_from_checkpoint:
            raise LatheError(f"{src}: `stage: ppo` does not resume from checkpoints yet; start it again.")
        if d.streaming:
            raise LatheError(f"{src}: `stage: ppo` samples prompts at random and cannot stream them.")
    if t.predict_with_generate and f.stage != "sft":
        raise LatheError(f"{src}: `predict_with_generate` applies to `stage: sft` only.")
    if t.do_predict and not (d.eval_dataset or d.val_size > 0):
        raise LatheError(f"{src}: `do_predict` needs `eval_dataset` (or `val_size` > 0) to predict on.")
    if f.compute_accuracy and f.stage != "sft":
        raise LatheError(f"{src}: `compute_accuracy` applies to `stage: sft` only.")
    if f.stage != "sft":
        for key in ("train_on_prompt", "mask_history", "neat_packing", "padding_free"):
            if getattr(d, key):
                raise LatheError(f"{src}: `{key}` only applies to `stage: sft`.")
    if d.mask_history and d.train_on_prompt:
        raise LatheError(f"{src}: `mask_history` and `train_on_prompt` contradict each other; set one.")
    if t.learning_rate < 0:
        raise LatheError(f"{src}: `learning_rate` must not be negative, got {t.learning_rate}.")
    if t.per_device_train_batch_size <= 0 or t.gradient_accumulation_steps <= 0:
        raise LatheError(f"{src}: batch size and gradient_accumulation_steps must be positive.")
    if (t.do_eval or t.eval_strategy != "no") and not (d.eval_dataset or d.val_size > 0):
        raise LatheError(f"{src}: evaluation needs `eval_dataset` or `val_size` > 0.")
    if t.bf16 and t.fp16:
        raise LatheError(f"{src}: set at most one of `bf16` and `fp16`.")
    from ..distributed import check as check_distributed

    check_distributed(cfg)  # DeepSpeed / FSDP combinations


def check_raw_combinations(raw: dict, source: str) -> None:
    """Options that must be refused before transformers sees them (it would fail obscurely)."""
    if raw.get("deepspeed") and raw.get("fsdp"):
        raise LatheError(f"{source}: `deepspeed` and `fsdp` both shard the model; set one of them.")


def _only_with(cfg: "RunConfig", keys: tuple[str, ...], method: str) -> None:
    given = [k for k in keys if k in cfg.explicit]
    if given and cfg.finetuning.finetuning_type != method:
        raise LatheError(
            f"{cfg.source}: {', '.join(f'`{k}`' for k in given)} only apply to `finetuning_type: {method}`, "
            f"but this run uses `{cfg.finetuning.finetuning_type}`. Remove them or change finetuning_type."
        )
