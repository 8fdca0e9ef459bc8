"""`use_audio_in_video` for the omni thinkers (Qwen2.5-Omni, Qwen3-Omni): each video heard as well as seen, as their
processors and models do. Every test runs for both tiny thinkers.

With the option, the processor writes a video with sound as `<|vision_bos|><|audio_bos|>`, its frames' tokens and its
sound's tokens interleaved (Qwen2.5-Omni: in 2 s chunks; Qwen3-Omni, whose tokens are `<|vision_start|>`,
`<|audio_start|>`...: token by token in time order), `<|audio_eos|><|vision_eos|>`; the sound's features come in the
processor's audio tensors, and the model numbers the positions of both together
(`get_rope_index(use_audio_in_video=True)`).
Held here: lathe's ids equal the processor's own (its chat template's text, expanded by its own call with the video's
sound), its batch tensors equal the processor's, and a batch through lathe's tokenization and collator gives the
model's own positions and logits. A video's sound is its own audio track, or, as LLaMA-Factory pairs them, the row's
`<audio>` item after its `<video>` (mllm_video_audio_demo); a video without sound is skipped and counted.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lathe.data.media.encode import MediaContext, encode_with_media, expand_messages
from lathe.data.media.load import MediaOptions
from lathe.data.media.plugins import MEDIA_PLUGINS, TEXT_KEYS
from lathe.data.processors.supervised import encode_supervised_batch
from lathe.data.sample import IGNORE_INDEX
from lathe.data.templates.named import get_template

from tests.conftest import shared_path

ROOT = Path(__file__).resolve().parents[2]
IMAGE = str(ROOT / "data" / "lathe_shapes" / "images" / "red_circle.png")
QUESTION, ANSWER, SYSTEM = "What happens?", "It moves.", "S"  # the template's default system prompt is not Omni's

av = pytest.importorskip("av", reason="PyAV decodes video and audio")
pytest.importorskip("torchvision", reason="transformers' video processors need torchvision")


@pytest.fixture(scope="module", autouse=True)
def offline():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_clip(path: Path, sound: bool, seconds: float = 2.0, fps: int = 4, rate: int = 16000) -> str:
    """A 56x56 mpeg4 clip of a growing bar, with a 440 Hz AAC track when `sound`."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width = video.height = 56
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=rate) if sound else None
        if audio is not None:
            audio.layout = "mono"
        for i in range(int(seconds * fps)):
            frame = np.zeros((56, 56, 3), np.uint8)
            frame[:, : 7 * (i + 1)] = (200, 30 * i, 10)
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is not None:
            samples = (np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate) * 0.5).astype(np.float32)
            for start in range(0, len(samples), 1024):
                chunk = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = rate, start
                for packet in audio.encode(chunk):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return str(path)


def write_wav(path: Path, seconds: float = 1.5, rate: int = 8000) -> str:
    import wave

    t = np.arange(int(seconds * rate)) / rate
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.sin(2 * np.pi * 330 * t) * 20000).astype("<i2").tobytes())
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("media")
    return SimpleNamespace(heard=write_clip(folder / "heard.mp4", sound=True),
                           silent=write_clip(folder / "silent.mp4", sound=False), tone=write_wav(folder / "tone.wav"))


OMNI = {"qwen2_5_omni": "qwen2_omni", "qwen3_omni": "qwen3_omni_nothink"}  # tiny thinker -> LLaMA-Factory template


@pytest.fixture(scope="module", params=sorted(OMNI))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def omni(family) -> tuple[MediaContext, object]:
    """The tiny thinker's processor, its LLaMA-Factory template (whose media plugin it names), use_audio_in_video on."""
    from transformers import AutoProcessor

    from lathe.testing.tiny_vlm import build_tiny_vlm

    processor = AutoProcessor.from_pretrained(build_tiny_vlm(family))
    template = get_template(OMNI[family])
    template.fix_tokenizer(processor.tokenizer)
    plugin, opts = MEDIA_PLUGINS[template.media], MediaOptions(use_audio_in_video=True)
    return MediaContext(plugin, processor, opts, plugin.call_kwargs(processor, opts)), template


def token(ctx: MediaContext, name: str) -> str:
    """The family's spelling of a media token: "audio_bos" is `<|audio_bos|>` (2.5) or `<|audio_start|>` (3)."""
    return getattr(ctx.processor, f"{name}_token")


def lathe_ids(ctx: MediaContext, template, content: str, media: dict) -> list[int]:
    """What training tokenizes: the placeholders expanded (expand_messages), then the template's encoding."""
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": ANSWER}]
    expanded = expand_messages(messages, {"image": [], "video": [], "audio": [], **media}, ctx)
    return [i for prompt, answer in template.encode(ctx.processor.tokenizer, expanded, system=SYSTEM)
            for i in prompt + answer]


def processor_own(ctx: MediaContext, kinds: list[str], images: list, videos: list, sounds: list) -> dict:
    """The processor's own output: its chat template's text for the conversation, expanded by its own call with
    each video's sound (`load_audio_from_video`, the audio given decoded: transformers reads a video's track with
    torchcodec, which this machine need not have)."""
    chat = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {"role": "user", "content": [*({"type": kind} for kind in kinds), {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}]
    text = ctx.processor.apply_chat_template(chat, tokenize=False)
    return ctx.processor(text=[text], images=images or None, videos=[v.frames for v in videos], audio=sounds,
                         audio_from_video_indices=list(range(len(videos))), load_audio_from_video=True,
                         return_tensors="pt", **ctx.kwargs)


def assert_same(ours: list[int], theirs: list[int], tokenizer) -> None:
    """lathe's text ends with the answer's `<|im_end|>`; the chat template writes a newline after it."""
    assert ours == theirs[: len(ours)], (tokenizer.decode(ours), tokenizer.decode(theirs))
    assert tokenizer.decode(theirs[len(ours):]) == "\n"


def assert_tensors(features: dict, ref: dict) -> None:
    expected = {k: v for k, v in ref.items() if k not in TEXT_KEYS}
    assert features.pop("use_audio_in_video") is True  # the model's own switch, not a processor output
    assert set(features) == set(expected), (sorted(features), sorted(expected))
    for key, value in features.items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("kinds", [["video"], ["image", "video"]], ids="+".join)
def test_a_heard_video_gives_the_processor_own_ids_and_tensors(omni, files, kinds):
    ctx, template = omni
    ours = lathe_ids(ctx, template, "".join(f"<{k}>" for k in kinds) + QUESTION,
                     {"image": [IMAGE] if "image" in kinds else [], "video": [files.heard]})
    video = ctx.load("video", files.heard)
    assert video.sound is not None and len(video.frames) == 4  # its own track; 2 s at video_fps 2
    images = [ctx.load("image", IMAGE)] if "image" in kinds else []
    ref = processor_own(ctx, kinds, images, [video], [video.sound])
    theirs = ref["input_ids"][0].tolist()
    assert_same(ours, theirs, ctx.processor.tokenizer)
    tokens = ctx.processor.tokenizer.convert_ids_to_tokens(ours)
    start = tokens.index(token(ctx, "audio_bos"))
    heard = tokens[start:tokens.index(token(ctx, "audio_eos"))]
    assert tokens[start - 1] == token(ctx, "vision_bos")
    assert token(ctx, "audio") in heard and token(ctx, "video") in heard
    row = {"image": images, "video": [video], "audio": []}
    assert_tensors(ctx.plugin.batch_inputs(ctx.processor, [row], [theirs], ctx.kwargs), ref)


def test_the_audio_after_a_video_is_its_sound_as_llama_factory_pairs_them(omni, files):
    """mllm_video_audio_demo writes `<video><audio>` with the video file and its sound apart: the audio item is
    heard inside the video (its `<audio>` becomes nothing), even where the video file itself is silent."""
    ctx, template = omni
    ours = lathe_ids(ctx, template, "<video><audio>" + QUESTION, {"video": [files.silent], "audio": [files.tone]})
    video, tone = ctx.load("video", files.silent, files.tone), ctx.load("audio", files.tone)
    assert np.array_equal(video.sound, tone)
    ref = processor_own(ctx, ["video"], [], [video], [tone])
    assert_same(ours, ref["input_ids"][0].tolist(), ctx.processor.tokenizer)
    row = ctx.load_row({"image": [], "video": [files.silent], "audio": [files.tone]})
    assert row["audio"] == [] and np.array_equal(row["video"][0].sound, tone)
    assert_tensors(ctx.plugin.batch_inputs(ctx.processor, [row], [ref["input_ids"][0].tolist()], ctx.kwargs), ref)


def test_a_row_without_placeholders_gets_video_then_audio_and_is_heard_alike(omni, files):
    """Media without placeholders go to the start of the first user turn in the order image, video, audio, so a
    row that gives a video and its sound and writes no placeholder pairs them as `<video><audio>` would."""
    from lathe.data.media.placement import place

    ctx, template = omni
    turns = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
    placed = place(turns, {"<image>": 1, "<video>": 1, "<audio>": 1})
    assert placed[0]["content"] == "<image><video><audio>" + QUESTION
    ids = lathe_ids(ctx, template, placed[0]["content"], {"image": [IMAGE], "video": [files.silent],
                                                          "audio": [files.tone]})
    tokens = ctx.processor.tokenizer.convert_ids_to_tokens(ids)
    starts = [i for i, found in enumerate(tokens) if found == token(ctx, "audio_bos")]
    assert len(starts) == 1 and tokens[starts[0] - 1] == token(ctx, "vision_bos")  # the tone is the video's sound


def encode(ctx: MediaContext, template, rows: list[tuple[str, dict]]) -> dict:
    """Training's own tokenization of (user text, media paths) rows."""
    batch = {"messages": [[{"role": "user", "content": text}, {"role": "assistant", "content": ANSWER}]
                          for text, _ in rows],
             "system": [SYSTEM] * len(rows), "tools": [""] * len(rows),
             **{column: [list(media.get(kind, [])) for _, media in rows]
                for kind, column in (("image", "images"), ("video", "videos"), ("audio", "audios"))}}
    args = SimpleNamespace(cutoff_len=4096, train_on_prompt=True, mask_history=False, default_system="")
    return encode_with_media(batch, inner=encode_supervised_batch, media=ctx,
                             inner_kwargs={"template": template, "tokenizer": ctx.processor.tokenizer,
                                           "data_args": args})


def test_a_video_without_sound_and_unpaired_audio_are_skipped_with_their_reason(omni, files):
    ctx, template = omni
    out = encode(ctx, template, [
        ("<video>" + QUESTION, {"video": [files.heard]}),
        ("<video>" + QUESTION, {"video": [files.silent]}),
        ("<audio><video>" + QUESTION, {"video": [files.heard], "audio": [files.tone]}),
        ("<video><video><audio>" + QUESTION, {"video": [files.heard, files.silent], "audio": [files.tone]}),
        ("<audio>" + QUESTION, {"audio": [files.tone]}),  # a clip of its own is heard as ever
    ])
    drops = out["_drop"]
    assert drops[0] == "" and drops[4] == ""
    assert drops[1].startswith("video without sound") and "silent.mp4" in drops[1]
    assert drops[2].startswith("video and audio not paired") and "before its <video>" in drops[2]
    assert drops[3].startswith("video and audio not paired") and "1 audio(s)" in drops[3]
    ids, labels = np.asarray(out["input_ids"][0]), np.asarray(out["labels"][0])
    heard = np.isin(ids, ctx.processor.tokenizer.convert_tokens_to_ids([token(ctx, k) for k in ("video", "audio",
                                                                                                "audio_bos")]))
    assert heard.sum() > 3 and (labels[heard] == IGNORE_INDEX).all()  # never learned, even with train_on_prompt


def test_a_batch_gives_the_model_the_processor_own_positions_and_logits(omni, files, family):
    """Training's tokenization and collator over two rows, a clip of its own first and then an image and a heard
    video: the audio features come in the order the ids meet them (the clip, then the video's sound), the model
    takes `use_audio_in_video=True`, and each row's positions and logits are those of the processor's own inputs
    for that row in the model (padding aside); without the switch the positions would differ."""
    from transformers import AutoModelForMultimodalLM, DataCollatorForSeq2Seq

    from lathe.data.media.collate import MediaCollator
    from lathe.testing.tiny_vlm import build_tiny_vlm

    ctx, template = omni
    out = encode(ctx, template, [("<audio>" + QUESTION, {"audio": [files.tone]}),
                                 ("<image><video>" + QUESTION, {"image": [IMAGE], "video": [files.heard]})])
    assert not any(out["_drop"])
    features = [{key: out[key][i] for key in ("input_ids", "attention_mask", "labels", "images", "videos", "audios")}
                for i in range(2)]
    collate = MediaCollator(DataCollatorForSeq2Seq(ctx.processor.tokenizer, label_pad_token_id=IGNORE_INDEX), ctx)
    batch = collate(features)
    assert batch["use_audio_in_video"] is True and batch["feature_attention_mask"].shape[0] == 2
    tone, video = ctx.load("audio", files.tone), ctx.load("video", files.heard)

    model = AutoModelForMultimodalLM.from_pretrained(build_tiny_vlm(family)).eval()
    chat = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}]
    own = [ctx.processor(text=[ctx.processor.apply_chat_template(chat, tokenize=False)], audio=[tone],
                         return_tensors="pt", **ctx.kwargs),
           processor_own(ctx, ["image", "video"], [ctx.load("image", IMAGE)], [video], [video.sound])]
    lengths = [int(inputs["feature_attention_mask"].sum()) for inputs in own]  # 1.5 s and 2 s: the order shows
    assert batch["feature_attention_mask"].sum(-1).tolist() == lengths and lengths[0] < lengths[1]

    def positions(inputs: dict, heard: bool) -> torch.Tensor:
        return model.model.get_rope_index(
            inputs["input_ids"], inputs.get("image_grid_thw"), inputs.get("video_grid_thw"), inputs["attention_mask"],
            heard, inputs["feature_attention_mask"].sum(-1), inputs.get("video_second_per_grid"))[0]

    ours = positions(batch, True)
    with torch.no_grad():
        logits = model(**batch).logits
        for row, inputs in enumerate(own):
            n = int(batch["attention_mask"][row].sum())
            assert torch.equal(ours[:, row, :n], positions(inputs, True)[:, 0, :n]), row
            expected = model(**inputs, use_audio_in_video=True).logits
            torch.testing.assert_close(logits[row, :n], expected[0, :n], atol=1e-4, rtol=1e-4)
    assert not torch.equal(positions(own[1], False), positions(own[1], True))
    # a bfloat16 model: the features are cast, the seconds per grid kept (its positions multiply them, truncated)
    half = MediaCollator(collate.inner, ctx, dtype=torch.bfloat16)(features)
    assert half["input_features"].dtype == half["pixel_values_videos"].dtype == torch.bfloat16
    assert half["video_second_per_grid"].dtype == torch.float32


def test_an_omni_thinker_trains_on_llama_factory_video_audio_demo_and_counts_silent_videos(tmp_path, family):
    """LLaMA-Factory's mllm_video_audio_demo (`<video><audio>`: 4.mp4 heard with 4.mp3) with `use_audio_in_video:
    true`, beside mllm_video_demo, whose videos have no sound: those rows are skipped as "video without sound" and
    counted; LoRA on the tiny thinker, the loss falling."""
    import json

    import yaml

    from lathe.config import load_config
    from lathe.data.loader import get_dataset, run_template
    from lathe.data.media.encode import media_for_run
    from lathe.model.load import load_tokenizer
    from lathe.testing.tiny_vlm import build_tiny_vlm
    from lathe.train import run_stage

    config = {"model_name_or_path": str(build_tiny_vlm(family)), "template": OMNI[family], "stage": "sft",
              "do_train": True, "finetuning_type": "lora", "lora_rank": 8, "use_audio_in_video": True,
              "dataset": "mllm_video_audio_demo,mllm_video_demo", "dataset_dir": str(shared_path("data")),
              "cutoff_len": 4096, "video_fps": 1.0, "output_dir": str(tmp_path / "out"),
              "per_device_train_batch_size": 3, "learning_rate": 2e-2, "lr_scheduler_type": "constant",
              "max_steps": 4, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
              "seed": 1}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = load_config(path)
    tokenizer = load_tokenizer(cfg.model)
    template = run_template(cfg, tokenizer)
    template.fix_tokenizer(tokenizer)
    bundle = get_dataset(cfg, tokenizer, template, media_for_run(cfg, tokenizer, template))
    assert len(bundle.train) == 3
    reasons = bundle.report.dropped  # reason (file: detail) -> rows
    assert sum(reasons.values()) == 3 and all(reason.startswith("video without sound") for reason in reasons)
    audio = tokenizer.convert_tokens_to_ids(tokenizer.audio_token)
    assert all(sum(t == audio for t in row["input_ids"]) > 0 for row in bundle.train)  # each video heard
    run_stage(cfg)
    lines = (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()
    seen = [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]
    assert len(seen) == 4 and all(np.isfinite(seen)) and seen[-1] < seen[0]
