"""`use_audio_in_video` at inference: `lathe chat --video V --audio A` and the API's content parts pair a video with
the audio after it as training does (`data/media/encode.pair_sounds`), so the model hears the video with that audio
as its sound instead of taking the audio as a clip of its own.

The video here is silent and the audio a separate tone: the pair is heard only through the pairing (a silent video
heard alone is refused as "video without sound"). The prompt ids are the ones training builds for the same row, and
`generate` gets one audio feature row (the video's sound) and `use_audio_in_video=True`.
"""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest

from lathe.config import build_config
from lathe.errors import LatheError
from lathe.infer.api import create_app
from lathe.infer.engine import create_engine
from tests.data.test_audio_in_video import write_clip, write_wav
from tests.infer.test_api import LiveServer

QUESTION = "What happens?"
FAMILY, TEMPLATE = "qwen3_omni", "qwen3_omni_nothink"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("media")
    return SimpleNamespace(silent=write_clip(folder / "silent.mp4", sound=False), tone=write_wav(folder / "tone.wav"))


def settings() -> dict:
    from lathe.testing.tiny_vlm import build_tiny_vlm

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return {"model_name_or_path": str(build_tiny_vlm(FAMILY)), "template": TEMPLATE, "use_audio_in_video": True,
            "do_sample": False, "max_new_tokens": 2}


@pytest.fixture(scope="module")
def engine():
    return create_engine(build_config(settings(), purpose="infer"))


@pytest.fixture
def generate_spy(engine, monkeypatch) -> list[dict]:
    """The keyword arguments of every `model.generate` call, which still runs."""
    calls: list[dict] = []
    real = engine.model.generate
    monkeypatch.setattr(engine.model, "generate", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    return calls


def training_ids(engine, files) -> list[int]:
    """The prompt training builds for the row `<video><audio>question` with the clip and the tone."""
    from lathe.data.media.encode import expand_messages

    media = {"image": [], "video": [files.silent], "audio": [files.tone]}
    placed = [{"role": "user", "content": "<video><audio>" + QUESTION}]
    return engine.template.encode_prompt(engine.tokenizer, expand_messages(placed, media, engine.media))


def assert_heard(engine, kwargs: dict, files) -> None:
    """generate got training's prompt, the video's sound as the only audio, and the model's switch."""
    ids = kwargs["input_ids"][0].tolist()
    assert ids == training_ids(engine, files)
    processor = engine.media.processor
    starts = [i for i, token in enumerate(ids) if token == processor.tokenizer.convert_tokens_to_ids(
        processor.audio_bos_token)]
    assert len(starts) == 1 and ids[starts[0] - 1] == processor.tokenizer.convert_tokens_to_ids(
        processor.vision_bos_token)  # the tone starts inside the video's wrapper: its sound, not a clip
    assert kwargs["use_audio_in_video"] is True and kwargs["feature_attention_mask"].shape[0] == 1


def test_chat_hears_the_audio_after_a_video_as_its_sound(engine, generate_spy, files):
    messages = [{"role": "user", "content": QUESTION}]
    (reply,) = engine.chat(messages, videos=[files.silent], audios=[files.tone])
    assert isinstance(reply.text, str) and reply.prompt_tokens == len(training_ids(engine, files))
    assert_heard(engine, generate_spy[0], files)
    assert engine.count_prompt_tokens(messages, videos=[files.silent], audios=[files.tone]) == reply.prompt_tokens
    # placeholders written by the caller pair alike; those training refuses are refused by name
    engine.chat([{"role": "user", "content": "<video><audio>" + QUESTION}], videos=[files.silent], audios=[files.tone])
    assert generate_spy[1]["input_ids"].tolist() == generate_spy[0]["input_ids"].tolist()
    with pytest.raises(LatheError, match="video and audio not paired.*before its <video>"):
        engine.chat([{"role": "user", "content": "<audio><video>" + QUESTION}], videos=[files.silent],
                    audios=[files.tone])
    with pytest.raises(LatheError, match="video and audio not paired.*2 video"):
        engine.chat(messages, videos=[files.silent, files.silent], audios=[files.tone])
    with pytest.raises(LatheError, match="video without sound"):  # no audio given: the video's own track
        engine.chat(messages, videos=[files.silent])


def test_chat_command_pairs_video_and_audio_flags(engine, generate_spy, files, monkeypatch, capsys):
    from lathe.infer import chat_cli
    from lathe.infer import engine as engine_module

    monkeypatch.setattr(engine_module, "create_engine", lambda cfg: engine)  # the module's model, loaded once
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\nexit\n"))
    args = [f"{k}={v}" for k, v in settings().items()] + ["--video", files.silent, "--audio", files.tone]
    assert chat_cli.chat_main(args) == 0
    assert capsys.readouterr().out.count("Assistant: ") == 1
    assert_heard(engine, generate_spy[0], files)


def test_api_pairs_a_video_part_with_the_audio_part_after_it(engine, generate_spy, files):
    video = "data:video/mp4;base64," + base64.b64encode(Path(files.silent).read_bytes()).decode()
    audio = {"data": base64.b64encode(Path(files.tone).read_bytes()).decode(), "format": "wav"}
    parts = [{"type": "video_url", "video_url": {"url": video}}, {"type": "input_audio", "input_audio": audio},
             {"type": "text", "text": QUESTION}]
    live = LiveServer(create_app(engine))
    try:
        client = live.client(api_key="unused")
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": parts}], max_tokens=2)
        assert reply.usage.prompt_tokens == len(training_ids(engine, files))
        assert_heard(engine, generate_spy[0], files)
        with pytest.raises(openai.BadRequestError) as caught:  # the audio part before the video part
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": [parts[1], parts[0]]}],
                                           max_tokens=2)
    finally:
        live.close()
    assert "video and audio not paired" in caught.value.body["message"]
