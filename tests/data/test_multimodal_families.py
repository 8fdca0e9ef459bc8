"""Parity of lathe's media plugins with each family's own processor, beyond the Qwen families.

For every tiny family with a lathe media plugin, one and two images (and a video where the family takes
video): lathe's ids (the template's encoding of `expand_messages`' output, as training tokenizes) equal the
processor's own, and `plugin.features` gives the processor's own tensors.

Two references, per family:
- "chat": the processor's own `apply_chat_template(..., tokenize=True)`, where lathe's template writes the
  same text as the family's chat template (Gemma 3, Mistral Small 3.1, Pixtral, InternVL, Llama 4, GLM-4.1V;
  a system prompt is given where the vendor template would write a default one lathe's template lacks).
- "call": `processor(text=[lathe's rendered text with the family's placeholder], images=...)`, where the
  family's chat template is not LLaMA-Factory's text: the LLaVA templates write `<image>\\n` before the text
  and no default system prompt, LLaVA-OneVision's writes "\\n" before each text part; Idefics3 has no
  LLaMA-Factory template, so the tiny processor's own rendered text is expanded instead. That checks the
  placeholder expansion (the plugin), which is what lathe owns there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from lathe.data.media.encode import MediaContext, expand_messages
from lathe.data.media.load import MediaOptions
from lathe.data.media.plugins import MEDIA_PLUGINS, TEXT_KEYS
from lathe.data.templates.named import get_template

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT / "data" / "lathe_shapes" / "images"
IMAGES = [SHAPES / "red_circle.png", SHAPES / "blue_square.png"]
QUESTION, ANSWER = "What is shown?", "Shapes."


@dataclass(frozen=True)
class Case:
    family: str  # tiny_vlm family
    template: str | None  # lathe template (None: the tiny processor's own rendered text)
    plugin: str
    mode: str  # "chat" | "call" (see the module docstring)
    system: str | None = None  # given where the vendor template writes a default lathe's has not
    video: bool = False


CASES = [
    Case("llava", "llava", "llava", "call"),
    Case("llava_next", "llava_next_mistral", "llava_next", "call"),
    Case("llava_next_video", "llava_next_video", "llava_next_video", "call", video=True),
    Case("llava_onevision", "llava_next_qwen", "llava_onevision", "call", video=True),
    Case("gemma3", "gemma3", "gemma3", "chat"),
    Case("mistral3", "mistral_small", "pixtral", "chat", system="S"),  # vendor: a dated default system prompt
    Case("pixtral", "pixtral", "pixtral", "chat"),
    Case("internvl", "intern_vl", "intern_vl", "chat", system="S", video=True),  # LF: InternVL's Chinese default
    Case("idefics3", None, "idefics3", "call"),
    Case("llama4", "llama4", "llama4", "chat"),
    Case("glm4v", "glm4v", "glm4v", "chat", video=True),
]


@pytest.fixture(scope="module", autouse=True)
def offline():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def video_file(tmp_path_factory) -> Path:
    """A 1 s, 4 fps, 56x56 mp4 of moving colour: 2 frames at lathe's default video_fps of 2."""
    av = pytest.importorskip("av")
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 56
        stream.pix_fmt = "yuv420p"
        for i in range(4):
            frame = np.zeros((56, 56, 3), dtype=np.uint8)
            frame[:, : 14 * (i + 1)] = (200, 40 * i, 10)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


_CONTEXTS: dict[str, tuple] = {}


def context(case: Case):
    if case.family not in _CONTEXTS:
        from transformers import AutoProcessor

        from lathe.testing.tiny_vlm import build_tiny_vlm

        processor = AutoProcessor.from_pretrained(build_tiny_vlm(case.family))
        template = get_template(case.template) if case.template else None
        if template is not None:
            template.fix_tokenizer(processor.tokenizer)
        plugin = MEDIA_PLUGINS[case.plugin]
        ctx = MediaContext(plugin, processor, MediaOptions(), plugin.call_kwargs(processor, MediaOptions()))
        _CONTEXTS[case.family] = (ctx, template)
    return _CONTEXTS[case.family]


def conversation(kinds: list[str]) -> list[dict]:
    """The sample as LLaMA-Factory's data writes it: placeholders in front of the question."""
    placeholders = "".join(f"<{kind}>" for kind in kinds)
    return [{"role": "user", "content": placeholders + QUESTION}, {"role": "assistant", "content": ANSWER}]


def chat_parts(case: Case, kinds: list[str], items: list) -> list[dict]:
    """The conversation as a processor's chat template takes it: media parts, then the text."""
    media = [{"type": kind, kind: item} for kind, item in zip(kinds, items)]
    parts = [{"role": "user", "content": [*media, {"type": "text", "text": QUESTION}]},
             {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}]
    if case.system:
        parts.insert(0, {"role": "system", "content": [{"type": "text", "text": case.system}]})
    return parts


def processor_media(kinds: list[str], items: list) -> dict:
    out: dict = {}
    for kind, item in zip(kinds, items):
        out.setdefault({"image": "images", "video": "videos"}[kind], []).append(item)
    return out


def lathe_ids(case: Case, ctx: MediaContext, template, kinds: list[str], paths: list[str]) -> list[int]:
    """What training tokenizes: the placeholders expanded by the plugin, then the template's encoding."""
    media = {"image": [p for k, p in zip(kinds, paths) if k == "image"],
             "video": [p for k, p in zip(kinds, paths) if k == "video"], "audio": []}
    tokenizer = ctx.processor.tokenizer
    if template is None:  # no lathe template (images only): expand the family's own rendered text
        text = ctx.processor.apply_chat_template(chat_parts(case, kinds, [None] * len(kinds)), tokenize=False)
        pieces = text.split(ctx.plugin.prompt_text(ctx.processor, "image"))
        assert len(pieces) == len(paths) + 1 and set(kinds) == {"image"}
        expansions = [ctx.expansion("image", path) for path in paths] + [""]
        return tokenizer("".join(p + e for p, e in zip(pieces, expansions)), add_special_tokens=False)["input_ids"]
    expanded = expand_messages(conversation(kinds), media, ctx)
    pairs = template.encode(tokenizer, expanded, system=case.system) if case.system else template.encode(
        tokenizer, expanded)
    return [i for prompt, answer in pairs for i in prompt + answer]


def reference(case: Case, ctx: MediaContext, template, kinds: list[str], items: list) -> tuple[list[int], dict]:
    """The processor's own ids and tensors for the conversation (see the module docstring for the two modes)."""
    processor = ctx.processor
    if case.mode == "chat":
        out = processor.apply_chat_template(chat_parts(case, kinds, items), tokenize=True, return_dict=True,
                                            return_tensors="pt", **ctx.kwargs)
    else:
        if template is None:
            text = processor.apply_chat_template(chat_parts(case, kinds, [None] * len(kinds)), tokenize=False)
        else:
            prompts = {kind: ctx.plugin.prompt_text(processor, kind) for kind in set(kinds)}
            messages = [{**m, "content": m["content"].replace("<image>", prompts.get("image", "")).replace(
                "<video>", prompts.get("video", ""))} for m in conversation(kinds)]
            text = template.render(processor.tokenizer, messages, system=case.system).text
        out = processor(text=[text], return_tensors="pt", add_special_tokens=False,
                        **processor_media(kinds, items), **ctx.kwargs)
    return out["input_ids"][0].tolist(), {k: v for k, v in out.items() if k not in TEXT_KEYS | {"attention_mask"}}


def check(case: Case, kinds: list[str], paths: list[str]) -> None:
    ctx, template = context(case)
    items = [ctx.load(kind, path) for kind, path in zip(kinds, paths)]
    ours = lathe_ids(case, ctx, template, kinds, paths)
    raw = [item.frames if kind == "video" else item for kind, item in zip(kinds, items)]
    theirs, tensors = reference(case, ctx, template, kinds, raw)
    tokenizer = ctx.processor.tokenizer
    if case.mode == "chat":
        if template.efficient_eos:  # lathe learns eos after the last answer; the chat template writes none
            assert ours[-1] == tokenizer.eos_token_id
            ours = ours[:-1]
        # lathe's text ends with the last answer's end token; a chat template may write a newline after it
        assert ours == theirs[: len(ours)], (tokenizer.decode(ours), tokenizer.decode(theirs))
        assert tokenizer.decode(theirs[len(ours):]) in ("", "\n")
    else:
        assert ours == theirs, (tokenizer.decode(ours), tokenizer.decode(theirs))
    features = ctx.plugin.features(ctx.processor, {kind: [i for k, i in zip(kinds, items) if k == kind]
                                                   for kind in set(kinds)}, ctx.kwargs)
    assert features and set(features) == set(tensors), (sorted(features), sorted(tensors))
    for key, value in features.items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(tensors[key])), key


def params():
    for case in CASES:
        shapes = [["image"], ["image", "image"]] + ([["video"]] if case.video else [])
        for kinds in shapes:
            yield pytest.param(case, kinds, id=f"{case.family}-{'+'.join(kinds)}")


@pytest.mark.parametrize("case, kinds", list(params()))
def test_ids_and_tensors_equal_the_processor_own(case, kinds, video_file):
    images = iter(str(p) for p in IMAGES)
    paths = [str(video_file) if kind == "video" else next(images) for kind in kinds]
    check(case, kinds, paths)


@pytest.mark.parametrize("crop", [False, True])
def test_internvl_cuts_images_into_tiles_only_when_the_run_asks(crop):
    """LLaMA-Factory (and the checkpoint's image processor config) keep one tile per image unless
    `crop_to_patches: true`; the option is refused by name for the families without it (plugins.call_kwargs)."""
    from types import SimpleNamespace

    from lathe.data.media.plugins import call_kwargs

    ctx, _ = context(next(case for case in CASES if case.family == "internvl"))
    cfg = SimpleNamespace(data=SimpleNamespace(image_do_pan_and_scan=False, crop_to_patches=crop))
    kwargs = call_kwargs(cfg, ctx.plugin, ctx.processor, ctx.opts)
    run = MediaContext(ctx.plugin, ctx.processor, ctx.opts, kwargs)
    tiles = run.expansion("image", str(IMAGES[0])).count("<IMG_CONTEXT>") // ctx.processor.image_seq_length
    assert tiles > 1 if crop else tiles == 1
    assert len(run.plugin.features(run.processor, {"image": [run.load("image", str(IMAGES[0]))]}, kwargs)[
        "pixel_values"]) == tiles


TRAINED = [(case.family, case.template) for case in CASES if case.template] + [("qwen2_5_vl", "qwen2_vl")]


@pytest.mark.slow  # one short training run per family (about 5 s each)
@pytest.mark.parametrize("family,template", TRAINED, ids=[f for f, _ in TRAINED])
def test_each_family_trains_four_steps_on_images_with_the_loss_falling(tmp_path, family, template):
    """LoRA sft on lathe_shapes (rows with one and two images), 4 steps: the loss falls for every family."""
    import json

    import yaml

    from lathe.config import load_config
    from lathe.testing.tiny_vlm import build_tiny_vlm
    from lathe.train import run_stage

    config = {"model_name_or_path": str(build_tiny_vlm(family)), "stage": "sft", "do_train": True,
              "finetuning_type": "lora", "lora_rank": 8, "dataset": "lathe_shapes", "dataset_dir": str(ROOT / "data"),
              "template": template, "cutoff_len": 1024, "output_dir": str(tmp_path / "out"),
              "per_device_train_batch_size": 4, "learning_rate": 1e-2, "lr_scheduler_type": "constant",
              "max_steps": 4, "seed": 1, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run_stage(load_config(path))
    lines = (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()
    seen = [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]
    assert len(seen) == 4 and all(np.isfinite(seen)) and min(seen[-2:]) < seen[0]
