"""The catalog of registered templates: exact text per template, masks, efficient_eos, thinking, options.

Templates without a public tokenizer here are pinned by their exact rendering of one two-turn
conversation (strings checked by hand against each model's published chat template; see
docs/templates.md for the parity table). Token-level invariants are checked for every template
on a real byte-level BPE vocabulary.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoTokenizer

from lathe.data.formats import TOOL_RESPONSE_JOIN
from lathe.data.templates import (
    Slots,
    TokenizerTemplate,
    get_template,
    list_templates,
    resolve_template,
)
from lathe.errors import LatheError
from tests.conftest import SHARED
from tests.data.test_templates_glm import GLM_CHECKED
from tests.data.test_templates_gpt_oss import GPT_OSS_CHECKED
from tests.data.test_templates_hy3 import HY3_CHECKED
from tests.data.test_templates_published import (
    PUBLISHED_CHECKED,
    PUBLISHED_EFFICIENT,
    PUBLISHED_EMPTY_THOUGHT,
)
from tests.data.test_templates_vendor import VENDOR_CHECKED

ROOT = Path(__file__).resolve().parents[2]
TOKENIZERS = SHARED / "tokenizers"
TOKENS = SimpleNamespace(bos_token="<s>", eos_token="</s>")
TWO_TURNS = [
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "Q2"},
    {"role": "assistant", "content": "A2"},
]
REQUIRED = (
    "default empty alpaca vicuna chatml qwen qwen3 qwen3_nothink llama2 llama3 llama4 mistral ministral mistral_small "
    "gemma gemma2 gemma3 phi phi4 deepseek deepseek3 deepseekr1 glm4 chatglm3 yi baichuan2 intern2 zephyr openchat "
    "cohere falcon starchat solar olmo smollm smollm2 granite granite3 exaone llava fewshot"
).split()
# LLaMA-Factory's template names (src/llamafactory/data/template.py at its main of 2026-08-18), text ones:
LLAMA_FACTORY_TEXT = (
    "aeva alpaca bailing bailing_v2 breeze chatglm3 chatml chatml_de cohere cpm4 dbrx deepseek deepseek3 "
    "deepseekcoder deepseekr1 default empty ernie ernie_nothink exaone falcon falcon_h1 fewshot gemma gemma2 gemma3 "
    "gemma3n gemma4 gemma4n glm4 glm4_7 glm4_moe glmz1 gpt_oss granite3 granite4 hunyuan hunyuan_small hy3 "
    "hy_dense_1_8b hy_dense_7b index intern2 intern_s1 lfm2 llama2 llama2_zh llama3 llama4 mimo mimo_v2 minimax1 "
    "minimax2 ministral mistral mistral_small moonlight olmo openchat openchat-3.6 opencoder phi phi4 phi4_mini "
    "phi_small qwen qwen3 qwen3_5 qwen3_5_nothink qwen3_6 qwen3_nothink sailor seed_coder seed_oss smollm smollm2 "
    "solar starchat telechat2 vicuna xuanyuan yi youtu yuan zephyr"
).split()
# ... and the multimodal ones (an mm_plugin other than the base one): registered with lathe's media plugin where
# lathe has one (MULTIMODAL_MEDIA), refused by name otherwise.
LLAMA_FACTORY_MULTIMODAL = (
    "dots_ocr ernie_vl glm4_5v glm4v glm_ocr granite3_vision intern_vl keye_vl kimi_vl lfm2_vl llava llava_next "
    "llava_next_llama3 llava_next_mistral llava_next_qwen llava_next_video llava_next_video_mistral "
    "llava_next_video_yi llava_next_yi mimo_vl minicpm_o minicpm_v minicpm_v_4_6 ministral3 mllama moss_vl "
    "paligemma paligemma_chat pixtral qwen2_audio qwen2_omni qwen2_vl qwen3_omni qwen3_omni_nothink qwen3_vl "
    "qwen3_vl_nothink video_llava yi_vl youtu_vl"
).split()
# LLaMA-Factory's multimodal templates lathe registers (templates_published.yaml, or templates.yaml for the Qwen
# families): name -> the media plugin it names. Their text is pinned through SAME_TEXT / EXPECTED below.
MULTIMODAL_MEDIA = {
    "qwen2_vl": "qwen2_vl", "qwen3_vl": "qwen3_vl", "qwen3_vl_nothink": "qwen3_vl",
    "qwen2_audio": "qwen2_audio", "qwen2_omni": "qwen2_omni", "qwen3_omni": "qwen3_omni",
    "qwen3_omni_nothink": "qwen3_omni",
    "llava_next": "llava_next", "llava_next_llama3": "llava_next", "llava_next_mistral": "llava_next",
    "llava_next_qwen": "llava_next", "llava_next_yi": "llava_next", "llava_next_video": "llava_next_video",
    "llava_next_video_mistral": "llava_next_video", "llava_next_video_yi": "llava_next_video",
    "pixtral": "pixtral", "ministral3": "pixtral", "intern_vl": "intern_vl", "glm4v": "glm4v", "glm4_5v": "glm4v",
    "mllama": "mllama", "paligemma": "paligemma", "paligemma_chat": "paligemma",
}
# Those written from LLaMA-Factory's definitions (templates_published.yaml): "unverified" in docs/templates.md.
MULTIMODAL_PUBLISHED = set(MULTIMODAL_MEDIA) - {"qwen2_vl", "qwen3_vl", "qwen3_vl_nothink", "qwen2_audio",
                                                "qwen2_omni", "qwen3_omni", "qwen3_omni_nothink"}
CHATML = (
    "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
    "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>"
)
GEMMA = (
    "<s><start_of_turn>user\nS\n\nQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
    "<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\nA2<end_of_turn>"
)
LLAMA3_OPENCHAT = (
    "<s><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>GPT4 Correct User<|end_header_id|>"
    "\n\nQ1<|eot_id|><|start_header_id|>GPT4 Correct Assistant<|end_header_id|>\n\nA1<|eot_id|>"
    "<|start_header_id|>GPT4 Correct User<|end_header_id|>\n\nQ2<|eot_id|>"
    "<|start_header_id|>GPT4 Correct Assistant<|end_header_id|>\n\nA2<|eot_id|>"
)

# name -> the text of TWO_TURNS with system "S" (bos "<s>", eos "</s>"), and the two learned spans.
EXPECTED = {
    "alpaca": ("S\n\n### Instruction:\nQ1\n\n### Response:\nA1</s>\n\n### Instruction:\nQ2\n\n### Response:\nA2</s>",
               ["A1</s>", "A2</s>"]),
    "baichuan2": ("S<reserved_106>Q1<reserved_107>A1<reserved_106>Q2<reserved_107>A2</s>", ["A1<reserved_106>", "A2</s>"]),
    "chatglm3": ("[gMASK]sop<|system|>\nS<|user|>\nQ1<|assistant|>\nA1<|user|>\nQ2<|assistant|>\nA2</s>",
                 ["\nA1<|user|>", "\nA2</s>"]),
    "chatml": (CHATML, ["A1<|im_end|>", "A2<|im_end|>"]),
    "intern2": ("<s>" + CHATML, ["A1<|im_end|>", "A2<|im_end|>"]),
    "intern_vl": ("<s>" + CHATML, ["A1<|im_end|>", "A2<|im_end|>"]),
    "lfm2": ("<s>" + CHATML, ["A1<|im_end|>", "A2<|im_end|>"]),
    "cohere": ("<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>S<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Q1"
               "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>A1<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
               "<|USER_TOKEN|>Q2<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>A2<|END_OF_TURN_TOKEN|>",
               ["A1<|END_OF_TURN_TOKEN|>", "A2<|END_OF_TURN_TOKEN|>"]),
    "deepseek": ("<s>S\n\nUser: Q1\n\nAssistant: A1</s>User: Q2\n\nAssistant: A2</s>", [" A1</s>", " A2</s>"]),
    "deepseek3": ("<s>S<｜User｜>Q1<｜Assistant｜>A1</s><｜User｜>Q2<｜Assistant｜>A2</s>", ["A1</s>", "A2</s>"]),
    "deepseekcoder": ("<s>S\n### Instruction:\nQ1\n### Response:\nA1\n<|EOT|>\n### Instruction:\nQ2\n### Response:\nA2\n<|EOT|>",
                      ["A1\n<|EOT|>", "A2\n<|EOT|>"]),
    "default": ("System: S\nHuman: Q1\nAssistant: A1</s>\nHuman: Q2\nAssistant: A2</s>", [" A1</s>", " A2</s>"]),
    "empty": ("SQ1A1</s>Q2A2</s>", ["A1</s>", "A2</s>"]),
    "exaone": ("[|system|]S[|endofturn|]\n[|user|]Q1\n[|assistant|]A1[|endofturn|]\n[|user|]Q2\n[|assistant|]A2[|endofturn|]",
               ["A1[|endofturn|]", "A2[|endofturn|]"]),
    "falcon": ("System: S\nUser: Q1\nFalcon: A1</s>\nUser: Q2\nFalcon: A2</s>", [" A1</s>", " A2</s>"]),
    "fewshot": ("SQ1A1\n\nQ2A2\n\n</s>", ["A1\n\n", "A2\n\n</s>"]),
    "gemma": (GEMMA, ["A1<end_of_turn>", "A2<end_of_turn>"]),
    "glm4": ("[gMASK]<sop><|system|>\nS<|user|>\nQ1<|assistant|>\nA1<|user|>\nQ2<|assistant|>\nA2</s>",
             ["\nA1<|user|>", "\nA2</s>"]),
    "granite3": ("<|start_of_role|>system<|end_of_role|>S<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>Q1<|end_of_text|>"
                 "\n<|start_of_role|>assistant<|end_of_role|>A1<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>Q2"
                 "<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>A2<|end_of_text|>",
                 ["A1<|end_of_text|>", "A2<|end_of_text|>"]),
    "llama2": ("<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST] A2 </s>", [" A1 </s>", " A2 </s>"]),
    "llama4": ("<s><|header_start|>system<|header_end|>\n\nS<|eot|><|header_start|>user<|header_end|>\n\nQ1<|eot|>"
               "<|header_start|>assistant<|header_end|>\n\nA1<|eot|><|header_start|>user<|header_end|>\n\nQ2<|eot|>"
               "<|header_start|>assistant<|header_end|>\n\nA2<|eot|>", ["A1<|eot|>", "A2<|eot|>"]),
    "ministral": ("<s>[INST]S\n\nQ1[/INST]A1</s>[INST]Q2[/INST]A2</s>", ["A1</s>", "A2</s>"]),
    "mistral_small": ("<s>[SYSTEM_PROMPT]S[/SYSTEM_PROMPT][INST]Q1[/INST]A1</s>[INST]Q2[/INST]A2</s>", ["A1</s>", "A2</s>"]),
    "olmo": ("</s><|system|>\nS\n<|user|>\nQ1\n<|assistant|>\nA1</s>\n<|user|>\nQ2\n<|assistant|>\nA2</s>", ["A1</s>", "A2</s>"]),
    "openchat": ("<s>GPT4 Correct System: S<|end_of_turn|>GPT4 Correct User: Q1<|end_of_turn|>GPT4 Correct Assistant: A1"
                 "<|end_of_turn|>GPT4 Correct User: Q2<|end_of_turn|>GPT4 Correct Assistant: A2<|end_of_turn|>",
                 [" A1<|end_of_turn|>", " A2<|end_of_turn|>"]),
    "openchat-3.6": (LLAMA3_OPENCHAT, ["A1<|eot_id|>", "A2<|eot_id|>"]),
    "paligemma": ("<s>SQ1\nA1</s>Q2\nA2</s>", ["A1</s>", "A2</s>"]),  # the images go before <s> (media plugin)
    "paligemma_chat": (("<s><start_of_turn>user\nSQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
                        "<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\nA2<end_of_turn>"),
                       ["A1<end_of_turn>", "A2<end_of_turn>"]),
    "phi": ("<|system|>\nS<|end|>\n<|user|>\nQ1<|end|>\n<|assistant|>\nA1<|end|>\n<|user|>\nQ2<|end|>\n<|assistant|>\nA2<|end|>",
            ["A1<|end|>", "A2<|end|>"]),
    "phi4": ("<|im_start|>system<|im_sep|>S<|im_end|><|im_start|>user<|im_sep|>Q1<|im_end|><|im_start|>assistant<|im_sep|>"
             "A1<|im_end|><|im_start|>user<|im_sep|>Q2<|im_end|><|im_start|>assistant<|im_sep|>A2<|im_end|>",
             ["A1<|im_end|>", "A2<|im_end|>"]),
    "phi4_mini": ("<|system|>S<|end|><|user|>Q1<|end|><|assistant|>A1<|end|><|user|>Q2<|end|><|assistant|>A2<|end|>",
                  ["A1<|end|>", "A2<|end|>"]),
    "solar": ("### System:\nS\n\n### User:\nQ1\n\n### Assistant:\nA1</s>### User:\nQ2\n\n### Assistant:\nA2</s>",
              ["A1</s>", "A2</s>"]),
    "starchat": ("<|system|>\nS<|end|>\n<|user|>\nQ1<|end|>\n<|assistant|>\nA1<|end|>\n<|user|>\nQ2<|end|>\n<|assistant|>\nA2"
                 "<|end|>", ["A1<|end|>", "A2<|end|>"]),
    "vicuna": ("<s>S USER: Q1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>", [" A1</s>", " A2</s>"]),
    "zephyr": ("<|system|>\nS</s>\n<|user|>\nQ1</s>\n<|assistant|>\nA1</s>\n<|user|>\nQ2</s>\n<|assistant|>\nA2</s>",
               ["A1</s>", "A2</s>"]),
}
SAME_TEXT = {  # templates that render TWO_TURNS with a given system prompt exactly as another
    "chatml": ["chatml_de", "qwen", "qwen2_5", "qwen3", "qwen3_nothink", "yi", "smollm", "smollm2", "opencoder",
               "qwen2_vl", "qwen3_vl", "qwen3_vl_nothink", "llava_next_qwen", "llava_next_yi", "llava_next_video_yi",
               "qwen2_audio", "qwen2_omni", "qwen3_omni", "qwen3_omni_nothink"],
    "gemma": ["gemma2", "gemma3"],
    "granite3": ["granite"],
    "vicuna": ["llava", "llava_next", "llava_next_video"],
    "deepseek3": ["deepseekr1"],
    # LLaMA-Factory's multimodal templates whose text is a text template's (their slots are the same)
    "llama3": ["llava_next_llama3", "mllama"],
    "mistral": ["llava_next_mistral", "llava_next_video_mistral"],
    "ministral": ["pixtral", "ministral3"],
    "glmz1": ["glm4v"],
    "glm4_moe": ["glm4_5v"],
}
DEFAULT_SYSTEMS = {
    "alpaca": "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "qwen": "You are a helpful assistant.",
    "qwen2_5": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "smollm2": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "llava_next": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
                  "detailed, and polite answers to the user's questions.",
    "llava_next_qwen": "You are a helpful assistant.",
    "intern_vl": "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
    "vicuna": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.",
}
EFFICIENT = {"glm4", "chatglm3", "baichuan2", "fewshot", "glm4_moe", "glm4_7", "glm4v", "glm4_5v"}


def load(folder: str):
    path = TOKENIZERS / folder
    if not path.is_dir():
        pytest.skip(f"real tokenizers not found at {path}")
    return AutoTokenizer.from_pretrained(str(path))


def flat(pairs) -> list[int]:
    return [i for prompt, answer in pairs for i in prompt + answer]


# --- the catalog ------------------------------------------------------------------------------------


def test_catalog_covers_the_model_families():
    names = list_templates()
    pinned = (set(EXPECTED) | {n for others in SAME_TEXT.values() for n in others} | {"llama3", "mistral"}
              | VENDOR_CHECKED | GLM_CHECKED | GPT_OSS_CHECKED | HY3_CHECKED | PUBLISHED_CHECKED)  # + parity tests
    assert set(names) <= pinned, f"no exact-text check for {sorted(set(names) - pinned)}"
    assert len(names) >= 40
    assert set(REQUIRED) <= set(names)
    for name in names:
        tpl = get_template(name)
        assert tpl.slots.description, f"{name} has no description"
        assert tpl.efficient_eos == (name in EFFICIENT | PUBLISHED_EFFICIENT)
    assert {name for name in names if get_template(name).slots.empty_thought} == (
        {"qwen3", "qwen3_5", "gemma4", "glm4_moe", "glm4_7", "bailing_v2", "qwen3_vl", "qwen3_omni", "glm4v",
         "glm4_5v"}
        | PUBLISHED_EMPTY_THOUGHT)
    assert get_template("deepseekr1").slots.thoughts_in_history == "drop"


def test_every_llama_factory_template_name_loads_or_is_refused_as_multimodal():
    assert len(LLAMA_FACTORY_TEXT) + len(LLAMA_FACTORY_MULTIMODAL) == 124
    missing = [name for name in LLAMA_FACTORY_TEXT if name not in list_templates()]
    assert not missing, f"LLaMA-Factory text templates lathe lacks: {missing}"
    for name in LLAMA_FACTORY_MULTIMODAL:
        if name in list_templates():  # llava: its text part is Vicuna's
            continue
        with pytest.raises(LatheError, match=f"Template `{name}` is a multimodal one"):
            get_template(name)


def test_multimodal_templates_name_their_media_plugin():
    from lathe.data.media.plugins import MEDIA_PLUGINS

    media = {name: get_template(name).media for name in list_templates() if get_template(name).media}
    # llava, gemma3, llama4 and mistral_small (text templates of templates.yaml) may name theirs too, and gemma3n
    # (listed with the text templates above, as lathe first registered its text only)
    assert set(MULTIMODAL_MEDIA) <= set(media) <= set(MULTIMODAL_MEDIA) | {"llava", "gemma3", "llama4", "mistral_small",
                                                                        "gemma3n"}
    for name, plugin in media.items():
        assert plugin in MEDIA_PLUGINS and MULTIMODAL_MEDIA.get(name, plugin) == plugin, name
    assert set(MULTIMODAL_MEDIA) <= set(LLAMA_FACTORY_MULTIMODAL)
    # GLM-4.1V / 4.5V end an answer at </answer> too (LLaMA-Factory's stop words)
    assert "</answer>" in get_template("glm4v").stop_words and "</answer>" in get_template("glm4_5v").stop_words


def test_docs_say_how_each_template_is_verified():
    """The table's last column: parity only where a parity test exists; unverified exactly for the
    templates written from LLaMA-Factory's definitions."""
    docs = (ROOT / "docs" / "templates.md").read_text(encoding="utf-8")
    docs = docs[docs.index("| name | family | tool format"):]
    docs = docs[: docs.index("\n\n")]  # the registered-templates table
    status = dict(re.findall(r"^\| `([\w.-]+)` \|.*\| ([a-z ]+(?: \(as `\w+`\))?) \|$", docs, flags=re.MULTILINE))
    assert set(list_templates()) <= set(status)
    parity_tested = (VENDOR_CHECKED | GLM_CHECKED | GPT_OSS_CHECKED | HY3_CHECKED
                     | {"qwen", "qwen3", "llama3", "mistral", "gemma", "gemma2", "gemma3", "deepseekr1"})
    for name in list_templates():
        verified = status[name]
        assert verified.split(" (")[0] in ("token parity", "text parity", "published format", "unverified"), name
        assert (verified == "unverified") == (name in PUBLISHED_CHECKED | MULTIMODAL_PUBLISHED), name
        if verified in ("token parity", "text parity"):
            assert name in parity_tested, f"{name} is marked {verified} without a parity test"
        if "(as `" in verified:
            base = verified.split("`")[1]
            groups = [{key, *others} for key, others in SAME_TEXT.items()]
            assert base in parity_tested and any({name, base} <= group for group in groups), name


def test_docs_list_every_template():
    docs = (ROOT / "docs" / "templates.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([\w.-]+)` \|", docs, flags=re.MULTILINE))
    assert set(list_templates()) <= listed, f"undocumented: {sorted(set(list_templates()) - listed)}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_text_and_learned_spans(name):
    text, learned = EXPECTED[name]
    rendering = get_template(name).render(TOKENS, TWO_TURNS, system="S")
    assert rendering.text == text
    assert [rendering.text[s:e] for s, e in rendering.answer_spans] == learned


@pytest.mark.parametrize("base, others", sorted(SAME_TEXT.items()))
def test_family_members_share_the_text(base, others):
    for name in others:
        assert get_template(name).render(TOKENS, TWO_TURNS, system="S") == get_template(base).render(
            TOKENS, TWO_TURNS, system="S"
        ), name


@pytest.mark.parametrize("name, system", sorted(DEFAULT_SYSTEMS.items()))
def test_default_system_prompts(name, system):
    tpl = get_template(name)
    assert tpl.slots.default_system == system
    assert system in tpl.render_prompt(TOKENS, TWO_TURNS[:1])
    assert system not in tpl.render_prompt(TOKENS, TWO_TURNS[:1], system="Mine.")


@pytest.fixture(scope="module", params=["qwen2-instruct-boundless", "mistral-7b-instruct-v0.3"])
def vocab(request):
    """A byte-level BPE (Qwen2) and a SentencePiece (Mistral) vocabulary, with every template's special tokens."""
    tokenizer = load(request.param)
    slots = [get_template(name).slots for name in list_templates()]
    vocab = tokenizer.get_vocab()
    missing = sorted({t for s in slots for t in s.special_tokens + s.stop_words} - set(vocab))
    tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tokenizer


AGENT = [
    {"role": "user", "content": "Add 3 and 4."},
    {"role": "function", "content": json.dumps({"name": "add", "arguments": {"a": 3, "b": 4}})},
    {"role": "observation", "content": '{"result": 7}' + TOOL_RESPONSE_JOIN + '{"note": "exact"}'},
    {"role": "assistant", "content": "It is seven."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You are welcome."},
]
TOOLS = json.dumps([{"name": "add", "description": "Add", "parameters": {"type": "object"}}])


@pytest.mark.parametrize("name", list_templates())
def test_every_template_masks_exactly_on_a_real_vocabulary(vocab, name):
    """Ids are the tokenizer's ids of the rendered text; each answer (tool calls too) is learned with
    its end token and nothing of the prompt (no token straddles a prompt/answer seam); no prompt
    holds answer text; tool results are never learned."""
    tok = vocab
    tpl = get_template(name)
    rendering = tpl.render(tok, AGENT, system="Be exact.", tools=TOOLS)
    pairs = tpl.encode(tok, AGENT, system="Be exact.", tools=TOOLS)
    assert flat(pairs) == tok(rendering.text, add_special_tokens=False)["input_ids"]
    learned = [tok.decode(answer) for _, answer in pairs]
    # No token straddles a prompt/answer seam: learned tokens start inside their span and end inside it.
    offsets = tok(rendering.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    position = 0
    for (prompt, answer), (start, end) in zip(pairs, rendering.answer_spans):
        position += len(prompt)
        assert start <= offsets[position][0] and offsets[position + len(answer) - 1][1] <= end
        position += len(answer)
    if "qwen2" in tok.name_or_path:  # byte-level BPE decodes to exactly the learned text
        assert learned == [rendering.text[s:e] for s, e in rendering.answer_spans]
    assert "add" in learned[0] and "It is seven." in learned[1] and "You are welcome." in learned[2]
    assert not any("result" in text for text in learned)
    for prompt, _ in pairs:
        assert not any(a in tok.decode(prompt) for a in ("It is seven.", "You are welcome."))
    prompt = tpl.encode_prompt(tok, AGENT[:5], system="Be exact.", tools=TOOLS)
    assert prompt == flat(pairs)[: len(prompt)]  # inference sees what training saw


# --- efficient_eos ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["glm4", "chatglm3", "baichuan2"])
def test_efficient_eos_learns_the_next_role_token_and_a_final_eos(vocab, name):
    tpl = get_template(name)
    pairs = tpl.encode(vocab, AGENT, tools=TOOLS)
    enders = [vocab.convert_ids_to_tokens(answer[-1]) for _, answer in pairs]
    if name == "baichuan2":
        assert enders == ["<reserved_106>", "<reserved_106>", vocab.eos_token]  # observations are user turns here
    else:
        assert enders == ["<|observation|>", "<|user|>", vocab.eos_token]
    assert all(word in tpl.stop_words for word in enders[:-1])  # what is learned is what generation stops at
    # The role token is learned once: it is not repeated at the start of the next prompt.
    assert vocab.convert_ids_to_tokens(pairs[1][0][0]) != enders[0]


def test_efficient_eos_needs_the_stop_word_right_after_the_answer():
    with pytest.raises(LatheError, match="`user` slot to start with one of its stop words"):
        Slots(name="x", user="User: {content}", assistant="{content}", stop_words=("<|user|>",), efficient_eos=True)
    with pytest.raises(LatheError, match="assistant_suffix must be empty"):
        Slots(name="x", user="<|user|>{content}", assistant_suffix="\n", stop_words=("<|user|>",), efficient_eos=True)


# --- thinking ---------------------------------------------------------------------------------------

EMPTY = "<think>\n\n</think>\n\n"
PLAIN = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}]
MIXED = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nSimple.\n</think>\n\n2+2 equals 4."},
]


@pytest.fixture(scope="module")
def qwen3():
    return load("qwen3-4b-thinking-2507-assembled")


def test_qwen3_without_thinking_matches_the_models_empty_think_block(qwen3):
    """enable_thinking=False: the empty think block goes before an answer without thoughts, unlearned.
    Qwen3's template writes exactly that block before the last answer, so one turn matches token for token."""
    tpl = resolve_template("qwen3", qwen3, enable_thinking=False)
    pairs = tpl.encode(qwen3, PLAIN)
    out = qwen3.apply_chat_template(PLAIN, tokenize=True)
    reference = list(out["input_ids"] if hasattr(out, "keys") else out)
    assert reference[: len(flat(pairs))] == flat(pairs)
    assert qwen3.decode(pairs[0][0]).endswith("<|im_start|>assistant\n" + EMPTY)
    assert qwen3.decode(pairs[0][1]) == "2+2 equals 4.<|im_end|>"
    # The generation prompt ends with the block, as hybrid Qwen3's template writes it with enable_thinking=False.
    assert tpl.render_prompt(qwen3, PLAIN[:1]) == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n" + EMPTY


def test_thinking_options_in_multi_turn():
    on, off = get_template("qwen3"), get_template("qwen3").with_options(enable_thinking=False)
    assert EMPTY not in on.render(TOKENS, MIXED).text
    rendering = off.render(TOKENS, MIXED)
    # Every answer without thoughts gets the block in its prompt; written thoughts stay as they are.
    assert rendering.text.count(EMPTY) == 1 and f"assistant\n{EMPTY}Hello!" in rendering.text
    assert [rendering.text[s:e] for s, e in rendering.answer_spans] == [
        "Hello!<|im_end|>", "<think>\nSimple.\n</think>\n\n2+2 equals 4.<|im_end|>"
    ]
    # A template without a thinking mode ignores the option.
    assert resolve_template("llama3", TOKENS, enable_thinking=False) is get_template("llama3")


def test_tokenizer_template_gets_enable_thinking(qwen3):
    tpl = resolve_template(None, qwen3, enable_thinking=False, default_system="Be brief.", tool_format="qwen")
    assert isinstance(tpl, TokenizerTemplate)
    assert tpl.chat_template_kwargs == {"enable_thinking": False}
    assert tpl.tool_format.name == "qwen" and tpl.efficient_eos is False
    assert "Be brief." in tpl.render_prompt(qwen3, PLAIN[:1])
    assert resolve_template(None, qwen3).tool_format.name == "qwen"  # recognised from <tool_call> in the template


def render_r1(messages, add_generation_prompt=False) -> str:
    path = TOKENIZERS / "deepseek-r1-distill-qwen-32b-TEMPLATE-ONLY" / "tokenizer_config.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    template = json.loads(path.read_text())["chat_template"]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=messages, bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>",
        add_generation_prompt=add_generation_prompt,
    )


def test_deepseekr1_drops_earlier_thoughts_like_r1s_template():
    history = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "<think>\nA greeting.\n</think>\n\nHello!"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
    ]
    tpl = get_template("deepseekr1")
    system = [{"role": "system", "content": "S"}]
    tokens = SimpleNamespace(bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>")  # R1 writes eos literally
    assert tpl.render(tokens, history, system="S").text == render_r1(system + history)
    assert tpl.render_prompt(tokens, history[:3], system="S") == render_r1(system + history[:3], add_generation_prompt=True)
    # The last answer keeps its thoughts (R1's template drops them there too; lathe trains them).
    last = history[:3] + [{"role": "assistant", "content": "<think>\nSum.\n</think>\n\n4."}]
    rendering = tpl.render(TOKENS, last)
    assert rendering.text[rendering.answer_spans[-1][0]:] == "<think>\nSum.\n</think>\n\n4.</s>"
    assert "A greeting." not in rendering.text
    with pytest.raises(LatheError, match="thoughts_in_history"):
        Slots(name="x", thoughts_in_history="hide")


# --- options ----------------------------------------------------------------------------------------


def test_resolve_template_options(caplog):
    assert resolve_template("qwen", TOKENS) is get_template("qwen")  # old calls: the registered object
    tpl = resolve_template("qwen", TOKENS, default_system="You are Lathe.")
    assert tpl.name == "qwen" and tpl.slots.default_system == "You are Lathe."
    assert "You are Lathe." in tpl.render_prompt(TOKENS, TWO_TURNS[:1])
    assert get_template("qwen").slots.default_system == "You are a helpful assistant."  # the registry is untouched
    assert "system" not in resolve_template("qwen", TOKENS, default_system="").render_prompt(TOKENS, TWO_TURNS[:1])
    assert resolve_template("mistral", TOKENS, tool_format="qwen").tool_format.name == "qwen"
    with caplog.at_level(logging.INFO, logger="lathe.data.templates"):
        resolve_template("gemma", TOKENS, enable_thinking=False)
    assert "no thinking mode" in caplog.text
