"""Multimodal data: placeholders and media into the family processor's own tokens and tensors, rows that cannot
be used counted with their reason, and training on images with the loss falling."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lathe.data.dataset_info import DatasetAttr
from lathe.data.formats import convert_rows
from lathe.data.media.encode import MediaContext, encode_with_media, expand_messages
from lathe.data.media.load import MediaOptions
from lathe.data.media.plugins import MEDIA_PLUGINS
from lathe.data.processors.supervised import encode_supervised_batch
from lathe.data.sample import IGNORE_INDEX
from lathe.data.templates.named import get_template
from lathe.errors import LatheError

from tests.conftest import shared_path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
SHAPES = DATA / "lathe_shapes" / "images"


@pytest.fixture(scope="module", autouse=True)
def offline():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_vlm(family: str) -> Path:
    from lathe.testing.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(family)


def context(family: str, template_name: str):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm(family))
    template = get_template(template_name)
    template.fix_tokenizer(processor.tokenizer)
    plugin = MEDIA_PLUGINS[template.media]
    return MediaContext(plugin, processor, MediaOptions(), plugin.call_kwargs(processor, MediaOptions())), template


def reference(ctx: MediaContext, messages: list[dict], images: list) -> dict:
    """The family processor's own tokens and tensors for the conversation (its chat template, tokenize=True)."""
    parts = []
    for message in messages:
        content, text = [], message["content"]
        pieces = text.split("<image>")
        for k, piece in enumerate(pieces):
            if piece:
                content.append({"type": "text", "text": piece})
            if k < len(pieces) - 1:
                content.append({"type": "image", "image": images.pop(0)})
        parts.append({"role": message["role"], "content": content})
    return ctx.processor.apply_chat_template(parts, tokenize=True, return_dict=True, return_tensors="pt")


FAMILIES = [("qwen2_vl", "qwen2_vl"), ("qwen2_5_vl", "qwen2_vl"), ("qwen3_vl", "qwen3_vl_nothink")]


@pytest.mark.parametrize("family,template_name", FAMILIES)
@pytest.mark.parametrize("count", [1, 2])
def test_ids_and_pixels_equal_the_processor_own(family, template_name, count):
    ctx, template = context(family, template_name)
    paths = [str(SHAPES / "red_circle.png"), str(SHAPES / "blue_square.png")][:count]
    messages = [{"role": "user", "content": "<image>" * count + "What is shown?"},
                {"role": "assistant", "content": "Shapes."}]
    expanded = expand_messages(messages, {"image": paths, "video": [], "audio": []}, ctx)
    ids = [i for prompt, answer in template.encode(ctx.processor.tokenizer, expanded) for i in prompt + answer]
    images = [ctx.load("image", p) for p in paths]
    ref = reference(ctx, messages, list(images))
    theirs = ref["input_ids"][0].tolist()
    # lathe's training text ends with the last answer's end token; the chat template adds a newline after it
    assert ids == theirs[: len(ids)] and ctx.processor.tokenizer.decode(theirs[len(ids):]) == "\n"
    ours = ctx.plugin.features(ctx.processor, {"image": images}, ctx.kwargs)
    assert set(ours) == {"pixel_values", "image_grid_thw"}
    for key, value in ours.items():
        assert torch.equal(value, ref[key]), key


def write_video(path: Path, frames: int = 20, fps: int = 10) -> Path:
    """A small fading clip written with PyAV (64x48)."""
    av = pytest.importorskip("av", reason="PyAV decodes video")
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


@pytest.mark.parametrize("family,template_name", FAMILIES)
def test_video_ids_and_tensors_equal_the_processor_own(tmp_path, family, template_name):
    """The frames lathe samples (video_fps, video_maxlen) go to the processor with their timestamps."""
    pytest.importorskip("torchvision", reason="transformers' video processors need torchvision")
    from transformers.video_utils import VideoMetadata

    ctx, template = context(family, template_name)
    path = str(write_video(tmp_path / "clip.mp4"))
    messages = [{"role": "user", "content": "<video>What happens?"}, {"role": "assistant", "content": "It fades."}]
    expanded = expand_messages(messages, {"image": [], "video": [path], "audio": []}, ctx)
    ids = [i for prompt, answer in template.encode(ctx.processor.tokenizer, expanded) for i in prompt + answer]
    video = ctx.load("video", path)
    assert len(video.frames) == 4  # 2 s at video_fps 2
    meta = VideoMetadata(total_num_frames=len(video.frames), fps=video.fps, duration=video.duration,
                         frames_indices=list(range(len(video.frames))))
    chat = [{"role": "user", "content": [{"type": "video", "video": video.frames},
                                         {"type": "text", "text": "What happens?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "It fades."}]}]
    ref = ctx.processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt",
                                            processor_kwargs={"video_metadata": [meta], **ctx.kwargs})
    theirs = ref["input_ids"][0].tolist()
    assert ids == theirs[: len(ids)] and ctx.processor.tokenizer.decode(theirs[len(ids):]) == "\n"
    for key, value in ctx.plugin.features(ctx.processor, {"video": [video]}, ctx.kwargs).items():
        assert torch.equal(value, ref[key]), key


def write_wav(path: Path, seconds: float = 1.5, rate: int = 8000) -> Path:
    """A mono 440 Hz tone, written with the standard library (resampled to 16 kHz when loaded)."""
    import wave

    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * 440 * t) * 20000).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


@pytest.mark.parametrize("family,template_name", [("qwen2_audio", "qwen2_audio"), ("qwen2_5_omni", "qwen2_omni")])
def test_audio_ids_and_features_equal_the_processor_own(tmp_path, family, template_name):
    """LLaMA-Factory writes audio as <|audio_bos|><|AUDIO|><|audio_eos|> (no "Audio 1:" line, which the vendor's
    chat template adds), so the reference is the processor called on lathe's text with that placeholder."""
    pytest.importorskip("av", reason="PyAV decodes audio")
    ctx, template = context(family, template_name)
    path = str(write_wav(tmp_path / "tone.wav"))
    messages = [{"role": "user", "content": "<audio>What is it?"}, {"role": "assistant", "content": "A tone."}]
    expanded = expand_messages(messages, {"image": [], "video": [], "audio": [path]}, ctx)
    ids = [i for prompt, answer in template.encode(ctx.processor.tokenizer, expanded) for i in prompt + answer]
    placeholder = [{**messages[0], "content": ctx.plugin.prompt_text(ctx.processor, "audio") + "What is it?"},
                   messages[1]]
    audio = ctx.load("audio", path)
    assert audio.shape == (24000,)  # 1.5 s at 16 kHz
    ref = ctx.processor(text=[template.render(ctx.processor.tokenizer, placeholder).text], audio=[audio],
                        return_tensors="pt", **ctx.kwargs)
    assert ids == ref["input_ids"][0].tolist()
    ours = ctx.plugin.features(ctx.processor, {"audio": [audio]}, ctx.kwargs)
    assert set(ours) == {"input_features", "feature_attention_mask"}
    for key, value in ours.items():
        assert torch.equal(value, ref[key]), key


def shapes_attr(**columns) -> DatasetAttr:
    return DatasetAttr.from_entry("shapes", {
        "file_name": "x.json", "formatting": "sharegpt", "media_dir": str(DATA / "lathe_shapes"),
        "columns": {"messages": "messages", "images": "images", **columns},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    })


def test_conversion_follows_llama_factory_placeholder_rules_and_counts_bad_rows(tmp_path):
    attr = shapes_attr()
    attr.media_dir = str(DATA / "lathe_shapes")
    turn = [{"role": "user", "content": "Describe it."}, {"role": "assistant", "content": "A shape."}]
    rows = [
        {"messages": turn, "images": ["images/red_circle.png"]},  # no placeholder: added in front
        {"messages": [{**turn[0], "content": "<image><image>Two?"}, turn[1]], "images": ["images/red_circle.png"]},
        {"messages": turn, "images": ["images/no_such.png"]},
        {"messages": [turn[0], {**turn[1], "content": "<image>"}], "images": ["images/red_circle.png"]},
    ]
    result = convert_rows(attr, rows)
    assert len(result.samples) == 1
    assert result.samples[0]["messages"][0]["content"] == "<image>Describe it."
    assert result.samples[0]["images"] == [str(SHAPES / "red_circle.png")]
    assert result.skip_counts == {"placeholders and media differ": 1, "missing media file": 1,
                                  "media placeholder in an answer": 1}
    assert "rows 2" not in result.report() and "row 2" in result.report() and "no_such.png" in result.report()


def test_an_entry_without_media_columns_keeps_placeholders_as_text():
    """Documentation or code that mentions `<image>` is text where the entry declares no images (LLaMA-Factory's
    pre-training keeps it too); it used to skip the row as "placeholders and media differ"."""
    attr = DatasetAttr.from_entry("docs", {"file_name": "x.json", "columns": {"prompt": "instruction",
                                                                              "response": "output"}})
    result = convert_rows(attr, [{"instruction": "What does <image> do in a prompt?", "output": "It marks a picture."}])
    assert not result.skip_counts and len(result.samples) == 1
    assert result.samples[0]["messages"][0]["content"] == "What does <image> do in a prompt?"
    assert "images" not in result.samples[0]


def test_unreadable_media_drop_the_row_with_reason_and_media_tokens_are_never_learned(tmp_path):
    ctx, template = context("qwen2_vl", "qwen2_vl")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    from lathe.config.options import DataArguments

    data_args = DataArguments(cutoff_len=512, train_on_prompt=True)  # even the prompt is learned, media never
    batch = {
        "messages": [[{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "Hello."}]] * 2,
        "system": ["", ""], "tools": ["", ""],
        "images": [[str(SHAPES / "green_square.png")], [str(broken)]],
    }
    out = encode_with_media(batch, inner=encode_supervised_batch, media=ctx,
                            inner_kwargs={"template": template, "tokenizer": ctx.processor.tokenizer,
                                          "data_args": data_args})
    assert out["_drop"][0] == "" and out["_drop"][1].startswith("unreadable image") and "broken.png" in out["_drop"][1]
    ids, labels = np.asarray(out["input_ids"][0]), np.asarray(out["labels"][0])
    media_ids = ctx.processor.tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|vision_start|>", "<|vision_end|>"])
    media = np.isin(ids, media_ids)
    assert media.sum() > 2 and (labels[media] == IGNORE_INDEX).all() and (labels[~media] != IGNORE_INDEX).all()
    assert out["images"] == batch["images"]


def test_a_family_that_takes_no_video_refuses_a_video_row():
    ctx, _ = context("qwen2_vl", "qwen2_vl")
    from dataclasses import replace

    ctx = replace(ctx, plugin=replace(ctx.plugin, prompt={"image": ctx.plugin.prompt["image"]}))
    from lathe.data.media.load import MediaError

    with pytest.raises(MediaError, match="video not taken"):
        expand_messages([{"role": "user", "content": "<video>?"}], {"image": [], "video": ["v.mp4"], "audio": []}, ctx)


def write_config(tmp_path: Path, model: Path, **overrides) -> Path:
    config = {
        "model_name_or_path": str(model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_rank": 8, "dataset": "lathe_shapes", "dataset_dir": str(DATA), "template": "qwen2_vl",
        "cutoff_len": 512, "output_dir": str(tmp_path / "out"), "overwrite_output_dir": True,
        "per_device_train_batch_size": 4, "learning_rate": 2e-2, "max_steps": 4, "logging_steps": 1,
        "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "lr_scheduler_type": "constant",
    }
    config.update(overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def losses(output_dir: Path) -> list[float]:
    lines = (output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]


def test_lora_sft_on_images_trains_with_loss_falling_and_saves_the_processor(tmp_path):
    from transformers import AutoProcessor

    from lathe.config import load_config
    from lathe.train import run_stage

    cfg = load_config(write_config(tmp_path, tiny_vlm("qwen2_vl")))
    result = run_stage(cfg)
    out = Path(cfg.training.output_dir)
    seen = losses(out)
    assert len(seen) == 4 and seen[-1] < seen[0]
    names = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n and "visual" not in n for n in names)  # lora_target: all skips the encoder
    assert (out / "processor_config.json").exists() and type(AutoProcessor.from_pretrained(out)).__name__ == "Qwen2VLProcessor"


def test_full_sft_keeps_the_vision_tower_and_projector_frozen_by_default(tmp_path):
    from lathe.config import load_config
    from lathe.train import run_stage

    cfg = load_config(write_config(tmp_path, tiny_vlm("qwen2_vl"), finetuning_type="full", max_steps=1,
                                   learning_rate=1e-4, freeze_multi_modal_projector=False))
    result = run_stage(cfg)
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert any("visual.merger" in n for n in trainable)  # the projector trains when asked
    assert not any("visual.blocks" in n or "patch_embed" in n for n in trainable)
    assert any("language_model" in n for n in trainable)


def test_packing_is_refused_for_a_family_with_mrope_positions(tmp_path):
    from lathe.config import load_config
    from lathe.train import run_stage

    cfg = load_config(write_config(tmp_path, tiny_vlm("qwen2_vl"), neat_packing=True))
    with pytest.raises(LatheError, match="mrope"):
        run_stage(cfg)


def test_full_sft_with_the_language_model_frozen_trains_the_encoder_only(tmp_path):
    from lathe.config import load_config
    from lathe.train import run_stage

    cfg = load_config(write_config(tmp_path, tiny_vlm("qwen2_vl"), finetuning_type="full", max_steps=1,
                                   freeze_vision_tower=False, freeze_language_model=True))
    trainable = {n for n, p in run_stage(cfg).model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.visual.") and "merger" not in n for n in trainable)


@pytest.mark.parametrize("option", ["image_do_pan_and_scan", "crop_to_patches", "use_audio_in_video"])
def test_options_of_other_families_are_refused_by_name(tmp_path, option):
    from lathe.config import load_config
    from lathe.train import run_stage

    cfg = load_config(write_config(tmp_path, tiny_vlm("qwen2_vl"), **{option: True}))
    with pytest.raises(LatheError, match=f"`{option}: true`"):
        run_stage(cfg)


LF_CASES = [  # (example config, tiny family, its template (None: the config's), dataset, where the data is)
    ("qwen3vl_lora_sft.yaml", "qwen3_vl", None, "mllm_demo,identity,alpaca_en_demo", "shared"),
    ("qwen3vl_lora_sft.yaml", "qwen3_vl", None, "mllm_video_demo", "shared"),  # the config's `video:` comment
    ("qwen3vl_lora_sft.yaml", "qwen2_audio", "qwen2_audio", "mllm_audio_demo", "shared"),
    ("qwen3vl_lora_dpo.yaml", "qwen3_vl", None, "lathe_shapes_dpo", "lathe"),  # its rlhf_v is a hub dataset
]


@pytest.mark.skipif(not shared_path("llamafactory-examples").exists(),
                    reason="needs ../shared (LLaMA-Factory examples)")
@pytest.mark.parametrize("example,family,template_name,dataset,where", LF_CASES,
                         ids=[f"{c[0][:-5]}-{c[3].split(',')[0]}" for c in LF_CASES])
def test_llama_factory_multimodal_examples_train_on_its_demo_data(tmp_path, example, family, template_name, dataset,
                                                                  where):
    """LLaMA-Factory's own qwen3vl_lora_sft.yaml / qwen3vl_lora_dpo.yaml, unchanged but for the model (a tiny
    model of the family), where the data is and the length of the run: its image mix (mllm_demo, identity and
    alpaca_en_demo), its video and audio sets, and image preference pairs, with the loss falling."""
    if dataset == "mllm_video_demo":
        pytest.importorskip("torchvision", reason="transformers' video processors need torchvision")
    from lathe.config import load_config
    from lathe.train import run_stage

    config = yaml.safe_load(shared_path("llamafactory-examples", "train_lora", example).read_text())
    config.update(model_name_or_path=str(tiny_vlm(family)), dataset=dataset,
                  dataset_dir=str(shared_path("data") if where == "shared" else DATA),
                  output_dir=str(tmp_path / "out"), bf16=False, max_samples=8, max_steps=6, logging_steps=1,
                  gradient_accumulation_steps=1, per_device_train_batch_size=4, learning_rate=2e-2,
                  warmup_ratio=0.0, lr_scheduler_type="constant", save_steps=1000, plot_loss=False,
                  preprocessing_num_workers=1, dataloader_num_workers=0)
    if template_name:
        config["template"] = template_name
    path = tmp_path / example
    path.write_text(yaml.safe_dump(config))
    cfg = load_config(path)
    run_stage(cfg)
    seen = losses(Path(cfg.training.output_dir))
    assert seen[-1] < seen[0]


def test_dpo_and_kto_on_image_preferences_train(tmp_path):
    """lathe_shapes_dpo: the image comes with the chosen and with the rejected row; the reference is the
    adapter switched off. KTO (lathe_shapes_kto, its chosen / rejected answers as labelled rows): the KL rows
    pair each prompt and its image with the next sample's answer, their token types made from their own ids."""
    from lathe.config import load_config
    from lathe.train import run_stage

    model = tiny_vlm("qwen2_vl")
    cfg = load_config(write_config(tmp_path, model, stage="dpo", dataset="lathe_shapes_dpo", max_steps=3,
                                   learning_rate=1e-2, per_device_train_batch_size=2))
    run_stage(cfg)
    seen = losses(Path(cfg.training.output_dir))
    assert len(seen) == 3 and all(np.isfinite(seen)) and seen[-1] < seen[0]
    cfg = load_config(write_config(tmp_path, model, stage="kto", dataset="lathe_shapes_kto", max_steps=3,
                                   learning_rate=1e-2, per_device_train_batch_size=4))
    run_stage(cfg)
    seen = losses(Path(cfg.training.output_dir))
    assert len(seen) == 3 and all(np.isfinite(seen))


def test_reward_model_on_image_pairs_trains(tmp_path):
    from lathe.config import load_config
    from lathe.train import run_stage

    cfg = load_config(write_config(tmp_path, tiny_vlm("qwen2_vl"), stage="rm", dataset="lathe_shapes_dpo",
                                   max_steps=2, per_device_train_batch_size=2))
    run_stage(cfg)
    assert all(np.isfinite(losses(Path(cfg.training.output_dir))))
    assert (Path(cfg.training.output_dir) / "processor_config.json").exists()


def test_export_of_a_lora_tuned_vlm_reloads_with_plain_transformers_and_the_same_logits(tmp_path):
    """base + adapter merged; the processor (and its own chat template, which renders image parts) saved
    beside it, so AutoProcessor and AutoModelForImageTextToText load the folder and agree to 1e-4."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from lathe.config import build_config, load_config
    from lathe.export.merge import run_export
    from lathe.train import run_stage

    model = tiny_vlm("qwen2_vl")
    cfg = load_config(write_config(tmp_path, model, max_steps=2))
    result = run_stage(cfg)
    out = tmp_path / "merged"
    run_export(build_config({"model_name_or_path": str(model), "adapter_name_or_path": cfg.training.output_dir,
                             "template": "qwen2_vl", "export_dir": str(out), "export_size": 1}, purpose="infer"))
    processor = AutoProcessor.from_pretrained(out)
    merged = AutoModelForImageTextToText.from_pretrained(out).eval()
    chat = [{"role": "user", "content": [{"type": "image", "image": processor_image()},
                                         {"type": "text", "text": "What shape?"}]}]
    inputs = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt",
                                           add_generation_prompt=True)
    with torch.no_grad():
        expected = result.model.eval()(**inputs).logits
        got = merged(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def processor_image():
    from lathe.data.media.load import load_image

    return load_image(str(SHAPES / "green_triangle.png"), MediaOptions())


def test_perplexity_scores_multimodal_data_with_its_images(tmp_path):
    from lathe.config import build_config
    from lathe.evaluate.perplexity import run_perplexity

    cfg = build_config({"model_name_or_path": str(tiny_vlm("qwen2_vl")), "template": "qwen2_vl", "stage": "sft",
                        "dataset": "lathe_shapes", "dataset_dir": str(DATA), "max_samples": 6, "batch_size": 3},
                       purpose="infer")
    result = run_perplexity(cfg)
    assert result["samples"] == 6 and np.isfinite(result["perplexity"]) and result["tokens"] > 0


def test_plan_counts_the_encoder_and_the_tokens_of_an_image(tmp_path):
    from lathe.config import build_config
    from lathe.efficiency.plan import plan

    cfg = build_config({"model_name_or_path": str(tiny_vlm("qwen2_vl")), "template": "qwen2_vl",
                        "dataset": "lathe_shapes", "output_dir": str(tmp_path), "image_max_pixels": 448 * 448,
                        "freeze_multi_modal_projector": False})
    text = plan(cfg, None)
    # Qwen2-VL: 14-pixel patches merged 2x2, so 448x448 pixels are 16 x 16 = 256 tokens
    assert "vision 46,176 (frozen), projector 24,832 (trains)" in text and "about 256 tokens" in text
    # full fine-tuning trains what the run trains: the whole model but the frozen vision tower
    from lathe.efficiency.plan import estimate, meta_model, planned_shape
    from lathe.model.adapters import apply_method, count_parameters
    from lathe.model.load import load_model, load_tokenizer

    shape = planned_shape(cfg)
    assert shape.frozen == 46_176 and shape.total == sum(p.numel() for p in meta_model(cfg).parameters())
    full = build_config({"model_name_or_path": str(tiny_vlm("qwen2_vl")), "template": "qwen2_vl",
                         "dataset": "lathe_shapes", "output_dir": str(tmp_path), "finetuning_type": "full",
                         "freeze_multi_modal_projector": False})
    trained, _ = count_parameters(apply_method(load_model(full, load_tokenizer(full.model)), full))
    assert estimate(shape, "full", batch=1, seq=8).trainable == trained == shape.total - 46_176


def test_qlora_on_a_vlm_quantizes_the_language_model_only(tmp_path):
    """4-bit QLoRA: the language model's linear layers are quantized and adapted; the frozen vision tower keeps
    its weights as they are (quantizing an encoder that does not train only loses precision)."""
    pytest.importorskip("bitsandbytes")
    from lathe.config import load_config
    from lathe.train import run_stage

    cfg = load_config(write_config(tmp_path, tiny_vlm("qwen2_vl"), quantization_bit=4, max_steps=2))
    model = run_stage(cfg).model
    kinds = {name: type(module).__name__ for name, module in model.named_modules()}
    assert any(k.startswith("Linear4bit") or k == "Linear4bit" for n, k in kinds.items() if "language_model" in n)
    assert not any("4bit" in k for n, k in kinds.items() if ".visual." in n)


def test_data_preview_shows_the_expanded_image_tokens_counted(tmp_path):
    from lathe.config import load_config
    from lathe.data.preview import preview

    text = preview(load_config(write_config(tmp_path, tiny_vlm("qwen2_vl"))), n=1)
    assert "<|vision_start|><|image_pad|>x" in text and "<|vision_end|>What shape is in the picture?" in text


def test_freeze_method_on_a_vlm_trains_the_last_language_layers_only(tmp_path):
    from lathe.config import load_config
    from lathe.train import run_stage

    cfg = load_config(write_config(tmp_path, tiny_vlm("qwen2_vl"), finetuning_type="freeze", freeze_trainable_layers=1,
                                   max_steps=2, learning_rate=1e-3))
    trainable = {n for n, p in run_stage(cfg).model.named_parameters() if p.requires_grad}
    assert trainable and all("language_model.layers.1." in n for n in trainable), sorted(trainable)[:5]


def test_multimodal_rows_tokenize_the_same_in_forked_shards(tmp_path, monkeypatch):
    """Large data (or preprocessing_num_workers above 1) goes through forked workers, shard by shard: each
    worker expands its rows' media with the processor it inherited, to the same ids as in one process."""
    from lathe.config import load_config
    from lathe.data import encode
    from lathe.data.loader import get_dataset, run_template
    from lathe.data.media.encode import media_for_run
    from lathe.model.load import load_tokenizer

    def tokenized(name: str, **extra):
        cfg = load_config(write_config(tmp_path / name, tiny_vlm("qwen2_vl"), overwrite_cache=True, **extra))
        tokenizer = load_tokenizer(cfg.model)
        template = run_template(cfg, tokenizer)
        template.fix_tokenizer(tokenizer)
        data = get_dataset(cfg, tokenizer, template, media_for_run(cfg, tokenizer, template)).train
        return [(list(row["input_ids"]), list(row["images"])) for row in data]

    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    alone = tokenized("one")
    monkeypatch.setattr(encode, "SHARD_ROWS", 10)  # 27 rows: 3 shards over 2 workers
    assert tokenized("two", preprocessing_num_workers=2) == alone and len(alone) == 27


def test_a_sample_whose_image_tokens_cutoff_len_would_cut_is_dropped_with_the_reason(tmp_path):
    """Truncation keeps a prompt's end; an image at its start would lose tokens the model matches against its
    pixels. Such a sample is dropped and counted (with what to change), never trained half-imaged."""
    from lathe.config import load_config
    from lathe.data.loader import get_dataset, run_template
    from lathe.data.media.encode import media_for_run
    from lathe.model.load import load_tokenizer

    cfg = load_config(write_config(tmp_path, tiny_vlm("qwen2_vl"), cutoff_len=40, overwrite_cache=True))
    tokenizer = load_tokenizer(cfg.model)
    template = run_template(cfg, tokenizer)
    template.fix_tokenizer(tokenizer)
    media = media_for_run(cfg, tokenizer, template)
    bundle = get_dataset(cfg, tokenizer, template, media)
    assert any(reason.startswith("media cut by cutoff_len (its images take") for reason in bundle.report.dropped)
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    media.expansion("image", str(SHAPES / "red_circle.png"))
    per_image = media.token_counts(("image", str(SHAPES / "red_circle.png"), None))["image"]  # every shape is 96x72
    assert len(bundle.train) > 0
    for row in bundle.train:  # what is kept has every image whole
        assert sum(1 for t in row["input_ids"] if t == pad) == per_image * len(row["images"])


@pytest.mark.parametrize("name,part", [
    ("model.visual.blocks.0.attn.qkv.weight", "vision"), ("model.visual.merger.mlp.0.weight", "projector"),
    ("model.vision_tower.encoder.layers.0.mlp.fc1.weight", "vision"),
    ("model.multi_modal_projector.linear_1.weight", "projector"),
    ("model.embed_vision.embedding_projection.weight", "projector"),  # Gemma 3n
    ("model.audio_tower.conformer.0.attention.weight", "vision"),  # encoders (image or audio) freeze together
    ("model.language_model.layers.0.self_attn.q_proj.weight", "language"), ("lm_head.weight", "language"),
])
def test_parts_are_told_apart_by_module_name(name, part):
    from lathe.model.multimodal import part_of

    assert part_of(name) == part


@pytest.mark.parametrize("model_type", ["qwen2_5_omni", "qwen3_omni_moe"])
def test_a_whole_omni_checkpoint_is_refused_with_how_to_train_its_thinker(model_type):
    from types import SimpleNamespace

    from lathe.model.multimodal import check_trainable

    with pytest.raises(LatheError, match=r"save `model\.thinker`"):
        check_trainable(SimpleNamespace(model_type=model_type), "m")


def test_qwen3_omni_mergers_and_audio_projections_are_projector_parts():
    from lathe.model.multimodal import PARTS

    def part(name: str) -> str:
        return next(p for p, rx in PARTS if rx.search(name))

    assert part("model.visual.merger_list.0.ln_q") == part("model.audio_tower.proj2") == "projector"
    assert part("model.visual.blocks.0.attn") == part("model.audio_tower.layers.0") == "vision"
