"""Templates written from LLaMA-Factory's definitions (templates_published.yaml), pinned by exact text.

No vendor chat template is at hand for these, so each expected string below is derived by hand from
LLaMA-Factory's `register_template(...)` for the name (src/llamafactory/data/template.py): its
prefix, system, user and assistant slots for the two-turn conversation with system prompt "S"
(bos "<s>", eos "</s>"), without the text its assistant slot writes after the final answer (lathe
renders nothing there; see docs/templates.md). Reasoning templates get a thought in each answer,
spelled with the template's thought words. The learned spans are lathe's (answer + end token; for
efficient_eos the next turn's role token, and eos after the last answer). Documented departures
from LLaMA-Factory's text: `llama2_zh` and `xuanyuan` write a space before the answer (the models'
published formats do, and LLaMA-Factory's separate tokenization of the answer adds SentencePiece's
"▁" there); `phi_small` writes the `<|endoftext|>` prefix LLaMA-Factory names but drops at runtime.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from transformers import AutoTokenizer

from lathe.data.templates import get_template, list_templates, to_openai_messages
from tests.conftest import SHARED

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "src" / "lathe" / "data" / "templates" / "templates_published.yaml"
TOKENS = SimpleNamespace(bos_token="<s>", eos_token="</s>")
THOUGHT = {"mimo_v2": ("<think>", "</think>"), "aeva": ("<think>", "</think>")}  # others: LF's default words
DEFAULT_THOUGHT = ("<think>\n", "\n</think>\n\n")

CHATML = ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
          "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>")
CHATML_THINK = CHATML.replace("assistant\nA1", "assistant\n<think>\nT1\n</think>\n\nA1").replace(
    "assistant\nA2", "assistant\n<think>\nT2\n</think>\n\nA2")
IM_END = ["A1<|im_end|>", "A2<|im_end|>"]
IM_END_THINK = ["<think>\nT1\n</think>\n\nA1<|im_end|>", "<think>\nT2\n</think>\n\nA2<|im_end|>"]
HY = "<｜hy_place▁holder▁no▁{}｜>".format

# name -> (text of the two turns with system "S", the learned spans)
PUBLISHED_EXPECTED = {
    "cpm4": ("<s>" + CHATML, IM_END),
    "dbrx": (CHATML, IM_END),
    "falcon_h1": ("<s>" + CHATML, IM_END),
    "intern_s1": ("<s>" + CHATML, IM_END),
    "sailor": ("<|im_start|>system\nS<|im_end|>\n<|im_start|>question\nQ1<|im_end|>\n<|im_start|>answer\nA1<|im_end|>\n"
               "<|im_start|>question\nQ2<|im_end|>\n<|im_start|>answer\nA2<|im_end|>", IM_END),
    "ernie": ("<|im_start|>system\nS<|im_end|>\n\n<|im_start|>user\nQ1<|im_end|>\n\n<|im_start|>assistant\nA1<|im_end|>\n\n"
              "<|im_start|>user\nQ2<|im_end|>\n\n<|im_start|>assistant\nA2<|im_end|>", IM_END),
    "mimo": (CHATML_THINK, IM_END_THINK),
    "mimo_v2": (CHATML.replace("assistant\nA1", "assistant\n<think>T1</think>A1").replace(
        "assistant\nA2", "assistant\n<think>T2</think>A2"), ["<think>T1</think>A1<|im_end|>", "<think>T2</think>A2<|im_end|>"]),
    "qwen3_6": (CHATML_THINK, IM_END_THINK),
    "moonlight": ("<|im_system|>system<|im_middle|>S<|im_end|><|im_user|>user<|im_middle|>Q1<|im_end|>"
                  "<|im_assistant|>assistant<|im_middle|>A1<|im_end|><|im_user|>user<|im_middle|>Q2<|im_end|>"
                  "<|im_assistant|>assistant<|im_middle|>A2<|im_end|>", IM_END),
    "minimax1": ("<beginning_of_sentence>system ai_setting=assistant\nS<end_of_sentence>\n"
                 "<beginning_of_sentence>user name=user\nQ1<end_of_sentence>\n<beginning_of_sentence>ai name=assistant\n"
                 "A1<end_of_sentence>\n<beginning_of_sentence>user name=user\nQ2<end_of_sentence>\n"
                 "<beginning_of_sentence>ai name=assistant\nA2<end_of_sentence>",
                 ["A1<end_of_sentence>", "A2<end_of_sentence>"]),
    "phi_small": ("<|endoftext|><|system|>\nS<|end|>\n<|user|>\nQ1<|end|>\n<|assistant|>\nA1<|end|>\n"
                  "<|user|>\nQ2<|end|>\n<|assistant|>\nA2<|end|>", ["A1<|end|>", "A2<|end|>"]),
    # as lathe's vendor-checked gemma4 in its default thinking mode: <|think|> opens the system turn, as
    # LLaMA-Factory's gemma4/gemma4n write it (they always do; lathe drops it with enable_thinking: false)
    "gemma4n": ("<s><|turn>system\n<|think|>S<turn|>\n<|turn>user\nQ1<turn|>\n<|turn>model\nA1<turn|>\n<|turn>user\n"
                "Q2<turn|>\n<|turn>model\nA2<turn|>", ["A1<turn|>", "A2<turn|>"]),
    "gemma3n": ("<s><start_of_turn>user\nS\n\nQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
                "<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\nA2<end_of_turn>",
                ["A1<end_of_turn>", "A2<end_of_turn>"]),
    "ernie_nothink": ("<|begin_of_sentence|>S\nUser: Q1\nAssistant: A1<|end_of_sentence|>User: Q2\nAssistant: A2"
                      "<|end_of_sentence|>", [" A1<|end_of_sentence|>", " A2<|end_of_sentence|>"]),
    "hunyuan": ("<|startoftext|>S<|extra_4|>Q1<|extra_0|>A1<|eos|>Q2<|extra_0|>A2<|eos|>", ["A1<|eos|>", "A2<|eos|>"]),
    "hunyuan_small": ("<｜hy_begin▁of▁sentence｜>S" + HY(3) + "<｜hy_User｜>Q1" + HY(8) + "A1" + HY(2)
                      + "<｜hy_User｜>Q2" + HY(8) + "A2" + HY(2), ["A1" + HY(2), "A2" + HY(2)]),
    "seed_coder": ("<s>system\nS</s><s>user\nQ1</s><s>assistant\nA1</s><s>user\nQ2</s><s>assistant\nA2</s>",
                   ["A1</s>", "A2</s>"]),
    "telechat2": ("<_system>S<_user>Q1<_bot>A1</s><_user>Q2<_bot>A2</s>", ["A1</s>", "A2</s>"]),
    "yuan": ("SQ1<sep>A1<eod>\nQ2<sep>A2<eod>", ["A1<eod>", "A2<eod>"]),
    "youtu": ("<s>S<|User|>Q1<|Assistant|><think>\nT1\n</think>\n\nA1<|end_of_text|><|User|>Q2<|Assistant|>"
              "<think>\nT2\n</think>\n\nA2<|end_of_text|>",
              ["<think>\nT1\n</think>\n\nA1<|end_of_text|>", "<think>\nT2\n</think>\n\nA2<|end_of_text|>"]),
    "llama2_zh": ("<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nQ1 [/INST] A1</s><s>[INST] Q2 [/INST] A2</s>", [" A1</s>", " A2</s>"]),
    "xuanyuan": ("SHuman: Q1 Assistant: A1</s>Human: Q2 Assistant: A2</s>", [" A1</s>", " A2</s>"]),
    # efficient_eos: no end token between turns; eos after the last answer
    "breeze": ("<s>S[INST] Q1 [/INST] A1[INST] Q2 [/INST] A2</s>", [" A1", " A2</s>"]),
    "index": ("<unk>Sreserved_0Q1reserved_1A1reserved_0Q2reserved_1A2</s>", ["A1reserved_0", "A2</s>"]),
    "bailing": ("<role>SYSTEM</role>S<role>HUMAN</role>Q1<role>ASSISTANT</role>A1<role>HUMAN</role>Q2"
                "<role>ASSISTANT</role>A2</s>", ["A1<role>", "A2</s>"]),
    # eos after every answer where LLaMA-Factory's efficient_eos writes none between turns (see its description)
    "hy_dense_7b": ("<s>S<|extra_4|>Q1<|extra_0|>A1</s>Q2<|extra_0|>A2</s>", ["A1</s>", "A2</s>"]),
    "hy_dense_1_8b": ("<s>S" + HY(3) + "<｜hy_User｜>Q1<｜hy_Assistant｜>A1<｜hy_User｜>Q2<｜hy_Assistant｜>A2</s>",
                      ["A1<｜hy_User｜>", "A2</s>"]),
    "glmz1": ("[gMASK]<sop><|system|>\nS<|user|>\nQ1<|assistant|>\n<think>\nT1\n</think>\n\nA1<|user|>\nQ2<|assistant|>"
              "\n<think>\nT2\n</think>\n\nA2</s>",
              ["\n<think>\nT1\n</think>\n\nA1<|user|>", "\n<think>\nT2\n</think>\n\nA2</s>"]),
    "aeva": ("[gMASK]<sop><|system|>\nS<|user|>\nQ1<|assistant|>\n<think>T1</think>A1<|user|>\nQ2<|assistant|>"
             "\n<think>T2</think>A2</s>", ["\n<think>T1</think>A1<|user|>", "\n<think>T2</think>A2</s>"]),
}
PUBLISHED_CHECKED = set(PUBLISHED_EXPECTED)
# For the catalog test's global sets: which of these are efficient_eos / have a thinking mode.
PUBLISHED_EFFICIENT = {"breeze", "index", "bailing", "hy_dense_1_8b", "glmz1", "aeva"}
PUBLISHED_THINKING = {"mimo", "mimo_v2", "qwen3_6", "youtu", "glmz1", "aeva"}
PUBLISHED_EMPTY_THOUGHT = PUBLISHED_THINKING | {"gemma4n"}  # gemma4n: gemma4's, thoughts kept in history
# LLaMA-Factory's default system prompts (short ones in full; the long ones by their opening).
DEFAULT_SYSTEMS = {
    "dbrx": "You are DBRX, created by Databricks. You were last updated in December 2023.",
    "sailor": "You are an AI assistant named Sailor created by Sea AI Lab.",
    "ernie": "<global_setting>\nthink_mode=True\n</global_setting>",
    "mimo": "You are a helpful assistant.",
    "mimo_v2": "You are MiMo, a helpful AI assistant engineered by Xiaomi.",
    "moonlight": "You are a helpful assistant provided by Moonshot-AI.",
    "minimax1": "You are a helpful assistant.",
    "seed_coder": "You are an AI programming assistant, utilizing the Seed-Coder model, developed by ByteDance Seed,",
    "telechat2": "你是中国电信星辰语义大模型，英文名是TeleChat",
    "llama2_zh": "You are a helpful assistant. 你是一个乐于助人的助手。",
    "xuanyuan": "以下是用户和人工智能助手之间的对话。",
    "aeva": "You are an AI assistant named Aeva created by Zongzhi Lou.",
}


def conversation(name: str) -> list[dict]:
    start, end = THOUGHT.get(name, DEFAULT_THOUGHT) if name in PUBLISHED_THINKING else ("", "")
    a1, a2 = (f"{start}T1{end}A1", f"{start}T2{end}A2") if start else ("A1", "A2")
    return [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": a1},
            {"role": "user", "content": "Q2"}, {"role": "assistant", "content": a2}]


def test_every_published_entry_is_pinned_and_marked_unverified():
    entries = yaml.safe_load(PUBLISHED.read_text(encoding="utf-8"))
    for name in entries:
        assert "unverified" in get_template(name).slots.description, name
    # the multimodal entries (a `media:` slot) are pinned in test_templates_catalog.py (MULTIMODAL_MEDIA, SAME_TEXT)
    entries = {name: entry for name, entry in entries.items() if "media" not in entry or name in PUBLISHED_CHECKED}
    assert set(entries) == PUBLISHED_CHECKED
    assert PUBLISHED_CHECKED <= set(list_templates())
    for name in entries:
        tpl = get_template(name)
        assert tpl.efficient_eos == (name in PUBLISHED_EFFICIENT), name
        assert bool(tpl.slots.empty_thought) == (name in PUBLISHED_EMPTY_THOUGHT), name
        assert tpl.reasoning == (name in PUBLISHED_THINKING), name


@pytest.mark.parametrize("name", sorted(PUBLISHED_EXPECTED))
def test_exact_text_and_learned_spans(name):
    text, learned = PUBLISHED_EXPECTED[name]
    rendering = get_template(name).render(TOKENS, conversation(name), system="S")
    assert rendering.text == text
    assert [rendering.text[s:e] for s, e in rendering.answer_spans] == learned


@pytest.mark.parametrize("name, opening", sorted(DEFAULT_SYSTEMS.items()))
def test_default_system_prompts(name, opening):
    tpl = get_template(name)
    assert tpl.slots.default_system.startswith(opening)
    assert opening in tpl.render_prompt(TOKENS, conversation(name)[:1])
    assert opening not in tpl.render_prompt(TOKENS, conversation(name)[:1], system="Mine.")


def test_templates_without_a_default_system_prompt_write_none():
    no_default = PUBLISHED_CHECKED - set(DEFAULT_SYSTEMS)
    assert {n for n in no_default if get_template(n).slots.default_system} == set()
    assert get_template("cpm4").render_prompt(TOKENS, conversation("cpm4")[:1]) == (
        "<s><|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n")


# The generation prompt after two turns: earlier thoughts dropped (LLaMA-Factory's remove_thought:
# the thought words and the newlines after them), and with enable_thinking false the empty thought.
PROMPTS = {
    "mimo": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n"
             "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n",
             "<think>\n\n</think>\n\n"),
    "mimo_v2": ("<|im_start|>system\nYou are MiMo, a helpful AI assistant engineered by Xiaomi.<|im_end|>\n"
                "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
                "<|im_start|>assistant\n", "<think></think>"),
    "youtu": ("<s><|User|>Q1<|Assistant|>A1<|end_of_text|><|User|>Q2<|Assistant|>", "<think>\n\n</think>\n\n"),
    "glmz1": ("[gMASK]<sop><|user|>\nQ1<|assistant|>\nA1<|user|>\nQ2<|assistant|>", "<think>\n\n</think>\n\n"),
    "aeva": ("[gMASK]<sop><|system|>\nYou are an AI assistant named Aeva created by Zongzhi Lou. Your answer should be "
             "friendly, unbiased, faithful, informative and detailed.<|user|>\nQ1<|assistant|>\nA1<|user|>\nQ2"
             "<|assistant|>", "</think>"),
}


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_reasoning_prompts_drop_earlier_thoughts_and_switch_thinking_off(name):
    prompt, empty = PROMPTS[name]
    tpl = get_template(name)
    assert tpl.render_prompt(TOKENS, conversation(name)[:3]) == prompt
    # Thinking off: the empty thought ends the prompt and (unlearned) precedes each earlier answer
    # without thoughts, as lathe writes it for every answer a model generated after one.
    first = "\nA1" if name in ("glmz1", "aeva") else "A1"  # the first answer slot as rendered
    off = prompt.replace(first, empty + first, 1) + empty
    assert tpl.with_options(enable_thinking=False).render_prompt(TOKENS, conversation(name)[:3]) == off
    # preserve_thinking keeps the earlier thought where the prompt shows it.
    kept = tpl.with_options(preserve_thinking=True).render_prompt(TOKENS, conversation(name)[:3])
    assert conversation(name)[1]["content"] in kept


def test_aeva_thinking_off_writes_only_the_closing_tag_before_answers():
    """GLM-4.7-style: the empty thought is `</think>` alone, unlearned, before each answer without thoughts."""
    plain = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]
    rendering = get_template("aeva").with_options(enable_thinking=False).render(TOKENS, plain, system="S")
    assert rendering.text == "[gMASK]<sop><|system|>\nS<|user|>\nQ1<|assistant|></think>\nA1</s>"
    assert [rendering.text[s:e] for s, e in rendering.answer_spans] == ["\nA1</s>"]


@pytest.fixture(scope="module")
def mistral():
    """Renders jinja with bos "<s>" and eos "</s>", the tokens the expected strings use."""
    path = SHARED / "tokenizers" / "mistral-7b-instruct-v0.3"
    if not path.is_dir():
        pytest.skip(f"real tokenizers not found at {path}")
    return AutoTokenizer.from_pretrained(str(path))


@pytest.mark.parametrize("name", sorted(PUBLISHED_EXPECTED))
def test_jinja_export_renders_the_same_text(mistral, name):
    """The exported chat template (what a saved tokenizer carries) writes the pinned text, and lathe's prompt."""
    tpl = get_template(name)
    jinja = tpl.to_jinja()
    messages = conversation(name)
    for system in ("S", ""):
        got = mistral.apply_chat_template(to_openai_messages(messages, system), tokenize=False, chat_template=jinja)
        want = PUBLISHED_EXPECTED[name][0] if system else tpl.render(TOKENS, messages).text
        assert got == want
        prompt = mistral.apply_chat_template(to_openai_messages(messages[:3], system), tokenize=False,
                                             chat_template=jinja, add_generation_prompt=True)
        assert prompt == tpl.render_prompt(TOKENS, messages[:3], system=system)


def test_tool_turns_follow_llama_factorys_slots(mistral):
    """Tool results: in a tool turn (cpm4), a user turn (intern_s1), <tool_response> (youtu); youtu's calls have no end token."""
    agent = [{"role": "user", "content": "Q"}, {"role": "function", "content": json.dumps({"name": "f", "arguments": {}})},
             {"role": "observation", "content": "R"}, {"role": "assistant", "content": "A"}]
    text = get_template("cpm4").render(TOKENS, agent).text
    assert "<|im_start|>tool\nR<|im_end|>\n<|im_start|>assistant\nA<|im_end|>" in text
    text = get_template("intern_s1").render(TOKENS, agent).text
    assert "<|im_start|>user\nR<|im_end|>\n<|im_start|>assistant\nA<|im_end|>" in text
    rendering = get_template("youtu").render(TOKENS, agent)
    assert rendering.text == ('<s><|User|>Q<|Assistant|>{"name": "f", "arguments": {}}'
                              "<tool_response>\nR\n</tool_response><|Assistant|>A<|end_of_text|>")
    assert [rendering.text[s:e] for s, e in rendering.answer_spans] == ['{"name": "f", "arguments": {}}', "A<|end_of_text|>"]
