"""Decode the images, videos and audio of a multimodal dataset the way LLaMA-Factory does.

A model fine-tuned with lathe should see the same pixels and samples it would have seen under
LLaMA-Factory (LF) with the same options, so the resize rule (`preprocess_image`), the choice of
video frames (`sample_indices`) and the option names and defaults (`MediaOptions`) copy LF's
`mm_plugin.py`. What lathe adds is failure a user can act on: every bad file, bad URL or missing
decoder is a `MediaError` whose `reason` is one short stable text (so a data report can count
rows per reason) and whose `detail` names the file and what went wrong; no raw PIL or PyAV
exception escapes.

Where LF would crash or do something poor, lathe differs, on purpose:
- a video whose container reports no frame count (webm, some mkv) has its frames counted from
  its duration and frame rate, instead of LF's "take the first `video_maxlen` frames";
- a video with no stream duration uses the container's duration (LF raises a TypeError);
- audio is decoded by PyAV (LF uses torchaudio): channels are averaged as LF does (PyAV's own
  mono downmix would weigh each stereo channel by 0.707, 3 dB louder), then resampled by
  FFmpeg's resampler, whose filter differs from torchaudio's in the last digits.
Decoding stops after the last frame needed, and each frame is resized as it is decoded, so a long
high-resolution video is never held whole in memory.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from lathe.errors import LatheError

REMOTE_TIMEOUT_S = 30
_URL_SCHEMES = ("http://", "https://")


@dataclass(frozen=True)
class MediaOptions:
    """How media are decoded; the names and defaults are LLaMA-Factory's model arguments."""

    image_max_pixels: int = 768 * 768  # larger images are scaled down to this many pixels
    image_min_pixels: int = 32 * 32  # smaller images are scaled up to this many pixels
    video_max_pixels: int = 256 * 256  # the same two limits, for each video frame
    video_min_pixels: int = 16 * 16
    video_fps: float = 2.0  # frames sampled per second of video
    video_maxlen: int = 128  # at most this many frames per video
    audio_sampling_rate: int = 16000  # audio is resampled to this rate (Hz), mono
    use_audio_in_video: bool = False  # the plugins also feed a video's audio track to the model
    allow_remote: bool = False  # http(s) URLs are downloaded (online runs); off, they are refused

    @classmethod
    def from_args(cls, args: Any) -> MediaOptions:
        """Options from any object (a config group, a namespace) or mapping holding attributes of these names.

        A name that is missing, or set to None, keeps its default.
        """
        values = {}
        for f in fields(cls):
            value = args.get(f.name) if isinstance(args, Mapping) else getattr(args, f.name, None)
            if value is not None:
                values[f.name] = value
        return cls(**values)


class MediaError(LatheError):
    """A medium that cannot be used: `reason` is a short stable text, `detail` names the file and the cause.

    Reasons: "missing media file", "unreadable image", "unreadable video", "unreadable audio",
    "no video decoder", "remote media not allowed", "video without sound" (`use_audio_in_video`),
    "video and audio not paired" (`use_audio_in_video`, encode.py).
    """

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):  # datasets' worker processes pickle errors; keep reason and detail apart
        return (type(self), (self.reason, self.detail))


def _is_url(path: str) -> bool:
    return path[:8].lower().startswith(_URL_SCHEMES)


def _is_data_url(path: str) -> bool:
    return path[:5].lower() == "data:"


def _from_file_url(path: str) -> str:
    if path[:7].lower() == "file://":
        return urllib.request.url2pathname(urllib.parse.urlparse(path).path)
    return path


def resolve_path(path: str, media_dir: str | None) -> str:
    """The absolute path of a dataset's media path; URLs (http, https, data) and absolute paths come back unchanged.

    A relative path is taken relative to `media_dir`. As in LLaMA-Factory, when it is not found
    there but exists relative to the working directory, that file is used; when it is in neither
    place, the `media_dir` path is returned so the "missing media file" error names where it
    was looked for.
    """
    if _is_url(path) or _is_data_url(path):
        return path
    path = os.path.expanduser(_from_file_url(path))
    if os.path.isabs(path):
        return path
    if media_dir:
        joined = os.path.abspath(os.path.join(os.path.expanduser(media_dir), path))
        if os.path.isfile(joined) or not os.path.isfile(path):
            return joined
    return os.path.abspath(path)


def _remote_refused(url: str) -> MediaError:
    return MediaError(
        "remote media not allowed",
        f"{url}: downloading media from URLs is off. Download the file and give its local path, "
        "or allow remote media for this run.",
    )


def check_exists(path: str, opts: MediaOptions) -> None:
    """Fail early, without decoding: a local path that is not a file, or a URL while remote media are off.

    A data: URL always passes; an allowed http(s) URL is not fetched here.
    """
    if _is_data_url(path):
        return
    if _is_url(path):
        if not opts.allow_remote:
            raise _remote_refused(path)
        return
    local = _from_file_url(path)
    if not os.path.isfile(local):
        what = "is a folder, not a file" if os.path.isdir(local) else "does not exist"
        raise MediaError("missing media file", f"{local} {what}")


def _fetch(url: str, kind: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "lathe"})
    try:
        with urllib.request.urlopen(request, timeout=REMOTE_TIMEOUT_S) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise MediaError(f"unreadable {kind}", f"{url}: download failed ({error})") from None


def _decode_data_url(url: str, kind: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep:
        raise MediaError(f"unreadable {kind}", f"{url[:60]}...: a data: URL needs a ',' before its data")
    try:
        if head.lower().endswith(";base64"):
            return base64.b64decode(payload, validate=False)
        return urllib.parse.unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as error:
        raise MediaError(f"unreadable {kind}", f"{head}: bad base64 data ({error})") from None


def _open_source(source: Any, opts: MediaOptions, kind: str) -> tuple[Any, str]:
    """(what PIL or PyAV can open: a local path or a binary file object, the name errors use).

    `source` is a path, an http(s) or data: URL, bytes, a binary file object, or a dict in the
    shape of the `datasets` Image/Audio/Video features ({"bytes": ..., "path": ...}).
    """
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            return _open_source(source["bytes"], opts, kind)
        if source.get("path") is not None:
            return _open_source(source["path"], opts, kind)
        raise MediaError(f"unreadable {kind}", f"a dict with neither 'bytes' nor 'path': keys {sorted(source)}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), f"<{len(source)} bytes>"
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        if _is_data_url(source):
            return io.BytesIO(_decode_data_url(source, kind)), source[: source.find(",")] + ",..."
        check_exists(source, opts)
        if _is_url(source):
            return io.BytesIO(_fetch(source, kind)), source
        return _from_file_url(source), _from_file_url(source)
    if hasattr(source, "read"):
        return source, getattr(source, "name", None) or f"<{type(source).__name__}>"
    raise MediaError(f"unreadable {kind}", f"expected a path, URL, bytes or dict, got {type(source).__name__}")


# ---------------------------------------------------------------------------------------- images


def preprocess_image(image: Image.Image, max_pixels: int, min_pixels: int) -> Image.Image:
    """LLaMA-Factory's `_preprocess_image`: fit the pixel count into [min_pixels, max_pixels], then RGB.

    Over the maximum, both sides are scaled by sqrt(max / (w * h)) and truncated with int(); then,
    if the result is under the minimum, both are scaled up by sqrt(min / (w * h)) the same way.
    The resize uses PIL's default filter (bicubic; nearest for palette images), as LF does, and
    the mode is converted last (RGBA and LA lose their alpha). A side never drops below 1 pixel
    (LF would fail on such extreme shapes).
    """
    if image.width * image.height > max_pixels:
        factor = math.sqrt(max_pixels / (image.width * image.height))
        image = image.resize((max(1, int(image.width * factor)), max(1, int(image.height * factor))))
    if image.width * image.height < min_pixels:
        factor = math.sqrt(min_pixels / (image.width * image.height))
        image = image.resize((max(1, int(image.width * factor)), max(1, int(image.height * factor))))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def adjust_for_qwen_vl(image: Image.Image) -> Image.Image:
    """LLaMA-Factory's extra step for the Qwen2-VL family, after `preprocess_image`.

    Qwen-VL merges 14-pixel patches 2x2, so a side under 28 pixels is padded up to 28 by resizing
    (the other side untouched), and its processor refuses an aspect ratio over 200, so such an
    image is squeezed to 180:1. Other families keep the plain rule; their plugins do not call this.
    """
    if min(image.width, image.height) < 28:
        image = image.resize((max(image.width, 28), max(image.height, 28)))
    if image.width / image.height > 200:
        image = image.resize((image.height * 180, image.height))
    if image.height / image.width > 200:
        image = image.resize((image.width, image.width * 180))
    return image


def _load_image(source: Any, opts: MediaOptions, max_pixels: int, min_pixels: int) -> Image.Image:
    if isinstance(source, np.ndarray):
        source = Image.fromarray(source)
    if isinstance(source, Image.Image):
        image, name = source, f"<{type(source).__name__} {source.mode} {source.width}x{source.height}>"
    else:
        opened, name = _open_source(source, opts, "image")
        try:
            with Image.open(opened) as image:  # closes the file; the loaded pixels stay usable
                image.load()
        except Exception as error:  # PIL: OSError, ValueError, SyntaxError, ...  # noqa: BLE001
            raise MediaError("unreadable image", f"{name}: {type(error).__name__}: {error}") from None
    try:
        return preprocess_image(image, max_pixels, min_pixels)
    except Exception as error:  # an exotic mode PIL cannot resize or convert  # noqa: BLE001
        raise MediaError("unreadable image", f"{name}: {type(error).__name__}: {error}") from None


def load_image(source: Any, opts: MediaOptions) -> Image.Image:
    """An RGB image resized into [image_min_pixels, image_max_pixels] by `preprocess_image`.

    `source`: a path, an http(s) URL (when `opts.allow_remote`), a data: URL, bytes, a binary
    file object, a PIL image, a numpy array, or a `datasets` Image dict ({"bytes"} or {"path"}).
    EXIF orientation is not applied, as in LLaMA-Factory.
    """
    return _load_image(source, opts, opts.image_max_pixels, opts.image_min_pixels)


# ----------------------------------------------------------------------------------------- video


@dataclass
class Video:
    """The sampled frames of one video, each resized by the video pixel limits.

    fps: the sampled frames' rate (frames / duration); duration: seconds of the whole video;
    timestamps: seconds from the start of each frame (frame index / the video's frame rate, as
    LLaMA-Factory computes it; multiply by `video_fps` for LF's Qwen3-VL "frame indices").
    A video given as a list of images has fps = video_fps and frame i at i / video_fps.
    sound: with `use_audio_in_video`, the video's sound (mono float32 at `audio_sampling_rate`), which the
    omni models hear interleaved with its frames: its own first audio track (`load_video_sound`) or, as
    LLaMA-Factory pairs them, the row's audio item that follows its placeholder; None otherwise.
    """

    frames: list[Image.Image]
    fps: float
    duration: float
    timestamps: list[float]
    sound: np.ndarray | None = None


def _import_av(what: str):
    try:
        import av
    except ImportError:
        raise MediaError("no video decoder", f"PyAV decodes {what}; install PyAV: pip install av") from None
    return av


def sample_indices(total_frames: int, duration: float | None, video_fps: float, video_maxlen: int) -> list[int]:
    """LLaMA-Factory's `_get_video_sample_indices`: which decoded frames to keep.

    n = min(total_frames, video_maxlen, max(1, floor(duration * video_fps))) frames, evenly
    spaced over the video with np.linspace(0, total_frames - 1, n), truncated to int. An unknown
    frame count (0) gives LF's "first video_maxlen frames"; `load_video` avoids that case when
    the duration and frame rate are known. An unknown duration counts as long enough.
    """
    if total_frames <= 0:
        return np.linspace(0, video_maxlen - 1, video_maxlen).astype(np.int32).tolist()
    wanted = max(1, math.floor(duration * video_fps)) if duration is not None else total_frames
    count = min(total_frames, video_maxlen, wanted)
    return np.linspace(0, total_frames - 1, count).astype(np.int32).tolist()


def _video_from_images(frames: list, opts: MediaOptions) -> Video:
    if not frames:
        raise MediaError("unreadable video", "a video given as a list of frames has no frames")
    images = [_load_image(frame, opts, opts.video_max_pixels, opts.video_min_pixels) for frame in frames]
    fps = float(opts.video_fps)
    return Video(images, fps, len(images) / fps, [i / fps for i in range(len(images))])


def _decode_video(container: Any, name: str, opts: MediaOptions) -> Video:
    stream = next((s for s in container.streams if s.type == "video"), None)
    if stream is None:
        raise MediaError("unreadable video", f"{name}: it has no video track")
    stream.thread_type = "AUTO"  # frame-parallel decoding; the frames are the same
    rate = float(stream.average_rate) if stream.average_rate else None
    if stream.duration is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    else:
        duration = stream.frames / rate if stream.frames and rate else None
    total = stream.frames or (round(duration * rate) if duration and rate else 0)
    indices = sample_indices(total, duration, opts.video_fps, opts.video_maxlen)
    wanted, last = set(indices), max(indices)
    frames, timestamps = [], []
    container.seek(0)
    for index, frame in enumerate(container.decode(stream)):
        if index in wanted:
            frames.append(preprocess_image(frame.to_image(), opts.video_max_pixels, opts.video_min_pixels))
            timestamps.append(index / rate if rate else float(frame.time or 0.0))
        if index >= last:
            break
    if not frames:
        raise MediaError("unreadable video", f"{name}: no frame could be decoded")
    if not duration:
        duration = len(frames) / opts.video_fps  # LF's value when the length is unknown
    return Video(frames, len(frames) / duration, duration, timestamps)


def load_video(source: Any, opts: MediaOptions) -> Video:
    """The frames of a video sampled at `video_fps` (at most `video_maxlen`), decoded by PyAV.

    `source`: what `load_image` takes, as a video file, or a list of images (a video already cut
    into frames, as LLaMA-Factory allows): each is loaded like an image, with the video limits.
    """
    if isinstance(source, (list, tuple)):
        return _video_from_images(list(source), opts)
    av = _import_av("video")
    opened, name = _open_source(source, opts, "video")
    try:
        with av.open(opened, "r") as container:
            return _decode_video(container, name, opts)
    except MediaError:
        raise
    except Exception as error:  # FFmpeg errors, bad containers, frames PIL cannot take  # noqa: BLE001
        raise MediaError("unreadable video", f"{name}: {type(error).__name__}: {error}") from None


# ----------------------------------------------------------------------------------------- audio


def _decode_audio(av: Any, container: Any, name: str, rate: int, silent: str = "unreadable audio") -> np.ndarray:
    stream = next((s for s in container.streams if s.type == "audio"), None)
    if stream is None:
        raise MediaError(silent, f"{name}: it has no audio track")
    # planar float at the target rate, channels kept: averaged below, as LF (torchaudio) does
    resampler = av.AudioResampler(format="fltp", rate=rate)
    chunks = []
    for frame in container.decode(stream):
        frame.pts = None  # the resampler needs no timing; odd timestamps must not stop it
        chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
    chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    if not chunks:
        raise MediaError("unreadable audio", f"{name}: no audio sample could be decoded")
    return np.concatenate(chunks, axis=1).mean(axis=0, dtype=np.float32)


def load_audio(source: Any, opts: MediaOptions, silent: str = "unreadable audio") -> np.ndarray:
    """Mono float32 samples at `opts.audio_sampling_rate`, decoded by PyAV.

    `source`: what `load_image` takes, as any file FFmpeg reads (wav, mp3, flac, ogg, ...) or a
    video file (its first audio track: `use_audio_in_video`); a numpy array is taken as samples
    already at that rate, as LLaMA-Factory takes it. `silent`: the reason of the error for a file
    with no audio track.
    """
    if isinstance(source, np.ndarray):
        return source.astype(np.float32, copy=False)
    av = _import_av("audio")
    opened, name = _open_source(source, opts, "audio")
    try:
        with av.open(opened, "r") as container:
            return _decode_audio(av, container, name, opts.audio_sampling_rate, silent)
    except MediaError:
        raise
    except Exception as error:  # FFmpeg errors, bad containers, a layout change mid-stream  # noqa: BLE001
        raise MediaError("unreadable audio", f"{name}: {type(error).__name__}: {error}") from None


def load_video_sound(source: Any, opts: MediaOptions) -> np.ndarray:
    """A video file's own sound (its first audio track), as `load_audio` reads it, for `use_audio_in_video`.

    A video without one (or one given as a list of frames) is a MediaError "video without sound": the
    omni models number the positions of a heard video from its sound, so such a row cannot train as heard.
    """
    if isinstance(source, (list, tuple)):
        raise MediaError("video without sound", "a video given as a list of frames has no audio track")
    return load_audio(source, opts, silent="video without sound")
