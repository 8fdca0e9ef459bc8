"""LoRA through peft: low-rank updates on the chosen linear layers, the base frozen."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ...errors import LatheError
from ...hub import model_snapshot
from ...process import is_main_process
from ...registry import METHODS
from .common import embedding_module_names, resolve_targets, split_names
from .method import Method

logger = logging.getLogger(__name__)


# Quantized linear layers that are not torch.nn.Linear subclasses but that peft can wrap.
QUANTIZED_LINEARS = {"HQQLinear", "QuantLinear", "WQLinear_GEMM", "WQLinear_GEMV", "QuantizedLinear"}


def linear_module_names(model: torch.nn.Module, excluded: frozenset[str] = frozenset()) -> list[str]:
    """Short names of every linear layer except the output head and the `excluded` modules: what
    `lora_target: all` means. A layer named by its index in a Sequential (a projector's `mlp.0`) keeps its
    parent's name, since peft matches names by their end and `0` would also match decoder layer 0."""
    skip = set(embedding_module_names(model))
    names = {_short(name) for name, m in model.named_modules()
             if (_plain_linear(m) or type(m).__name__ in QUANTIZED_LINEARS) and name not in excluded}
    return sorted(names - skip)


# Linear subclasses whose forward returns more than a tensor, which a LoRA wrapper cannot add to.
NOT_LORA_LINEARS = {"Llama4Router"}  # (router scores, router logits)


def _plain_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) and type(module).__name__ not in NOT_LORA_LINEARS


def _short(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def lora_targets(model: torch.nn.Module, value: str, excluded: frozenset[str] = frozenset()) -> list[str]:
    """The modules `lora_target` names: `all` is every linear layer but the output head (and the frozen parts
    of a multimodal model, `excluded`); a list may also
    name the embeddings or the head (peft gives an embedding `lora_embedding_A/B`, which LoRA+ trains at
    `loraplus_lr_embedding`), as LLaMA-Factory passes the names to peft as they are."""
    linears = linear_module_names(model, excluded)
    if split_names(value) == ["all"]:
        return linears
    return resolve_targets("lora_target", value, linears + embedding_module_names(model))


def load_adapters(model, paths: list[str], trainable_last: bool, subfolder: str | None = None,
                  offload_folder: str | None = None):
    """Merge the adapters in order into `model`; the last stays a trainable adapter when asked.

    Merging (rather than stacking adapters) keeps one set of LoRA weights in training and
    makes inference as fast as the base model. `subfolder` (`adapter_folder`) is where, inside
    each of `paths`, the adapter files are, as peft's `subfolder` (LLaMA-Factory's meaning);
    `offload_folder` is where peft offloads adapter weights of a model spread by a device map.
    """
    from peft import PeftModel

    for i, path in enumerate(paths):
        folder = Path(path)
        files = folder / subfolder if subfolder else folder
        if not (files / "adapter_config.json").exists():
            where = f"{folder} (adapter_folder {subfolder})" if subfolder else str(folder)
            raise LatheError(f"`adapter_name_or_path`: {where} is not a LoRA adapter folder (no adapter_config.json in {files}).")
        last = i == len(paths) - 1
        extra = {"subfolder": subfolder} if subfolder else {}
        if offload_folder:
            extra["offload_folder"] = offload_folder
        try:
            model = PeftModel.from_pretrained(model, str(folder), is_trainable=last and trainable_last, **extra)
        except (RuntimeError, ValueError) as e:  # a shape mismatch: the adapter was trained on another model
            raise LatheError(
                f"`adapter_name_or_path`: {folder} does not fit this model ({str(e).splitlines()[0][:300]}). "
                f"Was it trained on another base model?"
            ) from None
        if not (last and trainable_last):
            model = model.merge_and_unload()
    return model


def adapter_location(m) -> dict[str, str | None]:
    """`load_adapters` keywords from the model options: the adapter sub-folder and, with a device map, the offload folder."""
    return {"subfolder": m.adapter_folder,
            "offload_folder": m.offload_folder if m.quantization_device_map is not None else None}


def _init(f) -> bool | str:
    """PiSSA: the adapter starts from each weight's principal singular vectors (base keeps the rest)."""
    if not f.pissa_init:
        return True
    return "pissa" if f.pissa_iter == -1 else f"pissa_niter_{f.pissa_iter}"


def apply_lora(model, cfg, new_token_rows: bool = False):
    from peft import LoraConfig, TaskType, get_peft_model

    f = cfg.finetuning
    adapters = split_names(cfg.model.adapter_name_or_path)
    where = adapter_location(cfg.model)
    if adapters and not f.create_new_adapter:  # continue training the last adapter; the earlier ones are merged in
        return load_adapters(model, adapters, trainable_last=True, **where)
    if adapters:  # create_new_adapter: merge them all, then a fresh adapter on top
        model = load_adapters(model, adapters, trainable_last=False, **where)
    from ..multimodal import excluded_modules, is_multimodal

    excluded = excluded_modules(model, cfg) if is_multimodal(model.config) else []
    targets = lora_targets(model, f.lora_target, frozenset(excluded))
    to_save = modules_to_save(model, f.additional_target, new_token_rows)
    if cfg.model.use_unsloth:
        from ..unsloth import add_lora

        return add_lora(model, cfg, targets, to_save or None)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        exclude_modules=excluded or None,  # the frozen encoder / projector of a multimodal model
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
    if f.pissa_init and f.pissa_convert and cfg.training.do_train and is_main_process():
        model.save_pretrained(str(Path(cfg.training.output_dir) / PISSA_INIT))  # what the final save converts against
    if f.loftq_init:
        init_loftq(model, model_snapshot(cfg.model))  # the checkpoint files, wherever the hub put them
    return model


def modules_to_save(model, additional_target: str | None, new_token_rows: bool) -> list[str]:
    """Modules trained in full beside the adapter: `additional_target`, plus the embeddings when the vocabulary grew."""
    names = split_names(additional_target)
    if new_token_rows:
        names += [e for e in embedding_module_names(model) if e not in names]
    available = sorted({name.split(".")[-1] for name, _ in model.named_modules()} - {""})
    return resolve_targets("additional_target", ",".join(names), available, allow_all=False)


PISSA_INIT = "pissa_init"  # the adapter as PiSSA initialised it, kept in output_dir until the final save


def convert_pissa(model, cfg) -> None:
    """pissa_convert, a step of the final save: rewrite the saved adapter as plain LoRA that fits the original base.

    PiSSA moves the principal part of each weight from the base into the adapter, so its trained
    adapter only works on that modified base. peft can express trained-minus-initial as an
    ordinary LoRA of twice the rank, given the adapter as it was before training (saved by
    `apply_lora` in output_dir/pissa_init). Checkpoints stay in PiSSA form so training can
    resume from them; only the final adapter in output_dir is converted.
    """
    import shutil

    f, out = cfg.finetuning, Path(cfg.training.output_dir)
    init_dir = out / PISSA_INIT
    if not (f.pissa_init and f.pissa_convert) or not init_dir.exists() or not is_main_process():
        return
    model.save_pretrained(str(out), selected_adapters=["default"],
                          path_initial_model_for_weight_conversion=str(init_dir))
    shutil.rmtree(init_dir, ignore_errors=True)
    logger.info("pissa_convert: saved %s as a plain LoRA adapter (rank x2) for the original base model", out)


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


def _check(cfg) -> None:
    """LoRA's initialisations, and what each needs or excludes."""
    m, f, src = cfg.model, cfg.finetuning, cfg.source
    if f.pissa_init and m.quantization_bit is not None:
        raise LatheError(f"{src}: `pissa_init` needs full-precision base weights; it cannot go with `quantization_bit`.")
    if f.loftq_init and (m.quantization_bit != 4 or m.quantization_method != "bnb"):
        raise LatheError(f"{src}: `loftq_init` starts LoRA at the error of 4-bit quantization: it needs `quantization_bit: 4` "
                         f"(quantization_method bnb).")
    if f.loftq_init and (f.pissa_init or f.use_dora or m.adapter_name_or_path and not f.create_new_adapter):
        raise LatheError(f"{src}: `loftq_init` initialises a new plain LoRA adapter; it cannot go with `pissa_init`, "
                         f"`use_dora` or continuing an adapter.")
    if f.pissa_convert and not f.pissa_init:
        raise LatheError(f"{src}: `pissa_convert` converts a PiSSA adapter; it needs `pissa_init: true`.")
    if f.use_dora and f.pissa_init:
        raise LatheError(f"{src}: `use_dora` and `pissa_init` are two different LoRA initialisations; pick one.")
    if f.create_new_adapter and not m.adapter_name_or_path:
        raise LatheError(f"{src}: `create_new_adapter` needs `adapter_name_or_path` (the adapters to merge first).")
    if m.use_unsloth and (f.use_dora or f.pissa_init or f.loftq_init or m.shift_attn or m.quantization_bit not in (None, 4)):
        raise LatheError(f"{src}: `use_unsloth` runs plain LoRA / 4-bit QLoRA here; drop DoRA, PiSSA, LoftQ, shift_attn or "
                         f"8-bit, or drop `use_unsloth`.")


def planned_lora_params(shape, f) -> int:
    """rank x (in + out) for every linear layer of the decoder layers (`lora_target: all`)."""
    return sum(f.lora_rank * (i + o) for i, o in shape.linear_in_layers.values())


LORA = METHODS.register(Method(
    name="lora", help="low-rank adapters", apply=apply_lora, check=_check, adapter=True, quantized_base=True,
    unsloth=True, after_save=convert_pissa, planned_trainable=planned_lora_params,
    options=("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "use_rslora", "use_dora", "loraplus_lr_ratio",
             "loraplus_lr_embedding", "pissa_init", "pissa_iter", "create_new_adapter", "loftq_init", "pissa_convert"),
    # `additional_target` is shared with OFT: full and freeze refuse it in their checks
    trainer_defaults={"ddp_find_unused_parameters": False},  # frozen base weights get no gradient
))
