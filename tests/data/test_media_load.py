"""Media decoding: LLaMA-Factory's resize and frame-sampling rules, every source shape, and clear failures."""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import pickle
import sys
import wave
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from lathe.data.media import load as media
from lathe.data.media.load import (
    MediaError,
    MediaOptions,
    Video,
    adjust_for_qwen_vl,
    check_exists,
    load_audio,
    load_image,
    load_video,
    preprocess_image,
    resolve_path,
    sample_indices,
)
from lathe.errors import LatheError
from tests.conftest import shared_path

av = pytest.importorskip("av")
OPTS = MediaOptions()


def png_bytes(size=(40, 30), mode="RGB", color=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def can_encode(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
    except ValueError:  # UnknownCodecError: not in this PyAV build
        return False
    return True


def video_codec() -> str:
    for name in ("libx264", "mpeg4"):
        if can_encode(name):
            return name
    pytest.skip("this PyAV build has neither libx264 nor mpeg4")


def write_video(path: Path, seconds=2, fps=10, size=(64, 48), audio_rate: int | None = None) -> Path:
    """A small video whose frame i is filled with gray level 10 * i (so a frame tells its index)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(video_codec(), rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        sound = out.add_stream("aac", rate=audio_rate) if audio_rate else None
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 10 * i, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if sound is not None:
            t = np.arange(seconds * audio_rate) / audio_rate
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            chunk = 1024
            for start in range(0, samples.shape[1], chunk):
                piece = samples[:, start : start + chunk].copy()
                frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = audio_rate, start, Fraction(1, audio_rate)
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return path


def write_wav(path: Path, rate=8000, seconds=1.0, channels=1, levels=(0.5,)) -> Path:
    n = int(rate * seconds)
    data = np.stack([np.full(n, level) for level in levels], axis=1) if channels > 1 else np.full((n, 1), levels[0])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((data * 32767).astype("<i2").tobytes())
    return path


# ------------------------------------------------------------------------------- options, errors


def test_options_from_any_object_keep_defaults_where_missing():
    opts = MediaOptions.from_args(SimpleNamespace(image_max_pixels=1000, video_fps=1.0, video_maxlen=None, other=1))
    assert (opts.image_max_pixels, opts.video_fps, opts.video_maxlen, opts.image_min_pixels) == (1000, 1.0, 128, 1024)
    assert MediaOptions.from_args({"allow_remote": True}).allow_remote
    assert MediaOptions.from_args(object()) == MediaOptions()
    assert (OPTS.image_max_pixels, OPTS.video_max_pixels, OPTS.video_min_pixels) == (589824, 65536, 256)
    with pytest.raises(dataclasses.FrozenInstanceError):
        OPTS.video_fps = 1.0  # frozen


def test_media_error_keeps_reason_and_detail_through_pickle():
    error = MediaError("unreadable image", "/x.png: broken")
    assert isinstance(error, LatheError) and str(error) == "unreadable image: /x.png: broken"
    again = pickle.loads(pickle.dumps(error))
    assert (again.reason, again.detail) == ("unreadable image", "/x.png: broken")
    assert str(MediaError("missing media file")) == "missing media file"


# ------------------------------------------------------------------------------ paths, existence


def test_resolve_path(tmp_path, monkeypatch):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.jpg").write_bytes(b"x")
    (tmp_path / "cwd.jpg").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert resolve_path("a.jpg", str(tmp_path / "media")) == str(tmp_path / "media" / "a.jpg")
    assert resolve_path("a.jpg", "media") == str(tmp_path / "media" / "a.jpg")  # a relative media_dir: from cwd
    assert resolve_path("cwd.jpg", "media") == str(tmp_path / "cwd.jpg")  # LF's fallback: the path as given
    assert resolve_path("none.jpg", "media") == str(tmp_path / "media" / "none.jpg")  # the error names media_dir
    assert resolve_path("cwd.jpg", None) == str(tmp_path / "cwd.jpg")
    assert resolve_path("/abs/b.png", "media") == "/abs/b.png"
    assert resolve_path(f"file://{tmp_path}/cwd.jpg", None) == str(tmp_path / "cwd.jpg")
    for url in ("http://x.org/a.jpg", "https://x.org/a.jpg", "data:image/png;base64,AAAA"):
        assert resolve_path(url, "media") == url


def test_check_exists(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    check_exists(str(tmp_path / "a.png"), OPTS)
    check_exists("data:image/png;base64,AAAA", OPTS)
    for path, what in ((tmp_path / "no.png", "does not exist"), (tmp_path, "is a folder")):
        with pytest.raises(MediaError) as caught:
            check_exists(str(path), OPTS)
        assert caught.value.reason == "missing media file" and str(path) in caught.value.detail
        assert what in caught.value.detail
    with pytest.raises(MediaError) as caught:
        check_exists("https://x.org/a.jpg", OPTS)
    assert caught.value.reason == "remote media not allowed" and "https://x.org/a.jpg" in caught.value.detail
    assert "is off" in caught.value.detail
    check_exists("https://x.org/a.jpg", MediaOptions(allow_remote=True))  # allowed: not fetched here


# ----------------------------------------------------------------------------------------- images


def test_resize_rules_give_llamafactory_sizes():
    def size(w, h, max_pixels=768 * 768, min_pixels=32 * 32):
        return preprocess_image(Image.new("RGB", (w, h)), max_pixels, min_pixels).size

    assert size(2000, 1000) == (1086, 543)  # sqrt(589824 / 2e6) = 0.5431 -> int(1086.1), int(543.06)
    assert size(768, 768) == (768, 768)  # exactly at the limit: untouched
    assert size(1920, 1080) == (1024, 576)
    assert size(10, 20) == (22, 45)  # sqrt(1024 / 200) = 2.263 -> int(22.6), int(45.3)
    assert size(300, 168) == (300, 168)
    assert size(1000, 1000, max_pixels=1000, min_pixels=999) == (31, 31)  # 961 < 999: up by 1.0196, int(31.6) = 31
    assert size(100000, 1, max_pixels=1000) == (10000, 1)  # 0.1 px high would be 0: kept at 1 (LF would fail)
    assert size(64, 48, max_pixels=1000, min_pixels=16 * 16) == (36, 27)


def test_qwen_vl_adjustment():
    assert adjust_for_qwen_vl(Image.new("RGB", (20, 100))).size == (28, 100)
    assert adjust_for_qwen_vl(Image.new("RGB", (3000, 10))).size == (3000, 28)  # 107:1 after padding: kept
    assert adjust_for_qwen_vl(Image.new("RGB", (6000, 20))).size == (5040, 28)  # 214:1 -> 180:1
    assert adjust_for_qwen_vl(Image.new("RGB", (20, 6000))).size == (28, 5040)
    assert adjust_for_qwen_vl(Image.new("RGB", (300, 168))).size == (300, 168)


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("L", "JPEG")])
def test_image_files_become_rgb(tmp_path, mode, fmt):
    color = {"RGB": (0, 128, 255), "RGBA": (0, 128, 255, 100), "P": 3, "L": 77}[mode]
    path = tmp_path / f"x.{fmt.lower()}"
    Image.new(mode, (50, 40), color).save(path, fmt)
    image = load_image(str(path), OPTS)
    assert image.mode == "RGB" and image.size == (50, 40)
    if mode == "RGBA":
        assert image.getpixel((0, 0)) == (0, 128, 255)  # alpha dropped, as LF's convert("RGB") does
    image.load()  # usable after the file is closed


def test_image_sources_of_every_shape(tmp_path):
    raw = png_bytes((40, 30))
    (tmp_path / "a.png").write_bytes(raw)
    data_url = "data:image/png;base64," + base64.b64encode(raw).decode()
    sources = [
        str(tmp_path / "a.png"), tmp_path / "a.png", raw, io.BytesIO(raw), data_url, {"bytes": raw, "path": None},
        {"bytes": None, "path": str(tmp_path / "a.png")}, Image.open(io.BytesIO(raw)), np.zeros((30, 40, 3), np.uint8),
    ]
    for source in sources:
        image = load_image(source, OPTS)
        assert image.size == (40, 30) and image.mode == "RGB", type(source)


def test_remote_image_is_fetched_only_when_allowed(monkeypatch):
    calls = []

    def fake_urlopen(request, timeout):
        calls.append((request.full_url, timeout))
        return io.BytesIO(png_bytes((40, 30)))

    monkeypatch.setattr(media.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(MediaError) as caught:
        load_image("https://x.org/a.png", OPTS)
    assert caught.value.reason == "remote media not allowed" and not calls
    assert load_image("https://x.org/a.png", MediaOptions(allow_remote=True)).size == (40, 30)
    assert calls == [("https://x.org/a.png", 30)]

    def failing_urlopen(request, timeout):
        raise media.urllib.error.URLError("no route")

    monkeypatch.setattr(media.urllib.request, "urlopen", failing_urlopen)
    with pytest.raises(MediaError, match="download failed"):
        load_image("https://x.org/a.png", MediaOptions(allow_remote=True))


def test_bad_images_raise_media_errors(tmp_path):
    cases = {
        "missing media file": str(tmp_path / "missing.jpg"),
        "unreadable image": [
            str((tmp_path / "bad.jpg").resolve()),
            b"not an image",
            "data:image/png;base64,@@@",
            png_bytes()[:60],  # truncated
            {"path": None, "bytes": None},
            12,
        ],
    }
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(MediaError) as caught:
        load_image(cases["missing media file"], OPTS)
    assert caught.value.reason == "missing media file" and "missing.jpg" in caught.value.detail
    for source in cases["unreadable image"]:
        with pytest.raises(MediaError) as caught:
            load_image(source, OPTS)
        assert caught.value.reason == "unreadable image", source
    with pytest.raises(MediaError, match="bad.jpg"):
        load_image(str(tmp_path / "bad.jpg"), OPTS)


# ------------------------------------------------------------------------------------------ video


def test_sample_indices_follow_llamafactory():
    assert sample_indices(20, 2.0, 2.0, 128) == [0, 6, 12, 19]  # floor(2 s * 2 fps) = 4 of 20
    assert sample_indices(20, 2.0, 2.0, 3) == [0, 9, 19]  # video_maxlen caps
    assert sample_indices(3, 10.0, 2.0, 128) == [0, 1, 2]  # never more than the frames there are
    assert sample_indices(20, 0.1, 2.0, 128) == [0]  # at least one
    assert sample_indices(0, None, 2.0, 4) == [0, 1, 2, 3]  # unknown length: LF's first video_maxlen frames
    assert sample_indices(243, 9.72, 2.0, 128) == np.linspace(0, 242, 19).astype(np.int32).tolist()


def test_video_file_frames_sizes_and_times(tmp_path):
    path = write_video(tmp_path / "v.mp4")
    video = load_video(str(path), OPTS)
    assert isinstance(video, Video) and len(video.frames) == 4
    assert [f.size for f in video.frames] == [(64, 48)] * 4 and all(f.mode == "RGB" for f in video.frames)
    assert video.duration == pytest.approx(2.0, abs=0.01)
    assert video.fps == pytest.approx(2.0, abs=0.02)
    assert video.timestamps == pytest.approx([0.0, 0.6, 1.2, 1.9])
    grays = [int(np.asarray(f)[24, 32].mean()) for f in video.frames]  # frames 0, 6, 12, 19 -> gray 0, 60, 120, 190
    assert grays == pytest.approx([0, 60, 120, 190], abs=6)

    small = load_video(path.read_bytes(), MediaOptions(video_max_pixels=1000, video_maxlen=3))
    assert [f.size for f in small.frames] == [(36, 27)] * 3
    assert small.timestamps == pytest.approx([0.0, 0.9, 1.9])


def test_video_without_a_frame_count_is_sampled_by_its_duration(tmp_path):
    """Matroska stores no frame count or stream duration: the container's duration and frame rate give 20 frames.

    (LF would take the first video_maxlen frames here, all 20, at the native rate.)
    """
    path = write_video(tmp_path / "v.mkv")
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    video = load_video(str(path), OPTS)
    assert len(video.frames) == 4 and video.duration == pytest.approx(2.0, abs=0.01)
    assert video.timestamps == pytest.approx([0.0, 0.6, 1.2, 1.9])


def test_video_with_an_audio_track(tmp_path):
    path = write_video(tmp_path / "av.mp4", audio_rate=16000)
    assert len(load_video(str(path), OPTS).frames) == 4
    audio = load_audio(str(path), OPTS)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 32000) < 2048  # 2 s; AAC adds priming and padding samples
    assert 0.2 < float(np.abs(audio).max()) < 0.4


def test_video_as_a_list_of_frames(tmp_path):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGBA", (400, 300), (i, 0, 0, 255)).save(paths[-1])
    video = load_video(paths, OPTS)
    assert [f.size for f in video.frames] == [(295, 221)] * 3  # video limits: sqrt(65536 / 120000)
    assert (video.fps, video.duration, video.timestamps) == (2.0, 1.5, [0.0, 0.5, 1.0])
    with pytest.raises(MediaError) as caught:
        load_video([paths[0], str(tmp_path / "gone.png")], OPTS)
    assert caught.value.reason == "missing media file"
    with pytest.raises(MediaError, match="no frames"):
        load_video([], OPTS)


def test_bad_videos_raise_media_errors(tmp_path, monkeypatch):
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    write_wav(tmp_path / "sound.wav")
    for source, reason, text in [
        (str(tmp_path / "bad.mp4"), "unreadable video", "bad.mp4"),
        (str(tmp_path / "sound.wav"), "unreadable video", "no video track"),
        (str(tmp_path / "none.mp4"), "missing media file", "none.mp4"),
        ("http://x.org/v.mp4", "remote media not allowed", "http://x.org/v.mp4"),
    ]:
        with pytest.raises(MediaError) as caught:
            load_video(source, OPTS)
        assert caught.value.reason == reason and text in caught.value.detail
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    for load in (load_video, load_audio):
        with pytest.raises(MediaError) as caught:
            load(str(tmp_path / "sound.wav"), OPTS)
        assert caught.value.reason == "no video decoder" and "pip install av" in caught.value.detail


# ------------------------------------------------------------------------------------------ audio


def test_wav_is_resampled_to_the_target_rate(tmp_path):
    audio = load_audio(str(write_wav(tmp_path / "a.wav", rate=8000, seconds=1.0)), OPTS)
    assert audio.dtype == np.float32 and audio.shape == (16000,)
    assert float(np.median(audio)) == pytest.approx(0.5, abs=0.01)
    assert load_audio(str(tmp_path / "a.wav"), MediaOptions(audio_sampling_rate=8000)).shape == (8000,)
    assert load_audio({"bytes": (tmp_path / "a.wav").read_bytes()}, OPTS).shape == (16000,)


def test_stereo_is_averaged_like_llamafactory(tmp_path):
    path = write_wav(tmp_path / "s.wav", rate=16000, channels=2, levels=(0.5, 0.1))
    audio = load_audio(str(path), OPTS)
    assert audio.shape == (16000,) and float(np.median(audio)) == pytest.approx(0.3, abs=0.005)


@pytest.mark.parametrize("codec,suffix", [("flac", "flac"), ("libmp3lame", "mp3")])
def test_compressed_audio(tmp_path, codec, suffix):
    if not can_encode(codec):
        pytest.skip(f"this PyAV build cannot encode {codec}")
    path = tmp_path / f"a.{suffix}"
    rate, samples = 44100, (0.2 * np.sin(2 * np.pi * 300 * np.arange(44100) / 44100)).astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="stereo")
        fmt = stream.codec_context.codec.audio_formats[0].name
        for start in range(0, len(samples), 1152):
            chunk = np.stack([samples[start : start + 1152]] * 2)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate = rate
            resampler = av.AudioResampler(format=fmt, layout="stereo", rate=rate)
            for converted in resampler.resample(frame):
                out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    audio = load_audio(str(path), OPTS)
    assert audio.ndim == 1 and abs(len(audio) - 16000) < 1200
    assert 0.15 < float(np.abs(audio).max()) < 0.25


def test_bad_audio_raises_media_errors(tmp_path):
    (tmp_path / "bad.mp3").write_bytes(b"ID3 broken" + bytes(100))
    (tmp_path / "i.png").write_bytes(png_bytes())
    for source, reason, text in [
        (str(tmp_path / "bad.mp3"), "unreadable audio", "bad.mp3"),
        (str(tmp_path / "i.png"), "unreadable audio", "no audio track"),
        (str(tmp_path / "none.wav"), "missing media file", "none.wav"),
        (b"garbage" * 10, "unreadable audio", "bytes"),
    ]:
        with pytest.raises(MediaError) as caught:
            load_audio(source, OPTS)
        assert caught.value.reason == reason and text in caught.value.detail
    samples = np.zeros(10, np.float64)
    assert load_audio(samples, OPTS).dtype == np.float32  # samples already decoded pass through


# ------------------------------------------------------------------------- the shared demo media


def test_llamafactory_demo_media_decode():
    folder = shared_path("data", "mllm_demo_data")
    assert load_image(str(folder / "1.jpg"), OPTS).size == (300, 168)
    mp4 = load_video(str(folder / "1.mp4"), OPTS)  # 640x360, 243 frames, 9.72 s
    assert len(mp4.frames) == 19 and mp4.frames[0].size == (341, 192) and mp4.duration == pytest.approx(9.72)
    avi = load_video(str(folder / "2.avi"), OPTS)
    assert len(avi.frames) == 18 and avi.frames[0].size == (295, 221)
    for name, seconds in (("1.mp3", 4.03), ("2.wav", 2.90), ("3.flac", 5.855)):
        audio = load_audio(str(folder / name), OPTS)
        assert audio.dtype == np.float32 and audio.ndim == 1, name
        assert len(audio) / 16000 == pytest.approx(seconds, abs=0.05), name
        assert 0 < float(np.abs(audio).max()) < 1.5 and math.isfinite(float(audio.sum())), name
