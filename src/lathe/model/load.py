"""Tokenizer and causal LM from a local folder or a hub id, ready for the chosen method.

transformers does the loading; this module decides the arguments (dtype, attention kernel,
remote code), turns loading failures into messages a user can act on, grows the vocabulary
when the template or the config brings new tokens, and switches on gradient checkpointing.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import LatheError
from ..hub import hub_reachable, model_snapshot, offline_requested
from . import special_tokens
from .moe import configure_moe
from .quantize import check_prequantized, prequantized_config, quantization_config, quantize_loaded

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..config import RunConfig
    from ..config.options import ModelArguments

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def _hub_kwargs(m: "ModelArguments") -> dict[str, Any]:
    kwargs = {
        "trust_remote_code": m.trust_remote_code,
        "revision": m.model_revision,
        "cache_dir": m.cache_dir,
        "token": m.hf_hub_token,
    }
    name = m.model_name_or_path or ""
    if not _looks_local(name) and (offline_requested() or not hub_reachable()):
        # Read the local cache only: a cached model still loads, a missing one fails at once
        # instead of after minutes of download retries.
        kwargs["local_files_only"] = True
    return kwargs


def _from_snapshot(m: "ModelArguments") -> "ModelArguments":
    """The arguments with a ModelScope / Modelers id (USE_*_HUB set) replaced by its downloaded folder."""
    path = model_snapshot(m)
    return m if path == m.model_name_or_path else replace(m, model_name_or_path=path)


def check_model_path(m: "ModelArguments") -> None:
    """Fail early and clearly on a local model folder that is not there."""
    name = m.model_name_or_path or ""
    if _looks_local(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise LatheError(
                f"Model folder not found: {path}. `model_name_or_path` must be a folder with "
                f"config.json and weights, or a hub id such as `Qwen/Qwen2.5-0.5B-Instruct`."
            )
        if not (path / "config.json").exists():
            raise LatheError(f"{path} has no config.json: it is not a transformers model folder.")


def _loading_error(what: str, name: str, err: Exception) -> LatheError:
    text = str(err)
    if _looks_local(name):
        return LatheError(f"Could not load the {what} from {name}: {text}")
    offline = " The hub cannot be reached from here (or HF_HUB_OFFLINE is set) and no cached copy was found." if (
        offline_requested() or not hub_reachable()) else ""
    return LatheError(
        f"Could not load the {what} `{name}` from the hub: {text.splitlines()[0] if text else err!r}.{offline} "
        f"If this machine is offline, download the model elsewhere and set `model_name_or_path` to its folder."
    )


def load_tokenizer(m: "ModelArguments") -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    m = _from_snapshot(m)
    check_model_path(m)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            m.model_name_or_path,
            split_special_tokens=m.split_special_tokens,
            padding_side="right",
            **_hub_kwargs(m),
        )
    except (OSError, ValueError) as e:
        raise _loading_error("tokenizer", m.model_name_or_path, e) from None
    return tokenizer


def add_config_tokens(tokenizer: "PreTrainedTokenizerBase", m: "ModelArguments") -> list[str]:
    """Add the `add_tokens` / `add_special_tokens` (or `new_special_tokens_config`) tokens; returns those new to the vocab."""
    added: list[str] = []
    if m.add_tokens:
        new = [t.strip() for t in m.add_tokens.split(",") if t.strip()]
        if tokenizer.add_tokens(new):
            added += new
    new = special_tokens.special_tokens(m)
    if new and tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False):
        added += new
    return added


def resolve_dtype(cfg: "RunConfig") -> torch.dtype:
    """auto: the half dtype of the bf16/fp16 training flag, else fp32 (bf16 matmuls crawl on most CPUs)."""
    half = cfg.training.bf16 or cfg.training.fp16 or cfg.finetuning.pure_bf16 or cfg.model.dtype in ("bfloat16", "float16")
    if half and not torch.cuda.is_available():
        logger.warning(
            "Half precision on the CPU: most CPUs have no fast bf16/fp16 matmul (about 100x slower than "
            "fp32 on AVX2). Set `bf16: false` / `fp16: false` (and `dtype: float32`) unless this CPU has AMX."
        )
    if cfg.model.dtype != "auto":
        return DTYPES[cfg.model.dtype]
    if cfg.training.bf16 or cfg.finetuning.pure_bf16:
        return torch.bfloat16
    if cfg.training.fp16:
        return torch.float16
    return torch.float32


def resolve_attention(flash_attn: str) -> str | None:
    """Map `flash_attn` to transformers' attn_implementation (None = the library's best default)."""
    if flash_attn == "disabled":
        return "eager"
    if flash_attn == "sdpa":
        return "sdpa"
    if flash_attn == "fa3":
        from transformers.utils import is_flash_attn_3_available

        if not is_flash_attn_3_available():
            lacks = [what for what, ok in (
                ("the flash-attn 3 package (flash_attn_interface, built from flash-attention's hopper/ folder)",
                 importlib.util.find_spec("flash_attn_interface") is not None),
                ("a Hopper GPU (H100/H800, compute capability 9.0)",
                 torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)),
            ) if not ok]
            raise LatheError(
                f"`flash_attn: fa3` (FlashAttention 3) needs the flash-attn 3 package and a Hopper GPU; this machine "
                f"lacks {' and '.join(lacks) or 'a flash-attn 3 build transformers accepts'}. Use `flash_attn: fa2` "
                f"or `sdpa`."
            )
        return "flash_attention_3"
    has_fa2 = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
    if flash_attn == "fa2":
        if not has_fa2:
            raise LatheError(
                "`flash_attn: fa2` needs the flash-attn package and a CUDA GPU; "
                "install flash-attn or use `flash_attn: sdpa`."
            )
        return "flash_attention_2"
    return "flash_attention_2" if has_fa2 else None


def load_model_config(m: "ModelArguments"):
    """The model's config (config.json) alone: local folder checked, hub read offline-aware."""
    from transformers import AutoConfig

    m = _from_snapshot(m)
    check_model_path(m)
    try:
        return AutoConfig.from_pretrained(m.model_name_or_path, **_hub_kwargs(m))
    except (OSError, ValueError) as e:
        model_type = re.search(r"model type `([^`]+)` but Transformers does not recognize", str(e))
        if model_type:
            raise LatheError(
                f"{m.model_name_or_path}: model type `{model_type.group(1)}` is unknown to the transformers "
                f"installed here ({transformers_version()}). If the model is newer than it, upgrade "
                f"(`pip install -U transformers`); if its folder ships its own modelling code, set "
                f"`trust_remote_code: true`."
            ) from None
        raise _loading_error("model config", m.model_name_or_path, e) from None


def check_causal_lm(m: "ModelArguments") -> None:
    """Refuse, before any data is prepared, a model transformers cannot build as a causal LM.

    transformers' own error for this lists every causal-LM config class (about 200 names) and
    comes only after the data is tokenized; this one names the model's type and what to do.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from .multimodal import check_trainable, is_multimodal

    config = load_model_config(m)
    check_trainable(config, m.model_name_or_path)
    remote = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (remote and m.trust_remote_code) or is_multimodal(config):
        return
    architectures = ", ".join(getattr(config, "architectures", None) or []) or "no architectures named"
    hint = ("its folder ships its own modelling code: set `trust_remote_code: true` to use it." if remote else
            "lathe trains decoder-only language models and the vision / audio-language models built on them; "
            "an encoder or sequence-to-sequence model cannot be fine-tuned here.")
    raise LatheError(
        f"{m.model_name_or_path} is a `{config.model_type}` model ({architectures}), which transformers "
        f"{transformers_version()} cannot build as a causal language model: {hint}"
    )


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def load_model(cfg: "RunConfig", tokenizer: "PreTrainedTokenizerBase") -> "PreTrainedModel":
    """The causal LM with weights in the resolved dtype and the vocabulary matching the tokenizer."""
    from transformers import AutoModelForCausalLM

    m = _from_snapshot(cfg.model)
    if m is not cfg.model:  # unsloth and the rest below read the downloaded folder
        cfg = replace(cfg, model=m)
    config = load_model_config(m)
    apply_rope_scaling(config, m.rope_scaling, cfg.data.cutoff_len)
    configure_moe(config, cfg)
    prequantized = check_prequantized(config, cfg)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(cfg)}
    quant = quantization_config(cfg, kwargs["dtype"])
    if quant is not None:
        from .multimodal import is_multimodal, skip_encoders_in_quantization

        if is_multimodal(config):
            skip_encoders_in_quantization(quant)
        kwargs["quantization_config"] = quant
    dequantize = prequantized_config(prequantized, kwargs["dtype"])
    if dequantize is not None:  # mxfp4 / fp8: plain tensors from here on
        kwargs["quantization_config"] = dequantize
        prequantized = None
    kwargs.update(device_map_kwargs(cfg))
    attn = resolve_attention(m.flash_attn)
    if m.shift_attn and cfg.training.do_train:
        from .patches import shift_attn

        shift_attn.check_model(config)
        attn = shift_attn.register(cfg.data.cutoff_len)
    elif attn in (None, "sdpa") and cfg.training.do_train:  # sdpa, as the library would pick without fa2
        from .patches import varlen_sdpa

        if varlen_sdpa.usable(config):  # flattened rows: attention inside each sample only
            attn = varlen_sdpa.register()
    if attn:
        kwargs["attn_implementation"] = attn
    if m.use_unsloth:  # unsloth quantizes and patches the model itself
        from .unsloth import load as load_unsloth

        model = load_unsloth(cfg, kwargs["dtype"])
        resize_embeddings(model, tokenizer)
        special_tokens.initialize_rows(model, tokenizer, m, special_tokens.new_token_ids(tokenizer, m))
        return model
    from .multimodal import is_multimodal, model_class

    auto = model_class(config) if is_multimodal(config) else AutoModelForCausalLM
    if m.train_from_scratch:
        model = auto.from_config(config, trust_remote_code=m.trust_remote_code, **kwargs)
        logger.info("train_from_scratch: random weights from the config of %s", m.model_name_or_path)
    else:
        try:
            model = auto.from_pretrained(m.model_name_or_path, config=config, **kwargs, **_hub_kwargs(m))
        except (OSError, ValueError) as e:
            raise _loading_error("model", m.model_name_or_path, e) from None
        except pickle.UnpicklingError as e:  # torch.load(weights_only=True) met more than tensors
            raise LatheError(
                f"The weights of {m.model_name_or_path} are a pickle file holding Python objects besides tensors; "
                f"lathe loads pickles weights-only, since such objects can run code when loaded. Convert the "
                f"checkpoint to safetensors with a tool you trust, or use a safetensors checkpoint. ({e.__class__.__name__})"
            ) from None
    resize_embeddings(model, tokenizer)
    special_tokens.initialize_rows(model, tokenizer, m, special_tokens.new_token_ids(tokenizer, m))
    if quant is not None:
        release_checkpoint_mapping(model, m.model_name_or_path)
    quantized = quantize_loaded(model, cfg, kwargs["dtype"]) or quant is not None or prequantized is not None
    if quantized and cfg.training.do_train:
        from peft import prepare_model_for_kbit_training

        # Freezes the quantized weights, keeps norms in fp32 and makes inputs carry gradients for
        # checkpointing; the checkpointing itself is switched on by the stage as usual.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def device_map_kwargs(cfg: "RunConfig") -> dict[str, Any]:
    """`quantization_device_map: auto`: accelerate spreads the weights over the GPUs, the CPU and `offload_folder`.

    For inference and export only, as in LLaMA-Factory: a model split over devices cannot be
    handed to the Trainer. `offload_folder` is where the layers that fit nowhere go; without
    a device map nothing is offloaded (the config refuses it alone rather than ignore it).
    """
    m = cfg.model
    if m.quantization_device_map is None:
        return {}  # (offload_folder alone, training with a device map: refused when the config loads)
    return {"device_map": "auto", "offload_folder": m.offload_folder}


def release_checkpoint_mapping(model: torch.nn.Module, checkpoint: str | None = None) -> int:
    """Free the memory-mapped checkpoint behind the unquantized CPU tensors of a quantized load.

    transformers maps the safetensors file; after quantizing on the fly, the embeddings, norms
    and head that stay in full precision are still views into that mapping, which keeps every
    page read while quantizing resident: ~400 MiB over the plan for a 105M model on a CPU.
    Each such tensor gets storage of its own: where `checkpoint` (a local folder) holds it
    byte for byte, a copy-on-write mapping of just its bytes (`checkpoint_views`), so it stays
    file-backed: reclaimable under a memory limit, resident only where read (an embedding's
    looked-up rows), and written pages (a tensor that later trains) become private copies.
    Otherwise an owning copy. Returns the number of tensors given new storage.
    """
    views = checkpoint_views(checkpoint) if checkpoint else {}
    names = {id(t): n for n, t in [*model.named_parameters(), *model.named_buffers()]}
    released = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if type(tensor) in (torch.nn.Parameter, torch.Tensor) and tensor.device.type == "cpu" and tensor.is_floating_point():
            view = views.get(names.get(id(tensor)))
            mapped = view() if view is not None and view.dtype == tensor.dtype and view.shape == tensor.shape else None
            same = mapped is not None and torch.equal(mapped.flatten()[:64], tensor.data.flatten()[:64])
            tensor.data = mapped if same else tensor.data.clone()
            released += 1
    return released


class _CheckpointView:
    """Where one tensor's bytes lie in a safetensors file; called, a copy-on-write mapping of them."""

    def __init__(self, path: Path, offset: int, dtype: torch.dtype, shape: tuple[int, ...]):
        self.path, self.offset, self.dtype, self.shape = path, offset, dtype, torch.Size(shape)

    def __call__(self) -> torch.Tensor:
        import numpy as np

        size = self.shape.numel() * self.dtype.itemsize
        raw = np.memmap(self.path, dtype=np.uint8, mode="c", offset=self.offset, shape=(size,))
        return torch.from_numpy(raw).view(self.dtype).view(self.shape)


SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def checkpoint_views(folder: str) -> dict[str, _CheckpointView]:
    """Every floating-point tensor of the safetensors files in a local model folder, by name (the format:
    an 8-byte little-endian header length, a JSON header of dtype, shape and byte offsets, then the data)."""
    import json
    import struct

    views: dict[str, _CheckpointView] = {}
    for path in sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []:
        try:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
        except (OSError, ValueError, struct.error):
            continue
        for name, info in header.items():
            dtype = SAFETENSORS_DTYPES.get(info.get("dtype")) if isinstance(info, dict) else None
            if dtype is None:
                continue
            begin, end = info["data_offsets"]
            if end - begin == math.prod(info["shape"]) * dtype.itemsize and begin % dtype.itemsize == 0:
                views[name] = _CheckpointView(path, 8 + length + begin, dtype, tuple(info["shape"]))
    return views


def apply_rope_scaling(config, rope_type: str | None, cutoff_len: int) -> None:
    """Stretch RoPE so `cutoff_len` tokens fit: factor = ceil(cutoff_len / the model's positions).

    transformers 5 keeps RoPE settings in `config.rope_parameters`; the factor is 1.0 (no
    stretch, a note in the log) when the model already covers cutoff_len.
    """
    if rope_type is None:
        return
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        raise LatheError(f"`rope_scaling: {rope_type}`: this model's config has no max_position_embeddings.")
    factor = float(math.ceil(cutoff_len / positions)) if cutoff_len > positions else 1.0
    if factor == 1.0:
        logger.info("rope_scaling: cutoff_len %d fits the model's %d positions; factor 1.0", cutoff_len, positions)
    params.update({"rope_type": rope_type, "factor": factor})
    if rope_type in ("yarn", "llama3", "dynamic"):
        params.setdefault("original_max_position_embeddings", positions)
    if rope_type == "llama3":
        params.setdefault("low_freq_factor", 1.0)
        params.setdefault("high_freq_factor", 4.0)
    config.rope_parameters = params
    config.max_position_embeddings = int(positions * factor)
    logger.info("rope_scaling: %s x%.1f -> %d positions", rope_type, factor, config.max_position_embeddings)


def resize_embeddings(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> bool:
    """Grow the embeddings when the tokenizer has more tokens than the model has rows.

    New rows start at the mean of the old ones (a neutral start that keeps the first losses
    sane), so a template's added special token never indexes past the embedding table.
    """
    weight = model.get_input_embeddings().weight
    current = getattr(weight, "ds_shape", weight.shape)[0]  # ZeRO-3 partitioned: the local shape is empty
    if len(tokenizer) <= current:
        return False
    partition_dtype = getattr(weight, "ds_tensor", weight).dtype
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=None, mean_resizing=True)
    _keep_partition_dtype(model, partition_dtype)
    logger.info("Resized the embeddings from %d to %d rows for the added tokens.", current, len(tokenizer))
    return True


def _keep_partition_dtype(model: "PreTrainedModel", dtype) -> None:
    """ZeRO-3: transformers builds the resized tables, unpartitioned, in the dtype of the partitioned
    placeholder (fp32), not of the weights, and DeepSpeed then refuses a model of mixed dtypes; cast them back."""
    for embeddings in (model.get_input_embeddings(), model.get_output_embeddings()):
        weight = getattr(embeddings, "weight", None)
        data = getattr(weight, "ds_tensor", weight)
        if data is not None and data.dtype != dtype:
            data.data = data.data.to(dtype)


def enable_gradient_checkpointing(model: "PreTrainedModel", use_reentrant: bool, layers: int | None = None,
                                  offload: bool = False) -> None:
    """Trade compute for memory on the first `layers` decoder layers (None: all); the re-entrant variant needs
    inputs that require grad. `offload`: the checkpointed inputs wait in pinned host memory (transformers' own)."""
    from .adapters.common import decoder_layers

    if not getattr(model, "supports_gradient_checkpointing", False):
        logger.warning("%s does not support gradient checkpointing; training without it.", type(model).__name__)
        return
    kwargs = {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, offload=offload)
    elif offload:
        raise LatheError("Offloading checkpointed activations needs transformers >= 5.20 (`activation_checkpointing_enable`"
                         "(offload=True)); upgrade transformers or remove `offload_activations` / `use_unsloth_gc`.")
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if layers is not None:
        for index, layer in enumerate(decoder_layers(model)[1]):
            if hasattr(layer, "gradient_checkpointing"):
                layer.gradient_checkpointing = index < layers
    if use_reentrant:
        model.enable_input_require_grads()
    model.config.use_cache = False
