"""Tiny multimodal models: each family builds offline, reloads like a hub checkpoint, and trains one step.

The checks a multimodal plugin relies on: the processor expands one placeholder into the number of
tokens the model expects, the model reads the media (its encoder gets a gradient) and the loss is finite.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import transformers
from PIL import Image
from transformers import AutoProcessor

from lathe.errors import LatheError
from lathe.testing.tiny_vlm import FAMILIES, QWEN2_VL_TEMPLATE, build_tiny_vlm, tiny_tokenizer
from tests.conftest import shared_path

MINE = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen2_audio", "qwen2_5_omni", "qwen3_omni", "glm4v"]
# Where each medium's encoder lives, by parameter name (checked for a gradient after backward).
ENCODER = {"image": "visual", "video": "visual", "audio": "audio_tower"}


@pytest.fixture(scope="session")
def vlm_folders() -> dict[str, Path]:
    """Every family's folder, built once (and reused across runs from the on-disk cache)."""
    return {name: build_tiny_vlm(name) for name in FAMILIES}


def _video():
    """8 frames of 64x64 at 4 fps, as decoded frames plus metadata (no video codec needed)."""
    from transformers.video_utils import VideoMetadata

    frames = np.stack([np.full((64, 64, 3), 30 * i, dtype=np.uint8) for i in range(8)])
    meta = VideoMetadata(total_num_frames=8, fps=4.0, width=64, height=64, duration=2.0,
                         frames_indices=np.arange(8))
    return frames, meta


def _messages(medium: str):
    if medium == "image":
        item = {"type": "image", "image": Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3),
                                                                                        dtype=np.uint8))}
    elif medium == "video":
        item = {"type": "video", "video": _video()[0]}
    else:
        item = {"type": "audio", "audio": np.sin(np.arange(16000, dtype=np.float32) / 10)}  # 1 s at 16 kHz
    return [
        {"role": "user", "content": [item, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A test."}]},
    ]


def _encode(processor, medium: str):
    extra = {"video_metadata": [_video()[1]]} if medium == "video" else {}
    return processor.apply_chat_template(_messages(medium), tokenize=True, return_dict=True, return_tensors="pt",
                                         processor_kwargs=extra)


def test_registry_holds_my_families_with_valid_fields():
    for name in MINE:
        spec = FAMILIES[name]
        assert hasattr(transformers, spec.model_class), spec.model_class
        assert spec.media and set(spec.media) <= {"image", "video", "audio"}
        assert spec.template


def test_unknown_family_is_a_clear_error():
    with pytest.raises(LatheError, match="qwen2_vl"):
        build_tiny_vlm("qwen2vl")


def test_same_family_gives_the_same_folder(vlm_folders):
    assert build_tiny_vlm("qwen2_vl") == vlm_folders["qwen2_vl"]
    assert vlm_folders["qwen2_vl"] != vlm_folders["qwen2_5_vl"]


def test_tiny_tokenizer_adds_special_and_named_tokens():
    tok = tiny_tokenizer(["<|image_pad|>"], named={"audio_token": "<|AUDIO|>"})
    assert tok.eos_token and tok.pad_token
    ids = tok("a<|image_pad|>b<|AUDIO|>")["input_ids"]
    assert tok.convert_tokens_to_ids("<|image_pad|>") in ids and tok.audio_token_id in ids
    assert tok.audio_token == "<|AUDIO|>"


def test_qwen2_vl_template_matches_the_vendor_text():
    vendor = shared_path("tokenizers", "qwen2-vl-TEMPLATE-ONLY", "chat_template.jinja").read_text(encoding="utf-8")
    assert QWEN2_VL_TEMPLATE == vendor


@pytest.mark.parametrize("name", MINE)
def test_family_loads_expands_media_and_trains_one_step(name, vlm_folders):
    spec = FAMILIES[name]
    processor = AutoProcessor.from_pretrained(vlm_folders[name])
    model = getattr(transformers, spec.model_class).from_pretrained(vlm_folders[name])
    assert processor.chat_template, f"{name}: the processor has no chat template"
    for medium in spec.media:
        batch = _encode(processor, medium)
        grid = batch.get("image_grid_thw" if medium == "image" else "video_grid_thw")
        if grid is not None:  # every vision family: prod(t, h, w) / merge^2 placeholder tokens per item
            merge = (processor.image_processor if medium == "image" else processor.video_processor).merge_size
            token_id = model.config.image_token_id if medium == "image" or name == "glm4v" else model.config.video_token_id
            assert int((batch["input_ids"] == token_id).sum()) == int(grid.prod()) // merge**2
        model.zero_grad()
        out = model(**batch, labels=batch["input_ids"])
        assert math.isfinite(out.loss.item()), f"{name}/{medium}: loss {out.loss}"
        out.loss.backward()
        grads = [p.grad for n, p in model.named_parameters() if ENCODER[medium] in n and p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"{name}/{medium}: the encoder got no gradient"
