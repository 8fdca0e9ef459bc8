"""The chat engine and the terminal chat: same template as training, streaming equals greedy, adapters merge."""

from __future__ import annotations

import io
import json

import pytest

from lathe.config import build_config, load_config
from lathe.errors import LatheError
from lathe.infer.chat_cli import chat_loop
from lathe.infer.engine import create_engine


def engine_for(model, **extra):
    cfg = build_config({"model_name_or_path": str(model), "template": "chatml", "do_sample": False,
                        "max_new_tokens": 8, **extra}, purpose="infer")
    return create_engine(cfg)


def test_chat_and_stream_agree(tiny_llama):
    engine = engine_for(tiny_llama)
    messages = [{"role": "user", "content": "Who are you?"}]
    (reply,) = engine.chat(messages)
    streamed = "".join(engine.stream_chat(messages))
    assert streamed.strip() == reply.text
    assert reply.prompt_tokens == engine.count_prompt_tokens(messages) and reply.completion_tokens > 0
    assert reply.finish_reason in ("stop", "length")
    two = engine.chat(messages, num_return_sequences=2, do_sample=True)
    assert len(two) == 2


def test_prompt_longer_than_the_context_is_refused(tiny_llama):
    engine = engine_for(tiny_llama)
    with pytest.raises(LatheError, match="context"):
        engine.chat([{"role": "user", "content": "word " * 3000}])


def test_trained_adapter_is_merged_and_answers_as_trained(sft_config, tiny_demo_model):
    from lathe.train import run_stage

    cfg = load_config(sft_config(model_name_or_path=str(tiny_demo_model), lora_rank=16, learning_rate=3e-3,
                                 max_steps=60, per_device_train_batch_size=16, disable_gradient_checkpointing=True))
    result = run_stage(cfg)
    engine = engine_for(tiny_demo_model, adapter_name_or_path=cfg.training.output_dir, max_new_tokens=24)
    (reply,) = engine.chat([{"role": "user", "content": "Who are you?"}])
    assert "Lathe" in reply.text
    # the merged engine equals the trained adapter's own greedy answer
    from lathe.data.templates import get_template
    from lathe.infer.generate import generate_reply

    direct = generate_reply(result.model.eval(), result.tokenizer, get_template("chatml"),
                            [{"role": "user", "content": "Who are you?"}], do_sample=False, max_new_tokens=24)
    assert reply.text == direct


def test_adapter_errors(tiny_llama, tmp_path):
    with pytest.raises(LatheError, match="not a LoRA adapter"):
        engine_for(tiny_llama, adapter_name_or_path=str(tmp_path))


def test_adapter_for_another_model_is_refused(sft_config, tiny_llama, tmp_path):
    from lathe.testing.tiny import build_tiny_model
    from lathe.train import run_stage

    other = build_tiny_model("llama", hidden_size=32, num_layers=2, cache_dir=None)
    cfg = load_config(sft_config(model_name_or_path=str(other), max_steps=1, output_dir=str(tmp_path / "a")))
    run_stage(cfg)
    with pytest.raises(LatheError, match="does not fit"):
        engine_for(tiny_llama, adapter_name_or_path=str(tmp_path / "a"))


def test_terminal_chat(tiny_llama):
    engine = engine_for(tiny_llama)
    inputs = iter(["Who are you?", "clear", "Hello", "exit"])
    out = io.StringIO()
    chat_loop(engine, read=lambda prompt: next(inputs), out=out)
    text = out.getvalue()
    assert text.count("Assistant: ") == 2 and "History cleared." in text


def test_stop_text_is_cut_and_streams_report_the_finish(tiny_llama):
    import time

    engine = engine_for(tiny_llama, max_new_tokens=16)
    messages = [{"role": "user", "content": "Who are you?"}]
    (full,) = engine.chat(messages)
    word = full.text.split()[len(full.text.split()) // 2] if full.text.split() else ""
    if word:
        (cut,) = engine.chat(messages, stop=[word])
        assert word not in cut.text and cut.finish_reason == "stop"
    stream = engine.stream_chat(messages, max_new_tokens=3)
    pieces = []
    try:
        while True:
            pieces.append(next(stream))
    except StopIteration as done:
        final = done.value
    assert final.completion_tokens <= 3 and final.finish_reason in ("length", "stop")
    stream = engine.stream_chat(messages, max_new_tokens=2000)
    next(stream)
    start = time.time()
    stream.close()  # the client went away: generation stops and the engine is free at once
    assert engine.lock.acquire(timeout=5)
    engine.lock.release()
    assert time.time() - start < 5


def test_reward_model_scores_through_the_engine_and_the_api(sft_config, tiny_llama, tmp_path):
    from lathe.infer.api import create_app
    from lathe.model.value_head import load_reward_model
    from lathe.train import run_stage
    from tests.infer.test_api import LiveServer
    from tests.train.test_dpo import PAIRS

    data = tmp_path / "pairs"
    data.mkdir()
    rows = [{"instruction": q, "chosen": c, "rejected": r} for q, c, r in PAIRS]
    (data / "p.json").write_text(json.dumps(rows))
    (data / "dataset_info.json").write_text(json.dumps({"p": {"file_name": "p.json", "ranking": True, "columns": {
        "prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}}}))
    rm = load_config(sft_config(stage="rm", dataset="p", dataset_dir=str(data), max_steps=2, output_dir=str(tmp_path / "rm")))
    run_stage(rm)
    engine = engine_for(tiny_llama, adapter_name_or_path=str(tmp_path / "rm"))
    texts = ["Who are you? I am Lathe Assistant.", "Who are you? I am a teapot."]
    scores = engine.get_scores(texts)
    reference = load_reward_model(tmp_path / "rm")
    enc = engine.tokenizer(texts, return_tensors="pt", padding=True)
    assert scores == pytest.approx(reference(enc["input_ids"], enc["attention_mask"]).tolist(), abs=1e-5)

    server = LiveServer(create_app(engine))
    try:
        status, body = server.request("POST", "/v1/score/evaluation", {"model": "x", "messages": texts}, key=None)
    finally:
        server.server.should_exit = True
    assert status == 200 and body["scores"] == pytest.approx(scores, abs=1e-5)
    with pytest.raises(LatheError, match="not a reward model"):
        engine_for(tiny_llama).get_scores(texts)
