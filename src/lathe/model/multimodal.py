"""Vision-language and omni models: which checkpoints are one, their processor, and which parts train.

A multimodal checkpoint is built with transformers' `AutoModelForMultimodalLM` (its class for every family that
takes images, video or audio next to text) and keeps its vision tower when saved, also when the data is text only.
Its parts are told apart by module name, which transformers 5 keeps uniform across families: the encoder
(`visual`, `vision_tower`, `audio_tower`, ...), the projector into the language model (`multi_modal_projector`,
Qwen's `visual.merger`, ...) and the language model with its head. `freeze_vision_tower` (default on),
`freeze_multi_modal_projector` (on) and `freeze_language_model` (off) say which of them train, as in
LLaMA-Factory; LoRA's `lora_target: all` skips the frozen ones instead of adapting them.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from ..errors import LatheError

if TYPE_CHECKING:
    from ..config import ModelArguments, RunConfig

logger = logging.getLogger(__name__)

# Sub-configs that make a config multimodal.
MEDIA_CONFIGS = ("vision_config", "audio_config", "thinker_config")
# Module-name patterns of each part; the projector is tested first (Qwen's merger sits inside `visual`).
PARTS = (
    ("projector", re.compile(r"(^|\.)(multi_modal_projector|mm_projector|connector|visual\.merger(_list)?|"
                             r"visual\.deepstack_merger_list|audio_tower\.proj\d*|vision_tower\.merger|"
                             r"embed_vision|embed_audio)(\.|$)")),  # embed_*: Gemma 3n's
    ("vision", re.compile(r"(^|\.)(visual|vision_tower|vision_model|vision_encoder|audio_tower|audio_encoder|"
                          r"vision_embed_tokens|image_newline)(\.|$)")),
    ("language", re.compile(r"(^|\.)(language_model|lm_head|embed_tokens)(\.|$)")),
)


# Checkpoints whose top model is not the one that trains: refused before the data, with what to do.
WHOLE_OMNI = {
    "qwen2_5_omni": "Qwen2.5-Omni's checkpoint holds the thinker (text, images, video, audio in; text out) and the "
                    "talker (speech out); lathe trains the thinker: save `model.thinker` of it "
                    "(Qwen2_5OmniThinkerForConditionalGeneration) to a folder with the processor and train that",
    "qwen3_omni_moe": "Qwen3-Omni's checkpoint holds the thinker (text, images, video, audio in; text out) and the "
                      "talker (speech out); lathe trains the thinker: save `model.thinker` of it "
                      "(Qwen3OmniMoeThinkerForConditionalGeneration) to a folder with the processor and train that",
}


def check_trainable(config: Any, where: str) -> None:
    if getattr(config, "model_type", None) in WHOLE_OMNI:
        raise LatheError(f"{where}: {WHOLE_OMNI[config.model_type]}.")


def is_multimodal(config: Any) -> bool:
    """A config whose model takes media (a vision or audio encoder) and that transformers builds as a multimodal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES

    if config is None:
        return False
    has_media = any(getattr(config, key, None) is not None for key in MEDIA_CONFIGS)
    return has_media and getattr(config, "model_type", None) in MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES


def model_class(config: Any):
    """The auto class that builds the model of `config` with its encoders."""
    from transformers import AutoModelForMultimodalLM

    return AutoModelForMultimodalLM


def load_processor(m: "ModelArguments", tokenizer: Any) -> Any:
    """The model's processor (image / video processor, feature extractor), sharing the run's tokenizer.

    The run's tokenizer is the one the template fixed (eos, pad, added tokens), so the processor saved with a
    fine-tuned model writes that one."""
    from transformers import AutoProcessor

    from .load import _hub_kwargs

    try:
        processor = AutoProcessor.from_pretrained(m.model_name_or_path, **_hub_kwargs(m))
    except (OSError, ValueError) as error:
        raise LatheError(f"{m.model_name_or_path}: the model takes images, video or audio, but its processor "
                         f"(preprocessor_config.json / processor_config.json) cannot be loaded: {error}") from None
    if not hasattr(processor, "tokenizer") or processor is tokenizer:
        raise LatheError(f"{m.model_name_or_path}: the model takes images, video or audio, but the folder has no "
                         "processor for them (processor_config.json or preprocessor_config.json); copy it from the "
                         "base model's folder.")
    processor.tokenizer = tokenizer
    return processor


def part_of(name: str) -> str | None:
    """"vision", "projector" or "language": the part a parameter or module name belongs to (None: none of them)."""
    for part, pattern in PARTS:
        if pattern.search(name):
            return part
    return None


def frozen_parts(cfg: "RunConfig") -> set[str]:
    f = cfg.finetuning
    parts = {part for part, on in (("vision", f.freeze_vision_tower), ("projector", f.freeze_multi_modal_projector),
                                   ("language", f.freeze_language_model)) if on}
    if parts >= {"vision", "projector", "language"}:
        raise LatheError(f"{cfg.source}: freeze_vision_tower, freeze_multi_modal_projector and freeze_language_model "
                         "together leave nothing to train; set one of them to false.")
    return parts


def excluded_modules(model: Any, cfg: "RunConfig") -> list[str]:
    """Full names of the modules an adapter must not go into: those of the frozen parts."""
    frozen = frozen_parts(cfg)
    return [name for name, _ in model.named_modules() if name and part_of(name) in frozen]


def freeze_parts(model: Any, cfg: "RunConfig") -> int:
    """Stop the gradient of the frozen parts' parameters (after the method chose what trains); returns how many."""
    frozen = frozen_parts(cfg)
    count = 0
    for name, param in model.named_parameters():
        if param.requires_grad and part_of(_base_name(name)) in frozen and "lora_" not in name:
            param.requires_grad_(False)
            count += param.numel()
    if count:
        logger.info("multimodal: %s parameters of the frozen parts (%s) do not train", f"{count:,}",
                    ", ".join(sorted(frozen)))
    return count


def _base_name(name: str) -> str:
    return name.replace("base_model.model.", "", 1)


def part_params(model: Any) -> dict[str, int]:
    """Parameters per part ("vision", "projector", "language", None for the rest) of a multimodal model."""
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        part = part_of(name)
        counts[part] = counts.get(part, 0) + param.numel()
    return counts


def image_tokens(config: Any, max_pixels: int) -> int | None:
    """About how many tokens an image of `max_pixels` pixels becomes, from the vision config alone (no processor):
    patches of `patch_size`, merged `spatial_merge_size` x `spatial_merge_size` where the family merges; a family
    with a fixed image size gives (image_size / patch_size)^2. None where the config says neither."""
    vision = getattr(config, "vision_config", None)
    patch = getattr(vision, "patch_size", None)
    if not patch:
        return None
    fixed = getattr(config, "mm_tokens_per_image", None) or getattr(config, "image_seq_length", None)
    if fixed:
        return int(fixed)
    merge = getattr(vision, "spatial_merge_size", None) or getattr(config, "spatial_merge_size", None)
    if merge:
        return max(1, max_pixels // (patch * merge) ** 2)
    size = getattr(vision, "image_size", None)
    return (int(size) // patch) ** 2 if size else None


# Module patterns (transformers' quantizer skip-list syntax: a regex from the start, up to a module boundary)
# that stay unquantized in a multimodal model: the encoders and projectors, small and mostly frozen, where
# 4-bit weights would only lose precision; and the output head, which transformers keeps out by default.
QUANTIZATION_SKIPS = [r".*(visual|vision_tower|vision_model|vision_encoder|audio_tower|multi_modal_projector|"
                      r"mm_projector|connector|embed_vision|embed_audio)", "lm_head"]


def skip_encoders_in_quantization(quant: Any) -> None:
    """Keep a bitsandbytes config of a multimodal model off its encoders and projector (QUANTIZATION_SKIPS)."""
    if hasattr(quant, "llm_int8_skip_modules"):
        quant.llm_int8_skip_modules = list(QUANTIZATION_SKIPS) + list(quant.llm_int8_skip_modules or [])
