"""infer_backend: the registry, the refusals, and vLLM/SGLang wiring against stand-in packages.

vLLM and SGLang need CUDA, so these tests put small stand-ins for their Python APIs on
`sys.modules`: they check what lathe hands the engines (lathe's own token ids, stop ids,
sampling, LoRA request, engine arguments) and that answers end by the same rules as the
huggingface backend. The GPU check script runs the real packages where they exist.
"""

from __future__ import annotations

import io
import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from lathe.config import build_config
from lathe.errors import LatheError
from lathe.infer.chat_cli import chat_loop, read_tools
from lathe.infer.engine import Response, create_engine

ANSWER = "I am lathe."


def pretend_installed(monkeypatch, *packages: str) -> None:
    """find_spec says `packages` are installed (and only those: other libraries probe it too)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a, **k: object() if name in packages else real(name, *a, **k))


def cfg_for(model, **extra):
    return build_config({"model_name_or_path": str(model), "template": "chatml", "do_sample": False,
                         "max_new_tokens": 8, **extra}, purpose="infer")


def scripted_ids(model) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    return tok.encode(ANSWER, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]


def test_missing_backend_package_is_refused_by_name(tiny_llama, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a, **k: None if name == "vllm" else real(name, *a, **k))
    with pytest.raises(LatheError, match="needs the `vllm` package"):
        create_engine(cfg_for(tiny_llama, infer_backend="vllm"))
    with pytest.raises(LatheError, match="must be one of|choose one of|infer_backend"):
        cfg_for(tiny_llama, infer_backend="llamacpp")


@pytest.fixture
def fake_vllm(monkeypatch):
    calls: dict = {"requests": []}

    @dataclass
    class SamplingParams:
        n: int = 1
        temperature: float = 1.0
        top_p: float = 1.0
        top_k: int = -1
        repetition_penalty: float = 1.0
        max_tokens: int = 16
        stop_token_ids: list = field(default_factory=list)
        skip_special_tokens: bool = True

    class EngineArgs:
        def __init__(self, **kwargs):
            calls["engine_args"] = kwargs

    class LLMEngine:
        script: list[int] = []

        @classmethod
        def from_engine_args(cls, args):
            return cls()

        def __init__(self):
            self.pending = {}

        def add_request(self, request_id, prompt, params, lora_request=None):
            calls["requests"].append((prompt["prompt_token_ids"], params, lora_request))
            self.pending[request_id] = [0, params]

        def has_unfinished_requests(self):
            return bool(self.pending)

        def abort_request(self, ids):
            for i in ids:
                self.pending.pop(i, None)

        def step(self):
            out = []
            for rid, state in list(self.pending.items()):
                state[0] += 1  # one more token per step, cumulative like vLLM's default output
                tokens = self.script[: state[0]]
                done = state[0] >= len(self.script) or tokens[-1] in state[1].stop_token_ids
                seqs = [types.SimpleNamespace(token_ids=list(tokens)) for _ in range(state[1].n)]
                out.append(types.SimpleNamespace(request_id=rid, outputs=seqs, finished=done))
                if done:
                    del self.pending[rid]
            return out

    class LoRARequest:
        def __init__(self, name, int_id, path):
            self.name, self.int_id, self.path = name, int_id, path

    vllm = types.ModuleType("vllm")
    vllm.SamplingParams, vllm.EngineArgs, vllm.LLMEngine = SamplingParams, EngineArgs, LLMEngine
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    pretend_installed(monkeypatch, "vllm")
    return LLMEngine, calls


def test_vllm_backend_gets_lathes_prompt_and_ends_answers_the_same_way(tiny_llama, fake_vllm, tmp_path):
    LLMEngine, calls = fake_vllm
    LLMEngine.script = scripted_ids(tiny_llama)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    engine = create_engine(cfg_for(tiny_llama, infer_backend="vllm", adapter_name_or_path=str(adapter),
                                   infer_dtype="bfloat16", vllm_maxlen=512, vllm_config='{"seed": 3}'))
    assert engine.backend == "vllm" and engine.max_length == 512
    args = calls["engine_args"]
    assert args["enable_lora"] and args["dtype"] == "bfloat16" and args["max_model_len"] == 512 and args["seed"] == 3
    messages = [{"role": "user", "content": "Who are you?"}]
    (reply,) = engine.chat(messages)
    assert reply.text == ANSWER and reply.finish_reason == "stop"
    prompt, params, lora = calls["requests"][-1]
    assert prompt == engine.encode(messages)  # lathe's template, not vLLM's
    assert params.temperature == 0.0 and params.max_tokens == 8 and set(engine.stop_ids) <= set(params.stop_token_ids)
    assert lora.path == str(adapter)
    assert "".join(engine.stream_chat(messages)) == ANSWER
    (cut,) = engine.chat(messages, stop=["lathe"])
    assert cut.text == "I am" and cut.finish_reason == "stop"
    with pytest.raises(LatheError, match="reward"):
        engine.get_scores(["x"])


def test_vllm_refusals_come_before_the_engine_starts(tiny_llama, fake_vllm, tmp_path):
    with pytest.raises(LatheError, match="quantization_bit"):
        create_engine(cfg_for(tiny_llama, infer_backend="vllm", quantization_bit=4))
    with pytest.raises(LatheError, match="beam"):
        create_engine(cfg_for(tiny_llama, infer_backend="vllm", num_beams=2))
    with pytest.raises(LatheError, match="one LoRA adapter"):
        create_engine(cfg_for(tiny_llama, infer_backend="vllm", adapter_name_or_path="a,b"))
    with pytest.raises(LatheError, match="vllm_config"):
        create_engine(cfg_for(tiny_llama, infer_backend="vllm", vllm_config="{not json"))


def test_sglang_backend(tiny_llama, monkeypatch):
    script = scripted_ids(tiny_llama)
    seen: dict = {}

    class Engine:
        def __init__(self, **kwargs):
            seen["args"] = kwargs

        def generate(self, input_ids, sampling_params, stream, **extra):
            seen["request"] = (input_ids, sampling_params, extra)
            if not stream:
                return {"text": ANSWER, "output_ids": script, "meta_info": {}}
            return iter([{"output_ids": script[:k]} for k in range(1, len(script) + 1)])

    sglang = types.ModuleType("sglang")
    sglang.Engine = Engine
    monkeypatch.setitem(sys.modules, "sglang", sglang)
    pretend_installed(monkeypatch, "sglang")
    engine = create_engine(cfg_for(tiny_llama, infer_backend="sglang", sglang_tp_size=1, sglang_maxlen=256))
    assert seen["args"]["tp_size"] == 1 and seen["args"]["context_length"] == 256
    messages = [{"role": "user", "content": "Who are you?"}]
    (reply,) = engine.chat(messages)
    assert reply.text == ANSWER and seen["request"][0] == engine.encode(messages)
    assert seen["request"][1]["max_new_tokens"] == 8
    assert "".join(engine.stream_chat(messages)) == ANSWER


def test_infer_dtype_and_kv_cache(tiny_llama):
    engine = create_engine(cfg_for(tiny_llama, infer_dtype="bfloat16", use_kv_cache=False))
    assert engine.model.dtype == torch.bfloat16
    assert engine._kwargs({}, 4)["use_cache"] is False
    (reply,) = engine.chat([{"role": "user", "content": "Hi"}])
    assert reply.completion_tokens > 0


class ToolEngine:
    model_name = "stub"

    def stream_chat(self, messages, system="", tools=""):
        from lathe.data.templates.tool_calls import ToolCall

        self.seen = (system, tools)
        yield "calling"
        return Response("calling", 3, 1, "tool_calls", [ToolCall("get_weather", '{"city": "Oslo"}')])


def test_terminal_chat_offers_tools_and_shows_calls(tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text('[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]')
    engine, out = ToolEngine(), io.StringIO()
    inputs = iter(["Weather in Oslo?", "exit"])
    chat_loop(engine, read=lambda p: next(inputs), out=out, system="Be brief.", tools=read_tools(str(tools)))
    assert '[tool call] get_weather({"city": "Oslo"})' in out.getvalue()
    assert engine.seen[0] == "Be brief." and "get_weather" in engine.seen[1]
    with pytest.raises(LatheError, match="no such file"):
        read_tools(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(LatheError, match="list of tool definitions"):
        read_tools(str(tmp_path / "bad.json"))
