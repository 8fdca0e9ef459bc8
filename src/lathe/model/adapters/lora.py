"""LoRA through peft: low-rank updates on the chosen linear layers, the base frozen."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ...errors import LatheError
from .common import embedding_module_names, split_names

logger = logging.getLogger(__name__)


# Quantized linear layers that are not torch.nn.Linear subclasses but that peft can wrap.
QUANTIZED_LINEARS = {"HQQLinear", "QuantLinear", "WQLinear_GEMM", "WQLinear_GEMV", "QuantizedLinear"}


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of every linear layer except the output head: what `lora_target: all` means."""
    skip = set(embedding_module_names(model))
    names = {name.split(".")[-1] for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) or type(m).__name__ in QUANTIZED_LINEARS}
    return sorted(names - skip)


def load_adapters(model, paths: list[str], trainable_last: bool):
    """Merge the adapters in order into `model`; the last stays a trainable adapter when asked.

    Merging (rather than stacking adapters) keeps one set of LoRA weights in training and
    makes inference as fast as the base model.
    """
    from peft import PeftModel

    for i, path in enumerate(paths):
        folder = Path(path)
        if not (folder / "adapter_config.json").exists():
            raise LatheError(f"`adapter_name_or_path`: {folder} is not a LoRA adapter folder (no adapter_config.json).")
        last = i == len(paths) - 1
        try:
            model = PeftModel.from_pretrained(model, str(folder), is_trainable=last and trainable_last)
        except (RuntimeError, ValueError) as e:  # a shape mismatch: the adapter was trained on another model
            raise LatheError(
                f"`adapter_name_or_path`: {folder} does not fit this model ({str(e).splitlines()[0][:300]}). "
                f"Was it trained on another base model?"
            ) from None
        if not (last and trainable_last):
            model = model.merge_and_unload()
    return model


def _init(f) -> bool | str:
    """PiSSA: the adapter starts from each weight's principal singular vectors (base keeps the rest)."""
    if not f.pissa_init:
        return True
    return "pissa" if f.pissa_iter == -1 else f"pissa_niter_{f.pissa_iter}"


def apply_lora(model, cfg, new_token_rows: bool = False):
    from peft import LoraConfig, TaskType, get_peft_model

    f = cfg.finetuning
    adapters = split_names(cfg.model.adapter_name_or_path)
    if adapters and not f.create_new_adapter:  # continue training the last adapter; the earlier ones are merged in
        return load_adapters(model, adapters, trainable_last=True)
    if adapters:  # create_new_adapter: merge them all, then a fresh adapter on top
        model = load_adapters(model, adapters, trainable_last=False)
    available = linear_module_names(model)
    targets = split_names(f.lora_target)
    if targets == ["all"]:
        targets = available
    else:
        missing = [t for t in targets if t not in available]
        if missing:
            raise LatheError(
                f"`lora_target`: {', '.join(missing)} is not a linear layer of this model; "
                f"choose from: {', '.join(available)} (or `all`)."
            )
    to_save = split_names(f.additional_target)
    if new_token_rows:
        to_save += [e for e in embedding_module_names(model) if e not in to_save]
    all_modules = {name.split(".")[-1] for name, _ in model.named_modules()}
    missing = [m for m in to_save if m not in all_modules]
    if missing:
        raise LatheError(f"`additional_target`: no module named {', '.join(missing)} in the model.")

    if cfg.model.use_unsloth:
        from ..unsloth import add_lora

        return add_lora(model, cfg, targets, to_save or None)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=f.lora_rank,
        lora_alpha=f.lora_alpha or 2 * f.lora_rank,
        lora_dropout=f.lora_dropout,
        target_modules=targets,
        modules_to_save=to_save or None,
        use_rslora=f.use_rslora,
        use_dora=f.use_dora,
        init_lora_weights=_init(f),
    )
    model = get_peft_model(model, config)
    if f.pissa_init and f.pissa_convert and cfg.training.do_train:
        save_as_plain_lora(model, cfg.training.output_dir, cfg.training.process_index == 0)
    if f.loftq_init:
        init_loftq(model, cfg.model.model_name_or_path)
    return model


def save_as_plain_lora(model, output_dir: str, main_process: bool) -> None:
    """pissa_convert: the final adapter is saved as a plain LoRA adapter that fits the original base.

    PiSSA moves the principal part of each weight from the base into the adapter, so its trained
    adapter only works on that modified base. peft can express trained-minus-initial as an
    ordinary LoRA of twice the rank, given the adapter as it was before training: that is saved
    now (`pissa_init`), and the final save to output_dir converts with it (checkpoints stay in
    PiSSA form so training can resume from them). The instance's save_pretrained is wrapped,
    which the Trainer calls for its final save; no class is touched.
    """
    import shutil

    init_dir = Path(output_dir) / "pissa_init"
    if main_process:
        model.save_pretrained(str(init_dir))
    final = Path(output_dir).resolve()
    save = model.save_pretrained

    def save_converted(save_directory, *args, **kwargs):
        if Path(save_directory).resolve() != final or not init_dir.exists():
            return save(save_directory, *args, **kwargs)
        save(save_directory, *args, path_initial_model_for_weight_conversion=str(init_dir), **kwargs)
        shutil.rmtree(init_dir, ignore_errors=True)
        logger.info("pissa_convert: saved %s as a plain LoRA adapter (rank x2) for the original base model", final)

    model.save_pretrained = save_converted


def init_loftq(model, model_name: str) -> None:
    """LoftQ (Li et al. 2023): start LoRA at the low-rank part of the quantization error.

    The adapter starts as the rank-r SVD of W - dequant(Q(W)), read from the checkpoint's
    full-precision weights, so quantized base + adapter starts closer to the original model than
    the quantized base alone. peft's `replace_lora_weights_loftq` does it for bnb 4-bit layers;
    it ignores the LoRA scale, so B is divided by it here to make B @ A * scale the residual.
    """
    from peft import replace_lora_weights_loftq

    from ..patches import apply

    apply("loftq_cpu")
    path = model_name if Path(model_name).expanduser().is_dir() else None

    def unscale(peft_model, name: str) -> bool:
        layer = peft_model.get_submodule("base_model.model." + name)
        layer.lora_B["default"].weight.data /= layer.scaling["default"]
        return True

    try:
        replace_lora_weights_loftq(model, model_path=path, callback=unscale)
    except (ValueError, FileNotFoundError) as e:
        raise LatheError(f"`loftq_init`: {e} (LoftQ reads the full-precision weights from the model's safetensors).") from None
