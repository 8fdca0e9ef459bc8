"""The Chat tab's switches: thinking on/off and skip_special_tokens for the next answer, the backend the
Load button uses, and tool calls / tool results kept as `function` / `observation` turns."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import gradio as gr
import pytest

from lathe.board import chat
from lathe.board.chat import (
    ChatSession,
    build_chat_panel,
    chat_options,
    function_message,
    installed_backends,
    observation_message,
    thinking_template,
    to_messages,
    with_backend,
)
from lathe.board.widgets import Widgets
from lathe.config.load import build_config
from lathe.data.templates.tool_calls import ToolCall
from lathe.errors import LatheError
from lathe.infer.engine import Response

EMPTY_THOUGHT = "<think>\n\n</think>"


def _fn(app, name: str):
    """The handler called `name` (Send and Enter share one)."""
    found = {f.fn for f in app.fns.values() if f.name == name}
    assert len(found) == 1, f"{len(found)} handlers named {name}"
    return found.pop()


@pytest.fixture(scope="module")
def qwen3_session(tiny_llama):
    cfg = build_config({"model_name_or_path": str(tiny_llama), "template": "qwen3", "do_sample": False,
                        "max_new_tokens": 3}, purpose="infer")
    session = ChatSession()
    session.load_config(cfg)
    yield session
    session.unload()


def test_thinking_off_renders_the_empty_think_block_for_one_answer_only(qwen3_session):
    engine = qwen3_session.engine
    template, cfg = engine.template, engine.cfg
    messages = [{"role": "user", "content": "hi"}]

    def prompt() -> str:
        return engine.tokenizer.decode(engine.encode(messages))

    assert EMPTY_THOUGHT not in prompt()
    with chat_options(engine, enable_thinking=False, skip_special_tokens=False):
        assert prompt().rstrip().endswith(EMPTY_THOUGHT)
        assert engine.cfg.generating.skip_special_tokens is False and engine.cfg.model == cfg.model
    assert engine.template is template and engine.cfg is cfg  # given back after the answer
    assert cfg.generating.skip_special_tokens is True
    with chat_options(engine, enable_thinking=True, skip_special_tokens=True):
        assert engine.template is template and engine.cfg is cfg  # nothing to change: the same objects

    seen = []
    real = engine.stream_chat

    def spy(*args, **kwargs):
        seen.append((prompt(), engine.cfg.generating.skip_special_tokens))
        return (yield from real(*args, **kwargs))

    engine.stream_chat = spy
    try:
        pieces = qwen3_session.stream(messages, "", "", {"max_new_tokens": 3}, enable_thinking=False,
                                      skip_special_tokens=False)
        assert all(isinstance(p, str) for p in pieces)
    finally:
        del engine.stream_chat
    assert seen and seen[0][0].rstrip().endswith(EMPTY_THOUGHT) and seen[0][1] is False
    assert engine.template is template and not qwen3_session.answering.locked()


def test_the_tokenizers_own_template_gets_enable_thinking_false_as_a_keyword():
    own = SimpleNamespace(chat_template_kwargs={"date_string": "today"})
    off = thinking_template(own, False)
    assert off.chat_template_kwargs == {"date_string": "today", "enable_thinking": False}
    assert own.chat_template_kwargs == {"date_string": "today"}  # the loaded template is not changed
    assert thinking_template(own, True) is own
    assert thinking_template(off, True).chat_template_kwargs == {"date_string": "today"}
    plain = object()
    assert thinking_template(plain, False) is plain


def test_backends_offered_are_the_installed_ones_and_load_uses_the_one_picked(monkeypatch):
    offered = installed_backends()
    assert offered[0] == "huggingface"
    for name in ("vllm", "sglang"):
        assert (name in offered) == (importlib.util.find_spec(name) is not None)
    cfg = build_config({"model_name_or_path": "org/model"}, purpose="infer")
    assert with_backend(cfg, "") is cfg and with_backend(cfg, "huggingface") is cfg
    monkeypatch.setattr(chat, "installed_backends", lambda: ["huggingface"])
    with pytest.raises(LatheError, match="infer_backend `vllm` is not installed here"):
        with_backend(cfg, "vllm")
    monkeypatch.setattr(chat, "installed_backends", lambda: ["huggingface", "vllm"])
    picked = with_backend(cfg, "vllm")
    assert picked.model.infer_backend == "vllm" and picked.model.model_name_or_path == "org/model"
    assert cfg.model.infer_backend == "huggingface"

    loaded = []
    session = ChatSession()
    monkeypatch.setattr(session, "load_config", lambda c: loaded.append(c) or c.model.model_name_or_path)
    with gr.Blocks() as app:
        model = gr.Textbox("org/model")
        build_chat_panel(Widgets("en"), session,
                         lambda name: build_config({"model_name_or_path": name}, purpose="infer"), [model])
    status = _fn(app, "load")("org/model", "vllm")
    assert "org/model" in status and loaded[-1].model.infer_backend == "vllm"


class FakeEngine:
    """Streams a tool call the first time, then a plain answer; records the conversations it was given."""

    media_kinds = ()

    def __init__(self) -> None:
        self.cfg = build_config({"model_name_or_path": "org/model"}, purpose="infer")
        self.template = SimpleNamespace(parse_tool_calls=lambda text: None)
        self.seen: list[list[dict]] = []

    def stream_chat(self, messages, system="", tools="", **gen):
        self.seen.append(messages)
        if len(self.seen) == 1:
            yield '<tool_call>{"name": "get_weather"'
            yield ', "arguments": {"city": "Paris"}}</tool_call>'
            return Response("...", 5, 9, "stop", [ToolCall("get_weather", '{"city": "Paris"}')])
        yield "It is sunny."
        return Response("It is sunny.", 5, 3, "stop")


def test_a_tool_call_and_its_result_are_kept_as_function_and_observation_turns():
    session = ChatSession()
    session.engine = FakeEngine()
    w = Widgets("en")
    with gr.Blocks() as app:
        parts = build_chat_panel(w, session)
    respond = _fn(app, "respond")
    assert w.components["chat-enable_thinking"].value is True
    assert w.components["chat-skip_special_tokens"].value is True
    tools = '[{"name": "get_weather", "parameters": {"type": "object"}}]'
    sampling = [f.to_widget(f.default) for f in chat.sampling_fields()]

    *_, (history, text, _files, status) = respond([], "Weather in Paris?", None, "user", "", tools, True, True,
                                                  *sampling)
    assert text == "" and status is not None
    call = history[-1]
    assert call["metadata"]["title"] == "🛠️ Tool call: get_weather"
    assert json.loads(to_messages([call])[0]["content"]) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert parts["role"].value == "user"

    *_, (history, *_rest) = respond(history, '{"temperature": 21}', None, "observation", "", tools, True, True,
                                    *sampling)
    assert history[-2]["metadata"]["title"] == "📋 Tool result" and history[-1]["content"] == "It is sunny."
    assert [m["role"] for m in session.engine.seen[-1]] == ["user", "function", "observation"]
    assert session.engine.seen[-1][2]["content"] == '{"temperature": 21}'


def test_tool_blocks_survive_the_chatbots_round_trip():
    box = gr.Chatbot()
    calls = [ToolCall("a", '{"x": 1}'), ToolCall("b", "{}")]
    shown = [{"role": "user", "content": "go"}, function_message(calls, 1, "zh"),
             observation_message("[1, 2]", 2, "ja")]
    assert shown[1]["metadata"]["title"] == "🛠️ 工具调用: a, b"
    back = box.preprocess(type(box.postprocess(shown)).model_validate(box.postprocess(shown).model_dump()))
    turns = to_messages(back)
    assert [m["role"] for m in turns] == ["user", "function", "observation"]
    assert json.loads(turns[1]["content"]) == [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]
    assert turns[2]["content"] == "[1, 2]"
