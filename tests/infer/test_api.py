"""The OpenAI-compatible server, driven by the real `openai` client over real HTTP.

Each server runs in-process (uvicorn in a thread, on a free loopback port). The tiny llama
engine proves the model path end to end; a fake engine (scripted answers, a real lathe
template for parsing tool calls) makes tool calls, history conversion, errors and concurrency
fast and exact.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai
import pytest
import uvicorn

from lathe.data.formats import TOOL_RESPONSE_JOIN
from lathe.data.templates import get_template
from lathe.errors import LatheError
from lathe.infer.api import create_app

KEY = "sk-test-key"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


# ------------------------------------------------------------------ servers


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, app) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the API server did not start"
            time.sleep(0.02)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def client(self, api_key: str = KEY, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=60, **kwargs)

    def request(self, method: str, path: str, body: bytes | dict | None = None, key: str | None = KEY,
                timeout: float = 30) -> tuple[int, dict | str]:
        """Raw HTTP (for bodies the openai client would never send); returns (status, JSON or text)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        try:
            return response.status, json.loads(text)
        except json.JSONDecodeError:
            return response.status, text

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class FakeResponse:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    tool_calls: list | None = None


class FakeEngine:
    """the engine interface with scripted answers: echoes the last turn, or calls `get_weather` when given tools."""

    model_name = "fake-model"
    max_length = 64
    TOOL_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'

    def __init__(self) -> None:
        self.template = get_template("qwen")  # Hermes <tool_call> format: the parser under test is lathe's own
        self.lock = threading.Lock()
        self.calls: list[dict] = []
        self.active = self.max_active = 0
        self.delay = 0.0
        self.entered = threading.Event()
        self.release: threading.Event | None = None  # when set up, chat() waits for it
        self.stream_closed = threading.Event()

    def count_prompt_tokens(self, messages, system="", tools="") -> int:
        return sum(len(m["content"].split()) for m in messages) + len(system.split())

    def _answer(self, messages, tools) -> str:
        last = messages[-1]["content"]
        if last == "crash":
            raise RuntimeError("secret internal detail")
        if last == "refuse":
            raise LatheError("the engine refuses this")
        return self.TOOL_CALL if tools else f"echo {last}"

    def chat(self, messages, system="", tools="", **gen) -> list[FakeResponse]:
        with self.lock:
            self.calls.append({"messages": messages, "system": system, "tools": tools, "gen": gen})
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.entered.set()
            if self.release is not None:
                assert self.release.wait(20)
            time.sleep(self.delay)
            self.active -= 1
        text = self._answer(messages, tools)
        n = gen.get("num_return_sequences", 1)
        prompt = self.count_prompt_tokens(messages, system, tools)
        return [FakeResponse(f"{text} {k}" if n > 1 else text, prompt, len(text.split()), "stop") for k in range(n)]

    def stream_chat(self, messages, system="", tools="", **gen):
        with self.lock:
            self.calls.append({"messages": messages, "system": system, "tools": tools, "gen": gen})
            try:
                if messages[-1]["content"] == "refuse later":
                    yield "partial"
                    raise LatheError("the engine refuses this")
                words = self._answer(messages, tools).split(" ")
                for k, word in enumerate(words):
                    time.sleep(self.delay)
                    yield word if k == 0 else " " + word
            finally:
                self.stream_closed.set()
        return FakeResponse(" ".join(words), 0, len(words), "length")


@pytest.fixture(scope="module")
def fake_server():
    engine = FakeEngine()
    server = LiveServer(create_app(engine, api_key=KEY))
    server.engine = engine
    yield server
    server.close()


@pytest.fixture
def fake(fake_server):
    engine = fake_server.engine
    engine.calls.clear()
    engine.delay, engine.release, engine.max_active = 0.0, None, 0
    engine.entered.clear()
    engine.stream_closed.clear()
    return fake_server


@pytest.fixture(scope="module")
def tiny_server(tiny_llama):
    from lathe.config import build_config
    from lathe.infer.engine import create_engine

    cfg = build_config({"model_name_or_path": str(tiny_llama), "template": "chatml", "do_sample": False,
                        "max_new_tokens": 8}, purpose="infer")
    server = LiveServer(create_app(create_engine(cfg), model_name="tiny"))
    yield server
    server.close()


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------ the tiny model, end to end


def test_models_lists_the_served_name(tiny_server):
    assert [m.id for m in tiny_server.client().models.list().data] == ["tiny"]


def test_plain_completion_reports_usage_and_finish_reason(tiny_server):
    reply = tiny_server.client().chat.completions.create(model="tiny", messages=ask("Hello there"))
    assert reply.model == "tiny" and reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    (choice,) = reply.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_stream_concatenates_to_the_greedy_answer(tiny_server):
    client = tiny_server.client()
    messages = [{"role": "system", "content": "Be brief."}] + ask("Tell me a story")
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_stream_finish_reason_matches_the_whole_answer(tiny_server):
    client = tiny_server.client()
    whole = client.chat.completions.create(model="tiny", messages=ask("Hi"), max_tokens=3)
    chunks = list(client.chat.completions.create(model="tiny", messages=ask("Hi"), max_tokens=3, stream=True))
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"


def test_n_returns_that_many_choices(tiny_server):
    reply = tiny_server.client().chat.completions.create(model="tiny", messages=ask("Hi"), n=2, max_tokens=4)
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(isinstance(c.message.content, str) for c in reply.choices) and reply.usage.completion_tokens > 0


def test_prompt_beyond_the_context_is_a_400(tiny_server):
    with pytest.raises(openai.BadRequestError) as err:
        tiny_server.client().chat.completions.create(model="tiny", messages=ask("word " * 3000))
    assert err.value.status_code == 400
    assert "context is 2048 tokens" in err.value.message and err.value.code == "context_length_exceeded"


# ------------------------------------------------------------------ tool calls and history (fake engine)


def test_tool_call_comes_back_in_openai_shape(fake):
    reply = fake.client().chat.completions.create(model="m", messages=ask("Weather in Paris?"), tools=[WEATHER_TOOL])
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    sent = json.loads(fake.engine.calls[-1]["tools"])
    assert sent == [WEATHER_TOOL["function"]]


def test_without_tools_a_call_shaped_answer_stays_text(fake):
    fake.engine.calls.clear()
    reply = fake.client().chat.completions.create(model="m", messages=ask(FakeEngine.TOOL_CALL))
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.tool_calls is None


def test_streamed_tool_call(fake):
    chunks = list(fake.client().chat.completions.create(model="m", messages=ask("Weather?"), tools=[WEATHER_TOOL],
                                                        stream=True))
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(c.index, c.function.name) for c in calls] == [(0, "get_weather")]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_history_becomes_lathe_turns(fake):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in"},
                                     {"type": "text", "text": "Paris and Rome?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
        {"role": "assistant", "content": "Paris is sunny, Rome rainy."},
        {"role": "user", "content": "Thanks"},
    ]
    fake.client().chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=5, stop="END")
    sent = fake.engine.calls[-1]
    assert sent["system"] == "You are terse."
    assert [m["role"] for m in sent["messages"]] == ["user", "function", "observation", "assistant", "user"]
    assert sent["messages"][0]["content"] == "Weather in\nParis and Rome?"
    assert json.loads(sent["messages"][1]["content"]) == [
        {"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]
    assert sent["messages"][2]["content"] == "sunny" + TOOL_RESPONSE_JOIN + "rain"
    assert sent["gen"] == {"do_sample": False, "max_new_tokens": 5, "stop": ["END"]}


def test_sampling_options_reach_the_engine(fake):
    fake.client().chat.completions.create(model="m", messages=ask("hi"), temperature=0.7, top_p=0.9, n=3)
    assert fake.engine.calls[-1]["gen"] == {"do_sample": True, "temperature": 0.7, "top_p": 0.9,
                                            "num_return_sequences": 3}


# ------------------------------------------------------------------ streaming on the wire


def test_stream_is_sse_chunks_then_done(fake):
    status, text = fake.request("POST", "/v1/chat/completions",
                                {"model": "m", "messages": ask("one two"), "stream": True})
    assert status == 200
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "echo one two"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # the engine's own final Response wins


def test_client_leaving_mid_stream_frees_the_engine(fake):
    fake.engine.delay = 0.05
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    body = {"model": "m", "messages": ask(" ".join(["w"] * 50)), "stream": True}
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    conn.close()  # 50 words x 50 ms would hold the engine for 2.5 s
    assert fake.engine.stream_closed.wait(5)
    fake.engine.delay = 0.0
    started = time.monotonic()
    reply = fake.client().chat.completions.create(model="m", messages=ask("next"))
    assert reply.choices[0].message.content == "echo next"
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------ auth


def test_auth(fake):
    for key in (None, "sk-wrong"):
        status, body = fake.request("GET", "/v1/models", key=key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert body["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        fake.client(api_key="sk-wrong").chat.completions.create(model="m", messages=ask("hi"))
    assert fake.request("GET", "/v1/models")[0] == 200
    assert fake.client().chat.completions.create(model="m", messages=ask("hi")).choices[0].message.content == "echo hi"


# ------------------------------------------------------------------ bad requests


BAD_BODIES = {
    "empty messages": ({"model": "m", "messages": []}, "messages"),
    "unknown role": ({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0]"),
    "messages not a list": ({"model": "m", "messages": "hello"}, "messages"),
    "temperature wrong type": ({"model": "m", "messages": ask("hi"), "temperature": "hot"}, "temperature"),
    "temperature below 0": ({"model": "m", "messages": ask("hi"), "temperature": -1}, "temperature"),
    "n below 1": ({"model": "m", "messages": ask("hi"), "n": 0}, "n"),
    "content wrong type": ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    "ends with assistant": ({"model": "m", "messages": ask("hi") + [{"role": "assistant", "content": "yo"}]},
                            "messages"),
    "starts with assistant": ({"model": "m", "messages": [{"role": "assistant", "content": "yo"}] + ask("hi")},
                              "messages"),
    "image part": ({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, "messages[0].content[0]"),
    "bad call arguments": ({"model": "m", "messages": ask("hi") + [
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                              "function": {"name": "f", "arguments": "{nope"}}]},
        {"role": "tool", "content": "r"}]}, "messages[1].tool_calls[0].function.arguments"),
    "stream with n": ({"model": "m", "messages": ask("hi"), "stream": True, "n": 2}, "n"),
    "forced tool": ({"model": "m", "messages": ask("hi"), "tool_choice": "required"}, "tool_choice"),
    "prompt beyond max_length": ({"model": "m", "messages": ask("w " * 100)}, "messages"),
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_bad_request_is_a_400_in_openai_shape(fake, name):
    body, param = BAD_BODIES[name]
    status, answer = fake.request("POST", "/v1/chat/completions", body)
    assert status == 400, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param
    assert fake.engine.calls == []


def test_union_errors_read_as_alternatives(fake):
    body, _ = BAD_BODIES["content wrong type"]
    message = fake.request("POST", "/v1/chat/completions", body)[1]["error"]["message"]
    assert message == ("Invalid request: messages[0].content: Input should be a valid string, "
                       "or Input should be a valid list.")


def test_malformed_json_is_a_400(fake):
    status, answer = fake.request("POST", "/v1/chat/completions", b'{"model": "m", "messages": [')
    assert status == 400 and answer["error"]["code"] == "invalid_json"
    assert "not valid JSON" in answer["error"]["message"]


def test_unknown_role_names_the_roles(fake):
    with pytest.raises(openai.BadRequestError) as err:
        fake.client().chat.completions.create(model="m", messages=[{"role": "wizard", "content": "hi"}])
    assert "'user'" in err.value.message and "wizard" in err.value.message


def test_engine_crash_is_a_500_without_the_trace(fake):
    status, answer = fake.request("POST", "/v1/chat/completions", {"model": "m", "messages": ask("crash")})
    assert status == 500 and answer["error"]["type"] == "server_error"
    assert "secret" not in json.dumps(answer) and "Traceback" not in json.dumps(answer)


def test_lathe_error_from_the_engine_is_a_400_with_its_message(fake):
    with pytest.raises(openai.BadRequestError, match="the engine refuses this"):
        fake.client().chat.completions.create(model="m", messages=ask("refuse"))


def test_error_after_the_stream_began_reaches_the_client(fake):
    stream = fake.client().chat.completions.create(model="m", messages=ask("refuse later"), stream=True)
    with pytest.raises(openai.APIError, match="the engine refuses this"):
        list(stream)
    assert fake.engine.stream_closed.is_set()


def test_unknown_route_is_a_404_in_openai_shape(fake):
    status, answer = fake.request("GET", "/v1/nothing")
    assert status == 404 and answer["error"]["code"] == "not_found"


# ------------------------------------------------------------------ concurrency


def test_32_concurrent_requests_are_all_answered_one_generation_at_a_time(fake):
    fake.engine.delay = 0.005
    client = fake.client()

    def one(k: int) -> str:
        return client.chat.completions.create(model="m", messages=ask(f"request {k}")).choices[0].message.content

    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(one, k) for k in range(32)]
        answers = [f.result(timeout=60) for f in futures]
    assert answers == [f"echo request {k}" for k in range(32)]
    assert fake.engine.max_active == 1


def test_server_answers_while_generation_runs(fake):
    fake.engine.release = threading.Event()
    client = fake.client()
    with ThreadPoolExecutor(max_workers=3) as pool:
        busy = [pool.submit(client.chat.completions.create, model="m", messages=ask(f"slow {k}")) for k in range(3)]
        assert fake.engine.entered.wait(10)
        started = time.monotonic()
        assert [m.id for m in client.models.list().data] == ["fake-model"]
        assert time.monotonic() - started < 2
        assert not any(f.done() for f in busy)
        fake.engine.release.set()
        answers = sorted(f.result(timeout=20).choices[0].message.content for f in busy)
        assert answers == [f"echo slow {k}" for k in range(3)]
