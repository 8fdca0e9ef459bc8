"""Inference with images: the engine expands them as training does and hands `generate` the pixels, the terminal
chat attaches `--image` to the first message, and the OpenAI server takes image parts from data: URLs (local
files and downloads only where allowed, each item under a size limit) through the real `openai` client."""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path

import openai
import pytest

from lathe.config import build_config
from lathe.errors import LatheError
from lathe.infer.api import create_app
from lathe.infer.api_requests import MEDIA_DIRS_ENV, REMOTE_MEDIA_ENV, MediaRules
from lathe.infer.engine import create_engine
from tests.infer.test_api import LiveServer

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT / "data" / "lathe_shapes" / "images"
RED = SHAPES / "red_circle.png"
QUESTION = "What is shown?"


@pytest.fixture(scope="module")
def vlm_dir() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lathe.testing.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm("qwen2_vl")


def vlm_settings(folder: Path) -> dict:
    return {"model_name_or_path": str(folder), "template": "qwen2_vl", "do_sample": False, "max_new_tokens": 3}


@pytest.fixture(scope="module")
def engine(vlm_dir):
    return create_engine(build_config(vlm_settings(vlm_dir), purpose="infer"))


@pytest.fixture
def generate_spy(engine, monkeypatch):
    """Records the keyword arguments of every `model.generate` call, which still runs."""
    calls: list[dict] = []
    real = engine.model.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.model, "generate", spy)
    return calls


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


# ------------------------------------------------------------------ engine


def test_chat_with_an_image_hands_generate_the_pixels_of_the_training_prompt(engine, generate_spy):
    from lathe.data.media.encode import expand_messages

    messages = [{"role": "user", "content": QUESTION}]
    (reply,) = engine.chat(messages, images=[str(RED)])
    assert isinstance(reply.text, str) and reply.completion_tokens > 0
    (kwargs,) = generate_spy
    assert kwargs["pixel_values"].shape[0] > 0 and kwargs["image_grid_thw"].shape == (1, 3)
    assert kwargs["mm_token_type_ids"].shape == kwargs["input_ids"].shape
    # the prompt is the one training builds for the same row: the image at the start of the first user turn
    placed = [{"role": "user", "content": "<image>" + QUESTION}]
    media = {"image": [str(RED)], "video": [], "audio": []}
    expected = engine.template.encode_prompt(engine.tokenizer, expand_messages(placed, media, engine.media))
    assert kwargs["input_ids"][0].tolist() == expected
    assert reply.prompt_tokens == len(expected) == engine.count_prompt_tokens(messages, images=[str(RED)])

    # bytes, data: URLs and PIL images are the same image; streaming takes them too
    from PIL import Image

    for source in (RED.read_bytes(), data_url(RED), Image.open(RED)):
        assert engine.chat(placed, images=[source])[0].text == reply.text
    assert "".join(engine.stream_chat(messages, images=[str(RED)])).strip() == reply.text
    assert generate_spy[-1]["pixel_values"].shape == kwargs["pixel_values"].shape


def test_media_mistakes_are_refused_by_name(engine, tiny_llama):
    with pytest.raises(LatheError, match="1 <image> placeholder.*2 image"):
        engine.chat([{"role": "user", "content": "<image>" + QUESTION}], images=[str(RED), str(RED)])
    with pytest.raises(LatheError, match="does not take audios"):
        engine.chat([{"role": "user", "content": QUESTION}], audios=[b"RIFF"])
    with pytest.raises(LatheError, match="missing media file"):
        engine.chat([{"role": "user", "content": QUESTION}], images=["/no/such.png"])
    with pytest.raises(LatheError, match="list of images"):
        engine.chat([{"role": "user", "content": QUESTION}], images=str(RED))
    text = create_engine(build_config({"model_name_or_path": str(tiny_llama), "template": "chatml",
                                       "max_new_tokens": 2}, purpose="infer"))
    with pytest.raises(LatheError, match="1 image.*text model"):
        text.chat([{"role": "user", "content": QUESTION}], images=[str(RED)])
    assert text.chat([{"role": "user", "content": "<image> is just text here"}])  # no media: plain text
    live = LiveServer(create_app(text))  # the API of a text model: the image part is a 400 naming it
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            live.client(api_key="unused").chat.completions.create(model="m", messages=image_message(data_url(RED)))
    finally:
        live.close()
    assert caught.value.body["param"] == "messages[0].content[0]" and "text model" in caught.value.body["message"]


@pytest.mark.parametrize("backend", ["vllm", "sglang"])
def test_vllm_and_sglang_refuse_media_by_name(backend):
    if backend == "vllm":
        from lathe.infer.vllm_engine import VllmEngine as Engine
    else:
        from lathe.infer.sglang_engine import SglangEngine as Engine
    engine = Engine.__new__(Engine)  # the refusal comes before anything the engine would need
    with pytest.raises(LatheError, match=f"infer_backend {backend} serves text only.*huggingface"):
        engine.chat([{"role": "user", "content": QUESTION}], images=[str(RED)])
    with pytest.raises(LatheError, match=f"infer_backend {backend}"):
        next(engine.stream_chat([{"role": "user", "content": QUESTION}], videos=["v.mp4"]))


# ------------------------------------------------------------------ terminal chat


def test_chat_command_attaches_images_to_the_first_message(vlm_dir, monkeypatch, capsys, engine):
    from lathe.infer import chat_cli
    from lathe.infer import engine as engine_module

    seen: list[dict] = []
    real_stream = engine.stream_chat

    def stream(messages, **kwargs):
        seen.append({"first": messages[0]["content"], **kwargs})
        return real_stream(messages, **kwargs)

    monkeypatch.setattr(engine, "stream_chat", stream)
    monkeypatch.setattr(engine_module, "create_engine", lambda cfg: engine)  # the module's model, loaded once
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\nAnd now?\nclear\nHello\nexit\n"))
    args = [f"{k}={v}" for k, v in vlm_settings(vlm_dir).items()] + ["--image", str(RED), "--image", str(RED)]
    assert chat_cli.chat_main(args) == 0
    out = capsys.readouterr().out
    assert out.count("Assistant: ") == 3 and "Attached to your first message" in out
    assert [len(s.get("images", [])) for s in seen] == [2, 2, 0]  # with the history; `clear` drops them
    assert all(s["first"] == QUESTION for s in seen[:2])  # the engine places them, the history stays as typed
    assert "--image PATH" in chat_cli.chat_parser().format_help()
    with pytest.raises(LatheError, match="--image /no/such.png: missing media file"):
        chat_cli.chat_main(args[:-4] + ["--image", "/no/such.png"])


# ------------------------------------------------------------------ the OpenAI API


@pytest.fixture(scope="module")
def allowed(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    (folder / "red.png").write_bytes(RED.read_bytes())
    return folder


@pytest.fixture(scope="module")
def server(engine, allowed):
    live = LiveServer(create_app(engine, media_rules=MediaRules(dirs=(os.path.realpath(allowed),),
                                                                max_bytes=64 * 1024)))
    yield live
    live.close()


def image_message(url: str, text: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def test_openai_client_sends_an_image_and_gets_an_answer(server, engine, generate_spy, allowed):
    client = server.client(api_key="unused")
    reply = client.chat.completions.create(model="m", messages=image_message(data_url(RED)), max_tokens=3)
    (direct,) = engine.chat([{"role": "user", "content": QUESTION}], images=[str(RED)])
    assert reply.choices[0].message.content == direct.text
    assert reply.usage.prompt_tokens == direct.prompt_tokens  # the image's tokens counted
    assert "pixel_values" in generate_spy[0]
    # a file inside the allowed folder, by path or file:// URL, and a stream
    for url in (str(allowed / "red.png"), (allowed / "red.png").as_uri()):
        again = client.chat.completions.create(model="m", messages=image_message(url), max_tokens=3)
        assert again.choices[0].message.content == direct.text
    chunks = client.chat.completions.create(model="m", messages=image_message(data_url(RED)), max_tokens=3,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == direct.text


@pytest.mark.parametrize("content,param,says", [
    ([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
     "messages[0].content[0].image_url.url", REMOTE_MEDIA_ENV),
    ([{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": str(RED)}}],
     "messages[0].content[1].image_url.url", "outside the folders"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 120_000}}],
     "messages[0].content[0].image_url.url", "at most 0.1 MiB"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}],
     "messages[0].content[0].image_url.url", "base64"),
    ([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}],
     "messages[0].content[0]", "takes image, video"),
], ids=["remote", "outside", "oversize", "bad-base64", "audio"])
def test_media_the_server_refuses_are_400_naming_the_part(server, content, param, says):
    client = server.client(api_key="unused")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}], max_tokens=2)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == param and says in error["message"]


def test_an_image_the_model_cannot_read_and_media_outside_user_turns_are_400(server):
    status, body = server.request("POST", "/v1/chat/completions", {
        "model": "m", "messages": image_message("data:image/png;base64," + base64.b64encode(b"not a png").decode())},
        key=None)
    assert status == 400 and "unreadable image" in body["error"]["message"]
    status, body = server.request("POST", "/v1/chat/completions", {"model": "m", "messages": [
        {"role": "system", "content": [{"type": "image_url", "image_url": {"url": data_url(RED)}}]},
        {"role": "user", "content": "hi"}]}, key=None)
    assert status == 400 and body["error"]["param"] == "messages[0].content[0]"


def test_media_rules_from_the_environment(tmp_path):
    rules = MediaRules.from_env({MEDIA_DIRS_ENV: os.pathsep.join([str(tmp_path), ""]), REMOTE_MEDIA_ENV: "1"})
    assert rules.dirs == (os.path.realpath(tmp_path),) and rules.remote
    assert MediaRules.from_env({}) == MediaRules()
    with pytest.raises(LatheError, match=f"{MEDIA_DIRS_ENV}: .*nowhere is not a folder"):
        MediaRules.from_env({MEDIA_DIRS_ENV: str(tmp_path / "nowhere")})


def test_parts_become_placeholders_where_they_stand_and_downloads_when_allowed(tmp_path):
    import http.server
    import threading

    from lathe.infer.api_requests import APIError, to_prompt
    from lathe.infer.api_schema import ChatCompletionRequest

    png = RED.read_bytes()
    request = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image_url", "image_url": data_url(RED)},
        {"type": "text", "text": "b"}, {"type": "text", "text": "c"},
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]}]})
    prompt = to_prompt(request, ("image", "video"))
    assert prompt.messages[0]["content"] == "a<image>b\nc<video>"
    assert prompt.images == [png] and prompt.videos == [b"\0\0\0"] and prompt.media() == {
        "images": [png], "videos": [b"\0\0\0"]}

    class Files(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = png * (1 if self.path == "/red.png" else 100)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        def ask(url):
            return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}]})

        rules = MediaRules(remote=True, max_bytes=10 * len(png))
        assert to_prompt(ask(f"{base}/red.png"), ("image",), rules).images == [png]
        with pytest.raises(APIError, match="at most") as caught:
            to_prompt(ask(f"{base}/big.png"), ("image",), rules)
        assert caught.value.param == "messages[0].content[0].image_url.url"
    finally:
        httpd.shutdown()
