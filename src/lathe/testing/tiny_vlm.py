"""Tiny random-weight vision-language and audio-language models, built offline and cached on disk.

Why: multimodal fine-tuning must meet the real transformers classes (the processor that expands
`<|image_pad|>` into N tokens, the model that checks N against `image_grid_thw`, mrope position
ids), but tests cannot download a 7B checkpoint or its processor. Each family here is a genuine
`Qwen2VLForConditionalGeneration` / ... with a 2-layer, 64-wide text model, a 1-2 block vision
or audio encoder, and a processor assembled from the real classes (image processor, video
processor, Whisper feature extractor) around lathe's demo tokenizer plus the family's special
tokens. The folder loads with `AutoProcessor.from_pretrained(folder)` and
`<model_class>.from_pretrained(folder)` like a hub checkpoint.

The same family name always gives the same folder and weights: the folder name hashes the
family's recipe, the demo tokenizer's files and the library versions; weights come from a fixed
seed; the folder is written atomically (`lathe.build_cache.build_once`).

More families register into `FAMILIES` from `lathe.testing.tiny_vlm_more` (imported at the end).

    python -m lathe.testing.tiny_vlm --family qwen2_vl [--out DIR]
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lathe.build_cache import build_once, default_cache_root, hash_files, short_hash
from lathe.errors import LatheError, lookup

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase, ProcessorMixin

# Bump when a recipe below changes, so folders built by an older recipe are not reused.
RECIPE_VERSION = 1
SEED = 0
MAX_POSITIONS = 4096

# The shared tiny text model: head_dim 16, so the rotary half is 8 wide and mrope splits it in 3.
TEXT = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": MAX_POSITIONS, "tie_word_embeddings": False,
}
# Qwen2-VL / 2.5-VL / 2.5-Omni ship mrope_section [16, 24, 24] for head_dim 128; [2, 3, 3] is the same split for 16.
QWEN2_MROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}

# Image / video resizing bounds (pixels). Real Qwen2.5-VL: min 3136 (56*56), max 12845056. Here a
# 56x56 image is 4x4 patches of 14 -> 16 patches -> 4 tokens after the 2x2 merge, and no image
# grows past 112x112 (64 patches, 16 tokens), so tests stay fast.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112
# Qwen3-VL patches are 16 wide (32 per merged token).
QWEN3_MIN_PIXELS = 64 * 64
QWEN3_MAX_PIXELS = 128 * 128

# --- chat templates ------------------------------------------------------------------------------
# Qwen2-VL / Qwen2.5-VL Instruct: ChatML, a default system prompt, one wrapped pad token per image or
# video (the processor expands the pad). Byte-identical to the vendor text (a test checks it against
# /work/shared/tokenizers/qwen2-vl-TEMPLATE-ONLY when that folder exists).
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)

# Qwen3-VL Instruct, reduced to its message layout (no tools, no thinking): ChatML with no default
# system prompt; each image / video is one wrapped pad token.
QWEN3_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2-Audio-7B-Instruct: ChatML, default system prompt, "Audio N: " before each wrapped audio token.
QWEN2_AUDIO_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content or content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}Audio {{ audio_count.value }}: "
    "<|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5-Omni: ChatML with the Omni default system prompt; image / video wrapped in vision_bos/eos,
# audio in audio_bos/eos.
QWEN2_5_OMNI_SYSTEM = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory "
    "and visual inputs, as well as generating text and speech."
)
QWEN2_5_OMNI_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    + QWEN2_5_OMNI_SYSTEM + "<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-Omni Instruct's message layout (no tools, no thinking): ChatML with no default system prompt; image / video
# wrapped in vision_start/end, audio in audio_start/end, with Qwen3's pad tokens. (Written from that layout, as
# LLaMA-Factory's qwen3_omni plugin writes it; no vendor file to compare with here.)
QWEN3_OMNI_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'audio' or 'audio' in content %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# GLM-4.1V: `[gMASK]<sop>` prefix, role tags with no end tag, images / videos wrapped in begin/end tags.
# (Reconstructed from the GLM-4.1V layout, without thinking metadata; no vendor file to compare with here.)
GLM4V_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|begin_of_video|><|video|><|end_of_video|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class VlmFamily:
    """One multimodal family: how to make its tokenizer, processor and config, and what it is for.

    `tokens`: special tokens added to the demo tokenizer (a plain list); `named_tokens`: tokens the
    processor reads as tokenizer attributes (`tokenizer.image_token`, Qwen2.5-Omni does), name -> text.
    `processor(tokenizer)` returns the processor around that tokenizer (chat template included);
    `config(tokenizer)` the model config, with token ids and vocab size read from the tokenizer.
    `template` is LLaMA-Factory's template name; `media` what the model reads ("image", "video", "audio").
    """

    model_class: str
    config: Callable[[PreTrainedTokenizerBase], PretrainedConfig]
    processor: Callable[[PreTrainedTokenizerBase], ProcessorMixin]
    template: str
    media: tuple[str, ...]
    tokens: tuple[str, ...] = ()
    named_tokens: tuple[tuple[str, str], ...] = ()

    def recipe(self) -> str:
        """The family's fields and the source of the modules defining its builders: part of the cache key,
        so editing a recipe (or a constant it reads) rebuilds instead of reusing a stale folder."""
        parts = [self.model_class, self.template, repr(self.media), repr(self.tokens), repr(self.named_tokens),
                 inspect.getsource(sys.modules[__name__])]  # shared helpers (TEXT, tiny_tokenizer, _build)
        for fn in (self.config, self.processor):
            try:
                parts.append(inspect.getsource(sys.modules[fn.__module__]))
            except (OSError, TypeError, KeyError):
                parts.append(getattr(fn, "__qualname__", repr(fn)))
        return "\n".join(parts)


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/lathe/tiny-vlms` (or `~/.cache/lathe/tiny-vlms`)."""
    return default_cache_root() / "tiny-vlms"


def tiny_tokenizer(
    extra_special_tokens: list[str] | tuple[str, ...] = (),
    named: dict[str, str] | None = None,
    cache_dir: str | Path | None = None,
) -> PreTrainedTokenizerBase:
    """lathe's demo tokenizer (byte-level BPE, ChatML, eos = pad = `<|endoftext|>`, no bos) plus special tokens.

    `named` tokens also become attributes (`named={"image_token": "<|IMAGE|>"}` gives
    `tok.image_token` and `tok.image_token_id`) and are saved so they survive a reload.
    """
    from transformers import AutoTokenizer

    from lathe.testing.demo_tokenizer import build_demo_tokenizer

    folder = build_demo_tokenizer(cache_dir=Path(cache_dir) / "tokenizers" if cache_dir else None)
    tok = AutoTokenizer.from_pretrained(folder, **(named or {}))
    if tok.eos_token is None or tok.pad_token is None:
        raise LatheError(f"The demo tokenizer in {folder} has no eos or pad token; rebuild it (delete the folder).")
    wanted = [t for t in [*extra_special_tokens, *(named or {}).values()] if t not in tok.extra_special_tokens]
    tok.add_special_tokens({"extra_special_tokens": list(dict.fromkeys(wanted))}, replace_extra_special_tokens=False)
    return tok


# --- config helpers --------------------------------------------------------------------------------


def _ids(tok: PreTrainedTokenizerBase, **names: str) -> dict[str, int]:
    """Token ids by config field name, failing loudly on a token the tokenizer lacks."""
    out = {}
    for field_name, token in names.items():
        token_id = tok.convert_tokens_to_ids(token)
        if token_id is None or token_id == tok.unk_token_id or tok.convert_ids_to_tokens(token_id) != token:
            raise LatheError(f"Token {token!r} (for config field {field_name}) is not in the tiny tokenizer.")
        out[field_name] = token_id
    return out


def _text(tok: PreTrainedTokenizerBase, **extra: Any) -> dict[str, Any]:
    return {**TEXT, "vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, **extra}


# --- families --------------------------------------------------------------------------------------

QWEN_VL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def _qwen_vl_ids(tok: PreTrainedTokenizerBase) -> dict[str, int]:
    return _ids(tok, image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
                vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>")


def _qwen2_vision_processors(min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS, patch: int = 14):
    """The real Qwen2-VL image and video processors with small resize bounds (torchvision backend)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    image = Qwen2VLImageProcessor(size=size, patch_size=patch, temporal_patch_size=2, merge_size=2)
    video = Qwen2VLVideoProcessor(size=size, patch_size=patch, temporal_patch_size=2, merge_size=2)
    return image, video


def _qwen2_vl_config(tok):
    from transformers import Qwen2VLConfig

    vision = {"depth": 1, "embed_dim": 32, "hidden_size": TEXT["hidden_size"], "mlp_ratio": 2, "num_heads": 2,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    return Qwen2VLConfig(text_config=_text(tok, rope_parameters=dict(QWEN2_MROPE)), vision_config=vision,
                         **_qwen_vl_ids(tok))


def _qwen2_vl_processor(tok):
    from transformers import Qwen2VLProcessor

    image, video = _qwen2_vision_processors()
    return Qwen2VLProcessor(image_processor=image, tokenizer=tok, video_processor=video, chat_template=QWEN2_VL_TEMPLATE)


def _qwen2_5_vision() -> dict[str, Any]:
    # Window attention in blocks except `fullatt_block_indexes` (real: 4 of 32); window 112 px = 4x4 merged tokens.
    return {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": TEXT["hidden_size"],
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
            "fullatt_block_indexes": [1], "tokens_per_second": 2}


def _qwen2_5_vl_config(tok):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(text_config=_text(tok, rope_parameters=dict(QWEN2_MROPE)), vision_config=_qwen2_5_vision(),
                            **_qwen_vl_ids(tok))


def _qwen2_5_vl_processor(tok):
    from transformers import Qwen2_5_VLProcessor

    image, video = _qwen2_vision_processors()
    return Qwen2_5_VLProcessor(image_processor=image, tokenizer=tok, video_processor=video,
                               chat_template=QWEN2_VL_TEMPLATE)


def _qwen3_vision() -> dict[str, Any]:
    """Qwen3-VL's vision tower, tiny: patch 16, deepstack from one of its 2 blocks into the text layers."""
    return {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
            "out_hidden_size": TEXT["hidden_size"], "patch_size": 16, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "num_position_embeddings": 2304, "deepstack_visual_indexes": [1]}


def _qwen3_vl_config(tok):
    from transformers import Qwen3VLConfig

    # Real: head_dim 128, mrope_section [24, 20, 20], interleaved; deepstack from 3 vision blocks into text layers.
    rope = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
    text = _text(tok, head_dim=16, rope_parameters=rope)
    text.pop("bos_token_id")
    return Qwen3VLConfig(text_config=text, vision_config=_qwen3_vision(), **_qwen_vl_ids(tok))


def _qwen3_vl_processor(tok):
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    # Real Qwen3-VL: patch 16, mean/std 0.5, images 65536..16777216 px, videos 4096..25165824 px at 2 fps.
    size = {"shortest_edge": QWEN3_MIN_PIXELS, "longest_edge": QWEN3_MAX_PIXELS}
    kw = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    image = Qwen2VLImageProcessor(size=size, **kw)
    video = Qwen3VLVideoProcessor(size=size, **kw)
    return Qwen3VLProcessor(image_processor=image, tokenizer=tok, video_processor=video,
                            chat_template=QWEN3_VL_TEMPLATE)


AUDIO_TOKENS = ("<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>")


def _whisper_features():
    """Whisper log-mel features as Qwen2-Audio / Qwen2.5-Omni ship them: 128 mels, 16 kHz, 30 s chunks."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400)


def _tiny_audio_encoder() -> dict[str, Any]:
    # 128 mels and 1500 positions (30 s) are kept: the processor always pads to 30 s.
    return {"num_mel_bins": 128, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
            "d_model": 32, "max_source_positions": 1500}


def _qwen2_audio_config(tok):
    from transformers import Qwen2AudioConfig

    text = {"model_type": "qwen2", **_text(tok)}
    return Qwen2AudioConfig(audio_config={"model_type": "qwen2_audio_encoder", **_tiny_audio_encoder()},
                            text_config=text, **_ids(tok, audio_token_index="<|AUDIO|>"))


def _qwen2_audio_processor(tok):
    from transformers import Qwen2AudioProcessor

    return Qwen2AudioProcessor(feature_extractor=_whisper_features(), tokenizer=tok,
                               chat_template=QWEN2_AUDIO_TEMPLATE)


OMNI_NAMED = (
    ("image_token", "<|IMAGE|>"), ("video_token", "<|VIDEO|>"), ("audio_token", "<|AUDIO|>"),
    ("vision_bos_token", "<|vision_bos|>"), ("vision_eos_token", "<|vision_eos|>"),
    ("audio_bos_token", "<|audio_bos|>"), ("audio_eos_token", "<|audio_eos|>"),
)


def _qwen2_5_omni_config(tok):
    from transformers import Qwen2_5OmniThinkerConfig

    audio = {**_tiny_audio_encoder(), "n_window": 100, "output_dim": TEXT["hidden_size"]}
    vision = {k: v for k, v in _qwen2_5_vision().items() if k != "tokens_per_second"}
    ids = _ids(tok, audio_token_index="<|AUDIO|>", image_token_index="<|IMAGE|>", video_token_index="<|VIDEO|>",
               audio_start_token_id="<|audio_bos|>", audio_end_token_id="<|audio_eos|>",
               vision_start_token_id="<|vision_bos|>", vision_end_token_id="<|vision_eos|>")
    # vision_start/end are not declared fields but real configs carry them and get_rope_index reads the start.
    # `user_token_id` marks where a user turn starts (used by the talker); here the "user" text token.
    user = tok.convert_tokens_to_ids(tok.tokenize("user"))
    return Qwen2_5OmniThinkerConfig(audio_config=audio, vision_config=vision,
                                    text_config=_text(tok, rope_parameters=dict(QWEN2_MROPE)),
                                    user_token_id=user[0], **ids)


def _qwen2_5_omni_processor(tok):
    from transformers import Qwen2_5OmniProcessor

    image, video = _qwen2_vision_processors()
    return Qwen2_5OmniProcessor(image_processor=image, video_processor=video, feature_extractor=_whisper_features(),
                                tokenizer=tok, chat_template=QWEN2_5_OMNI_TEMPLATE)


# Qwen3-Omni's tokenizer names its media tokens as Qwen2.5-Omni's does, with Qwen3's spellings.
QWEN3_OMNI_NAMED = (
    ("image_token", "<|image_pad|>"), ("video_token", "<|video_pad|>"), ("audio_token", "<|audio_pad|>"),
    ("vision_bos_token", "<|vision_start|>"), ("vision_eos_token", "<|vision_end|>"),
    ("audio_bos_token", "<|audio_start|>"), ("audio_eos_token", "<|audio_end|>"),
)


def _qwen3_omni_config(tok):
    from transformers import Qwen3OmniMoeThinkerConfig

    # A MoE text model of 4 experts (2 per token), head_dim 16 with interleaved mrope sections as the tiny Qwen3-VL's.
    # The audio encoder keeps its 128 mels and windows of 100 frames (n_window 50: the processor counts audio
    # tokens with it); its 3 stride-2 convolutions are 8 channels wide.
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
    text = _text(tok, head_dim=16, rope_parameters=rope, num_experts=4, num_experts_per_tok=2,
                 moe_intermediate_size=32)
    audio = {**_tiny_audio_encoder(), "n_window": 50, "output_dim": TEXT["hidden_size"], "downsample_hidden_size": 8}
    ids = _ids(tok, audio_token_id="<|audio_pad|>", image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
               audio_start_token_id="<|audio_start|>", vision_start_token_id="<|vision_start|>")
    # position_id_per_seconds: 13, the rate Qwen3OmniMoeProcessor lays a heard video out by (the config class says
    # 25; the two must agree for the model's positions to follow the layout). vision_start_token_id is no declared
    # field, but get_rope_index reads it.
    user = tok.convert_tokens_to_ids(tok.tokenize("user"))
    return Qwen3OmniMoeThinkerConfig(audio_config=audio, vision_config=_qwen3_vision(), text_config=text,
                                     position_id_per_seconds=13, user_token_id=user[0], **ids)


def _qwen3_omni_processor(tok):
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor, Qwen3OmniMoeProcessor

    # transformers maps qwen3_omni_moe to Qwen2-VL's image and video processors and Whisper features; patch 16 as
    # its vision encoder's default, the tiny Qwen3-VL's pixel bounds.
    size = {"shortest_edge": QWEN3_MIN_PIXELS, "longest_edge": QWEN3_MAX_PIXELS}
    kw = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    return Qwen3OmniMoeProcessor(image_processor=Qwen2VLImageProcessor(size=size, **kw),
                                 video_processor=Qwen2VLVideoProcessor(size=size, **kw),
                                 feature_extractor=_whisper_features(), tokenizer=tok,
                                 chat_template=QWEN3_OMNI_TEMPLATE)


GLM4V_TOKENS = (
    "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|image|>", "<|video|>",
)


def _glm4v_config(tok):
    from transformers import Glm4vConfig

    # Real GLM-4.1V: head_dim 128 with partial_rotary_factor 0.5 and mrope_section [8, 12, 12] (sum 32 = 64 / 2).
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "partial_rotary_factor": 0.5}
    text = _text(tok, rope_parameters=rope)
    text.pop("tie_word_embeddings")
    text.pop("bos_token_id")
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
              "out_hidden_size": TEXT["hidden_size"], "patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2, "image_size": 336}
    ids = _ids(tok, image_token_id="<|image|>", video_token_id="<|video|>", image_start_token_id="<|begin_of_image|>",
               image_end_token_id="<|end_of_image|>", video_start_token_id="<|begin_of_video|>",
               video_end_token_id="<|end_of_video|>")
    return Glm4vConfig(text_config=text, vision_config=vision, **ids)


def _glm4v_processor(tok):
    from transformers import Glm4vImageProcessor, Glm4vProcessor, Glm4vVideoProcessor

    # Real GLM-4.1V: patch 14, merge 2, images 12544..9633792 px (CLIP mean/std, the processors' defaults).
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    kw = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}
    return Glm4vProcessor(image_processor=Glm4vImageProcessor(size=size, **kw), tokenizer=tok,
                          video_processor=Glm4vVideoProcessor(size=size, **kw), chat_template=GLM4V_TEMPLATE)


FAMILIES: dict[str, VlmFamily] = {
    "qwen2_vl": VlmFamily("Qwen2VLForConditionalGeneration", _qwen2_vl_config, _qwen2_vl_processor,
                          "qwen2_vl", ("image", "video"), QWEN_VL_TOKENS),
    "qwen2_5_vl": VlmFamily("Qwen2_5_VLForConditionalGeneration", _qwen2_5_vl_config, _qwen2_5_vl_processor,
                            "qwen2_vl", ("image", "video"), QWEN_VL_TOKENS),
    "qwen3_vl": VlmFamily("Qwen3VLForConditionalGeneration", _qwen3_vl_config, _qwen3_vl_processor,
                          "qwen3_vl", ("image", "video"), QWEN_VL_TOKENS),
    "qwen2_audio": VlmFamily("Qwen2AudioForConditionalGeneration", _qwen2_audio_config, _qwen2_audio_processor,
                             "qwen2_audio", ("audio",), AUDIO_TOKENS),
    "qwen2_5_omni": VlmFamily("Qwen2_5OmniThinkerForConditionalGeneration", _qwen2_5_omni_config,
                              _qwen2_5_omni_processor, "qwen2_omni", ("image", "video", "audio"),
                              named_tokens=OMNI_NAMED),
    "qwen3_omni": VlmFamily("Qwen3OmniMoeThinkerForConditionalGeneration", _qwen3_omni_config,
                            _qwen3_omni_processor, "qwen3_omni_nothink", ("image", "video", "audio"),
                            named_tokens=QWEN3_OMNI_NAMED),
    "glm4v": VlmFamily("Glm4vForConditionalGeneration", _glm4v_config, _glm4v_processor,
                       "glm4v", ("image", "video"), GLM4V_TOKENS),
}


# --- build ---------------------------------------------------------------------------------------


def family(name: str) -> VlmFamily:
    """The registered family `name` (a LatheError naming the close ones otherwise)."""
    return lookup(FAMILIES, name, "tiny multimodal family")


def build_tiny_vlm(family_name: str, cache_dir: str | Path | None = None) -> Path:
    """Build (or reuse) the tiny model of `family_name` and return its folder.

    The folder holds the model (safetensors, float32), the tokenizer and the processor (with its chat
    template); it loads with `AutoProcessor.from_pretrained` and `transformers.<model_class>.from_pretrained`.
    `cache_dir` defaults to `$XDG_CACHE_HOME/lathe/tiny-vlms`.
    """
    spec = family(family_name)
    from lathe.testing.demo_tokenizer import build_demo_tokenizer

    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
    tok_dir = build_demo_tokenizer(cache_dir=cache_dir / "tokenizers" if cache_dir else None)
    tok_files = [p for p in tok_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
    key = short_hash({"family": family_name, "recipe": spec.recipe(), "version": RECIPE_VERSION, "seed": SEED,
                      "tokenizer": hash_files(tok_files), "versions": _versions()})
    target = (cache_dir or default_cache_dir()) / f"{family_name}-{key}"
    info = {"family": family_name, "model_class": spec.model_class, "template": spec.template,
            "media": list(spec.media), "tokenizer": "lathe demo tokenizer + family special tokens"}
    return build_once(target, lambda folder: _build(spec, folder, cache_dir), info)


def _versions() -> dict[str, str]:
    """Library versions that decide the initial weights and the processor files."""
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _build(spec: VlmFamily, folder: Path, cache_dir: Path | None) -> None:
    import torch
    import transformers
    from transformers import AutoProcessor

    tok = tiny_tokenizer(spec.tokens, dict(spec.named_tokens), cache_dir=cache_dir)
    processor = spec.processor(tok)
    config = spec.config(tok)
    model_cls = getattr(transformers, spec.model_class)
    # fork_rng: seeding here must not change the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = model_cls(config).to(torch.float32)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    # The tokenizer must reload next to this config exactly as built (same ids for the family's tokens).
    reloaded = AutoProcessor.from_pretrained(folder)
    probe = "<|im_start|>user\nHello, world! 你好<|im_end|>" + "".join(spec.tokens + tuple(t for _, t in spec.named_tokens))
    if reloaded.tokenizer(probe)["input_ids"] != tok(probe)["input_ids"]:
        raise LatheError(
            f"The tiny {spec.model_class} tokenizer encodes differently after reloading from {folder} "
            f"({type(reloaded.tokenizer).__name__}); the family's recipe in lathe.testing.tiny_vlm needs fixing."
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tiny random-weight multimodal model and print its folder.")
    parser.add_argument("--family", required=True, choices=sorted(FAMILIES))
    parser.add_argument("--out", type=Path, help="copy the model folder here (default: print the cache folder)")
    parser.add_argument("--cache-dir", type=Path, help="default: $XDG_CACHE_HOME/lathe/tiny-vlms")
    args = parser.parse_args(argv)
    try:
        path = build_tiny_vlm(args.family, cache_dir=args.cache_dir)
    except LatheError as err:
        parser.exit(2, f"error: {err}\n")
    from lathe.testing.tiny import print_folder

    print_folder(path, args.out)


# More families (written separately) register into FAMILIES; absent in a checkout without them.
try:
    import lathe.testing.tiny_vlm_more  # noqa: F401
except ModuleNotFoundError as err:
    if err.name != "lathe.testing.tiny_vlm_more":
        raise


if __name__ == "__main__":  # run as a script: use the imported module, which the other families register into
    from lathe.testing import tiny_vlm

    tiny_vlm.main()
