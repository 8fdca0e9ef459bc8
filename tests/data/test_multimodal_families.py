"""Parity of lathe's media plugins with each family's own processor, beyond the Qwen families.

For every tiny family with a lathe media plugin, one and two images (and a video, or an audio clip, where the
family takes it): lathe's ids (the template's encoding of `expand_messages`' output, as training tokenizes) equal the
processor's own, and `plugin.features` gives the processor's own tensors.

Two references, per family:
- "chat": the processor's own `apply_chat_template(..., tokenize=True)`, where lathe's template writes the
  same text as the family's chat template (Gemma 3, Mistral Small 3.1, Pixtral, InternVL, Llama 4, GLM-4.1V;
  a system prompt is given where the vendor template would write a default one lathe's template lacks).
- "call": `processor(text=[lathe's rendered text with the family's placeholder], images=...)`, where the
  family's chat template is not LLaMA-Factory's text: the LLaVA templates write `<image>\\n` before the text
  and no default system prompt, LLaVA-OneVision's writes "\\n" before each text part; Idefics3 and SmolVLM have
  no LLaMA-Factory template, so the tiny processor's own rendered text is expanded instead. That checks the
  placeholder expansion (the plugin), which is what lathe owns there.
- "suffix" (PaliGemma, which ships no chat template): the processor's fine-tuning call, `processor(text=prompt,
  suffix=answer, images=...)`: images, `<bos>`, the prompt and "\\n", then the answer and eos, with its
  `token_type_ids` (0 for the prefix, 1 for the answer), which lathe's must equal.

mllama reads its images through cross-attention: its tensors (per row, with the per-token `cross_attention_mask`)
come from the plugin's batch hook on the ids, as the collator makes them (`MediaPlugin.batch_inputs`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from lathe.data.media.encode import MediaContext, expand_messages
from lathe.data.media.load import MediaOptions
from lathe.data.media.plugins import MEDIA_PLUGINS, TEXT_KEYS
from lathe.data.sample import IGNORE_INDEX
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
    audio: bool = False


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
    Case("mllama", "mllama", "mllama", "chat"),
    Case("paligemma", "paligemma", "paligemma", "suffix"),
    Case("smolvlm", None, "smolvlm", "call", video=True),
    Case("gemma3n", "gemma3n", "gemma3n", "chat", audio=True),
    # vendor: the Omni system prompt (lathe's qwen2_omni is LLaMA-Factory's, "You are a helpful assistant.");
    # use_audio_in_video: tests/data/test_audio_in_video.py
    Case("qwen2_5_omni", "qwen2_omni", "qwen2_omni", "chat", system="S", video=True, audio=True),
    Case("qwen3_omni", "qwen3_omni_nothink", "qwen3_omni", "chat", video=True, audio=True),  # no default system
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


@pytest.fixture(scope="module")
def audio_file(tmp_path_factory) -> Path:
    """A 1.5 s mono 440 Hz tone at 8 kHz (resampled to 16 kHz when loaded), written with the standard library."""
    import wave

    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    t = np.arange(12000) / 8000
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes((np.sin(2 * np.pi * 440 * t) * 20000).astype("<i2").tobytes())
    return path


_CONTEXTS: dict[str, tuple] = {}


# a family's processor (or model: Gemma 3n's timm vision tower) that needs a package of the `multimodal` extra
NEEDS = {"smolvlm": "num2words", "gemma3n": "timm"}


def context(case: Case):
    if case.family in NEEDS:
        pytest.importorskip(NEEDS[case.family])
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


def processor_media(kinds: list[str], items: list, plugin=None) -> dict:
    out: dict = {}
    for kind, item in zip(kinds, items):
        out.setdefault({"image": "images", "video": "videos", "audio": "audio"}[kind], []).append(item)
    if plugin is not None and plugin.name == "smolvlm" and "videos" in out:  # its prompt has frame timestamps
        from transformers.video_utils import VideoMetadata

        out["video_metadata"] = [VideoMetadata(total_num_frames=len(v), fps=2.0, duration=len(v) / 2.0,
                                               frames_indices=list(range(len(v)))) for v in out["videos"]]
    return out


def lathe_ids(case: Case, ctx: MediaContext, template, kinds: list[str], paths: list[str]
              ) -> tuple[list[int], list[int] | None]:
    """What training tokenizes: the placeholders expanded by the plugin, then the template's encoding, then the
    plugin's reordering (encode.py); with the labels of the default `train_on_prompt: false` (None: no template)."""
    media = {"image": [p for k, p in zip(kinds, paths) if k == "image"],
             "video": [p for k, p in zip(kinds, paths) if k == "video"],
             "audio": [p for k, p in zip(kinds, paths) if k == "audio"]}
    tokenizer = ctx.processor.tokenizer
    if template is None:  # no lathe template: expand the family's own rendered text, placeholder by placeholder
        text = ctx.processor.apply_chat_template(chat_parts(case, kinds, [None] * len(kinds)), tokenize=False)
        prompts = {kind: ctx.plugin.prompt_text(ctx.processor, kind) for kind in set(kinds)}
        found = re.findall("|".join(map(re.escape, prompts.values())), text)
        assert found == [prompts[kind] for kind in kinds], (found, kinds)
        pieces = re.split("|".join(map(re.escape, prompts.values())), text)
        expansions = [ctx.expansion(kind, path) for kind, path in zip(kinds, paths)] + [""]
        ids = tokenizer("".join(p + e for p, e in zip(pieces, expansions)), add_special_tokens=False)["input_ids"]
        return ids, None
    expanded = expand_messages(conversation(kinds), media, ctx)
    pairs = template.encode(tokenizer, expanded, system=case.system) if case.system else template.encode(
        tokenizer, expanded)
    ids = [i for prompt, answer in pairs for i in prompt + answer]
    labels = [i for prompt, answer in pairs for i in [IGNORE_INDEX] * len(prompt) + answer]
    if ctx.plugin.arrange is not None:  # as encode.py reorders a tokenized sample (PaliGemma: images first)
        order = ctx.plugin.arrange(ctx.processor, np.asarray(ids))
        ids, labels = np.asarray(ids)[order].tolist(), np.asarray(labels)[order].tolist()
    return ids, labels


def reference(case: Case, ctx: MediaContext, template, kinds: list[str], items: list) -> tuple[list[int], dict]:
    """The processor's own ids and tensors for the conversation (see the module docstring for the two modes)."""
    processor = ctx.processor
    if case.mode == "chat":
        out = processor.apply_chat_template(chat_parts(case, kinds, items), tokenize=True, return_dict=True,
                                            return_tensors="pt", **ctx.kwargs)
    elif case.mode == "suffix":
        out = processor(text=[processor.image_token * len(items) + QUESTION], suffix=[ANSWER], images=[items],
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
                        **processor_media(kinds, items, ctx.plugin), **ctx.kwargs)
    keep = {"cross_attention_mask"} if ctx.plugin.batch_features else set()  # made from the ids by the hook
    tensors = {k: v for k, v in out.items() if k not in (TEXT_KEYS - keep) | {"attention_mask", "labels"}}
    if ctx.plugin.token_types and ctx.plugin.token_types in out:  # lathe makes them from the ids: compare too
        tensors[ctx.plugin.token_types] = out[ctx.plugin.token_types]
    return out["input_ids"][0].tolist(), tensors


def check(case: Case, kinds: list[str], paths: list[str]) -> None:
    ctx, template = context(case)
    items = [ctx.load(kind, path) for kind, path in zip(kinds, paths)]
    ours, labels = lathe_ids(case, ctx, template, kinds, paths)
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
    row = {kind: [i for k, i in zip(kinds, items) if k == kind] for kind in set(kinds)}
    # what the collator gives the model for this row (tensors, per-token types and masks made from the ids)
    features = ctx.plugin.batch_inputs(ctx.processor, [row], [theirs], ctx.kwargs,
                                       labels=None if labels is None else [labels])
    if ctx.plugin.token_types not in tensors:  # a processor call that writes no types: nothing to compare with
        features.pop(ctx.plugin.token_types, None)
    assert features and set(features) == set(tensors), (sorted(features), sorted(tensors))
    for key, value in features.items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(tensors[key])), key


def params():
    for case in CASES:
        shapes = [["image"], ["image", "image"]] + ([["video"]] if case.video else []) + (
            [["audio"], ["image", "audio"]] if case.audio else [])
        for kinds in shapes:
            yield pytest.param(case, kinds, id=f"{case.family}-{'+'.join(kinds)}")


@pytest.mark.parametrize("case, kinds", list(params()))
def test_ids_and_tensors_equal_the_processor_own(case, kinds, video_file, audio_file):
    images = iter(str(p) for p in IMAGES)
    paths = [str({"video": video_file, "audio": audio_file}[kind]) if kind != "image" else next(images) for kind in kinds]
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


# (family, template): None trains with the tokenizer's own chat template (SmolVLM has no LLaMA-Factory template)
TRAINED = [(case.family, case.template) for case in CASES if case.template] + [
    ("qwen2_5_vl", "qwen2_vl"), ("paligemma", "paligemma_chat"), ("smolvlm", None)]


@pytest.mark.slow  # one short training run per family (about 5 s each)
@pytest.mark.parametrize("family,template", TRAINED, ids=[f"{f}-{t}" if t and t != f else f for f, t in TRAINED])
def test_each_family_trains_four_steps_on_images_with_the_loss_falling(tmp_path, family, template):
    """LoRA sft on lathe_shapes (rows with one and two images), 4 steps: the loss falls for every family."""
    import json

    import yaml

    from lathe.config import load_config
    from lathe.testing.tiny_vlm import build_tiny_vlm
    from lathe.train import run_stage

    if family in NEEDS:
        pytest.importorskip(NEEDS[family])
    config = {"model_name_or_path": str(build_tiny_vlm(family)), "stage": "sft", "do_train": True,
              "finetuning_type": "lora", "lora_rank": 8, "dataset": "lathe_shapes", "dataset_dir": str(ROOT / "data"),
              **({"template": template} if template else {}), "cutoff_len": 1024, "output_dir": str(tmp_path / "out"),
              "per_device_train_batch_size": 4, "learning_rate": 1e-2, "lr_scheduler_type": "constant",
              "max_steps": 4, "seed": 1, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run_stage(load_config(path))
    lines = (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()
    seen = [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]
    assert len(seen) == 4 and all(np.isfinite(seen)) and min(seen[-2:]) < seen[0]


# --- families whose media meet the ids (mllama's cross-attention, PaliGemma's prefix): a real batch -------------

MIXED = [  # one image, none, two images: rows without images share the batch
    ("<image>" + QUESTION, [IMAGES[0]]), ("Say hi.", []), ("<image><image>" + QUESTION, IMAGES)]


def mixed_batch(case: Case, train_on_prompt: bool = False) -> tuple[MediaContext, dict]:
    """MIXED through training's own tokenization (encode_with_media) and collator (MediaCollator)."""
    from types import SimpleNamespace

    from transformers import DataCollatorForSeq2Seq

    from lathe.data.media.collate import MediaCollator
    from lathe.data.media.encode import encode_with_media
    from lathe.data.processors.supervised import encode_supervised_batch

    ctx, template = context(case)
    rows = {"messages": [[{"role": "user", "content": text}, {"role": "assistant", "content": ANSWER}]
                         for text, _ in MIXED],
            "system": [""] * 3, "tools": [""] * 3, "images": [[str(p) for p in paths] for _, paths in MIXED]}
    args = SimpleNamespace(cutoff_len=1024, train_on_prompt=train_on_prompt, mask_history=False, default_system="")
    out = encode_with_media(rows, inner=encode_supervised_batch, media=ctx,
                            inner_kwargs={"template": template, "tokenizer": ctx.processor.tokenizer, "data_args": args})
    assert not any(out["_drop"])
    features = [{key: out[key][i] for key in ("input_ids", "attention_mask", "labels", "images")} for i in range(3)]
    collate = MediaCollator(DataCollatorForSeq2Seq(ctx.processor.tokenizer, label_pad_token_id=IGNORE_INDEX), ctx)
    return ctx, collate(features)


def tiny_model(family: str):
    from transformers import AutoModelForMultimodalLM

    from lathe.testing.tiny_vlm import build_tiny_vlm

    return AutoModelForMultimodalLM.from_pretrained(build_tiny_vlm(family))


def test_mllama_batches_hold_images_per_row_with_a_per_token_cross_attention_mask():
    ctx, batch = mixed_batch(next(c for c in CASES if c.family == "mllama"))
    ids, mask = batch["input_ids"], batch["cross_attention_mask"]
    image = ctx.processor.image_token_id
    assert batch["pixel_values"].shape[:3] == (3, 2, 4) and mask.shape == (3, ids.shape[1], 2, 4)
    assert batch["aspect_ratio_ids"].shape == (3, 2) and batch["aspect_ratio_mask"].shape == (3, 2, 4)
    assert (ids == image).sum(1).tolist() == [1, 0, 2]
    assert not mask[1].any() and not batch["aspect_ratio_ids"][1].any()  # the row without images sees none
    first = int((ids[0] == image).nonzero()[0])
    assert not mask[0, :first].any() and mask[0, first:, 0].all() and not mask[0, :, 1].any()
    two = (ids[2] == image).nonzero().flatten().tolist()  # consecutive images: each seen from its token to the end
    assert mask[2, two[0]:, 0].all() and mask[2, two[1]:, 1].all() and not mask[2, : two[0]].any()
    model = tiny_model("mllama")
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_paligemma_puts_images_before_bos_and_types_its_prefix(train_on_prompt):
    ctx, batch = mixed_batch(next(c for c in CASES if c.family == "paligemma"), train_on_prompt)
    tokenizer, image = ctx.processor.tokenizer, ctx.processor.image_token_id
    seq = ctx.processor.image_seq_length
    for row, (count, (ids, labels, types)) in enumerate(zip([1, 0, 2], zip(batch["input_ids"], batch["labels"],
                                                                           batch["token_type_ids"]))):
        assert (ids[: seq * count] == image).all() and ids[seq * count] == tokenizer.bos_token_id, row
        assert (ids == image).sum() == seq * count
        learned = int((labels != IGNORE_INDEX).nonzero()[0])
        assert not types[:learned].any() and types[learned:].all(), row  # nothing learned sits in the prefix
        if not train_on_prompt:  # the prefix is the images, <bos>, the prompt and "\n": the answer starts after
            assert tokenizer.decode(ids[learned:][labels[learned:] != IGNORE_INDEX]).startswith(ANSWER)
    assert (batch["labels"][batch["input_ids"] == image] == IGNORE_INDEX).all()
    model = tiny_model("paligemma")
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("family, template", [("mllama", "mllama"), ("paligemma", "paligemma")])
def test_generation_takes_the_same_media_inputs(family, template):
    """The engine's prompt with an image: `generate_inputs` gives what the collator gives (a batch of one row),
    and the tiny model generates from it."""
    from lathe.config import build_config
    from lathe.infer.engine import create_engine
    from lathe.testing.tiny_vlm import build_tiny_vlm

    settings = {"model_name_or_path": str(build_tiny_vlm(family)), "template": template, "do_sample": False,
                "max_new_tokens": 3}
    engine = create_engine(build_config(settings, purpose="infer"))
    seen: list[dict] = []
    real = engine.model.generate
    engine.model.generate = lambda *a, **kw: seen.append(kw) or real(*a, **kw)
    (reply,) = engine.chat([{"role": "user", "content": QUESTION}], images=[str(IMAGES[0])])
    assert isinstance(reply.text, str) and seen
    kwargs = seen[0]
    if family == "mllama":
        assert kwargs["cross_attention_mask"].shape[:3] == (1, kwargs["input_ids"].shape[1], 1)
    else:  # the whole prompt is the prefix; the images come first
        assert not kwargs["token_type_ids"].any()
        assert kwargs["input_ids"][0, 0] == engine.media.processor.image_token_id
