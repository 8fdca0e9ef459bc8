"""The trained template travels with the model: `to_jinja` renders what lathe trained on.

Every registered template is exported to jinja and rendered by `transformers`' own
`apply_chat_template` (the path vLLM, TGI and the Hub use), and the text must equal lathe's:
training conversations (lathe renders nothing after the final answer, and neither does the
export), generation prompts, system prompts and defaults, tools, tool calls and results, and the
thinking options.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from lathe.data.formats import TOOL_RESPONSE_JOIN
from lathe.data.templates import TokenizerTemplate, get_template, list_templates, resolve_template, to_openai_messages
from tests.conftest import SHARED

TOKENIZERS = SHARED / "tokenizers"

TOOLS = [
    {"name": "add", "description": 'Add "two" numbers', "parameters": {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer"}}}},
    {"type": "function", "function": {"name": "now", "description": "The time", "parameters": {}}},
]
CHAT = [
    {"role": "user", "content": "Hi there {content} {{ x }}"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nSimple.\n</think>\n\n2+2 equals 4."},
]
AGENT = [
    {"role": "user", "content": "Add 3 and 4, and tell me the time."},
    {"role": "function", "content": json.dumps([{"name": "add", "arguments": {"a": 3, "b": 4}},
                                                {"name": "now", "arguments": {}}])},
    {"role": "observation", "content": '{"result": 7}' + TOOL_RESPONSE_JOIN + '"12:00"'},
    {"role": "assistant", "content": "7; it is noon. 你好"},
]
CASES = [(CHAT, "", ""), (CHAT, "You are terse.", ""), (AGENT, "Use tools.", json.dumps(TOOLS)), (AGENT, "", json.dumps(TOOLS))]


def load(folder: str):
    path = TOKENIZERS / folder
    if not path.is_dir():
        pytest.skip(f"real tokenizers not found at {path}")
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def mistral():
    """Any tokenizer renders jinja; this one has distinct bos (<s>) and eos (</s>)."""
    return load("mistral-7b-instruct-v0.3")


def jinja_text(tokenizer, template: str, messages, system="", tools="", **kwargs) -> str:
    return tokenizer.apply_chat_template(
        to_openai_messages(messages, system),
        tools=json.loads(tools) if tools else None,
        tokenize=False,
        chat_template=template,
        **kwargs,
    )


@pytest.mark.parametrize("name", list_templates())
def test_every_template_exports_to_matching_jinja(mistral, name):
    variants = [get_template(name)]
    if get_template(name).slots.empty_thought:
        variants.append(get_template(name).with_options(enable_thinking=False))
    for tpl in variants:
        jinja = tpl.to_jinja()
        for messages, system, tools in CASES:
            for end in (4, 3, 2, 1):
                part = messages[:end]
                if end % 2 == 0:
                    want = tpl.render(mistral, part, system=system, tools=tools).text
                else:
                    want = tpl.render_prompt(mistral, part, system=system, tools=tools)
                got = jinja_text(mistral, jinja, part, system, tools, add_generation_prompt=end % 2 == 1)
                assert got == want, f"{name} (enable_thinking={tpl.enable_thinking}), {end} messages"


def test_thinking_can_be_switched_when_serving(mistral):
    """The exported qwen3 template takes `enable_thinking` like Qwen3's own, defaulting to the trained mode."""
    tpl = get_template("qwen3")
    jinja = tpl.to_jinja()
    on = jinja_text(mistral, jinja, CHAT[:3], add_generation_prompt=True)
    off = jinja_text(mistral, jinja, CHAT[:3], add_generation_prompt=True, enable_thinking=False)
    empty = "<think>\n\n</think>\n\n"
    assert on.endswith("<|im_start|>assistant\n") and empty not in on
    # Off: every answer without thoughts, and the generation prompt, get the empty block.
    assert off == on.replace("assistant\nHello!", f"assistant\n{empty}Hello!") + empty
    trained_off = tpl.with_options(enable_thinking=False).to_jinja()
    assert jinja_text(mistral, trained_off, CHAT[:3], add_generation_prompt=True) == off


@pytest.mark.parametrize(
    "name, folder, same_labels",
    [
        ("qwen", "qwen2-instruct-boundless", True),
        ("qwen3", "qwen3-4b-thinking-2507-assembled", True),
        ("mistral", "mistral-7b-instruct-v0.3", True),
        ("glm4", "qwen2-instruct-boundless", False),
        ("gemma", "gpt2-dialogpt-small", True),
    ],
)
def test_fix_tokenizer_sets_the_trained_template(name, folder, same_labels):
    """After fix_tokenizer, the tokenizer's own apply_chat_template gives lathe's ids and prompts, and
    `template` omitted on that tokenizer trains the same ids, with the same labels where the answer
    is its content plus an end token (glm4's answers start with "\n", which the tokenizer-template
    path, finding answers by their stripped content, leaves in the prompt)."""
    tokenizer = load(folder)
    tpl = get_template(name)
    tpl.fix_tokenizer(tokenizer)
    assert tokenizer.chat_template == tpl.to_jinja()
    for messages, system in ((CHAT, ""), (CHAT[:2], "You are terse.")):
        pairs = tpl.encode(tokenizer, messages, system=system)
        ids = [i for prompt, answer in pairs for i in prompt + answer]
        conversation = to_openai_messages(messages, system)
        out = tokenizer.apply_chat_template(conversation, tokenize=True)
        assert list(out["input_ids"] if hasattr(out, "keys") else out) == ids
        prompt = tokenizer.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=True)
        assert prompt == tpl.render_prompt(tokenizer, messages[:-1], system=system)
        own = resolve_template(None, tokenizer)
        assert isinstance(own, TokenizerTemplate)
        theirs = own.encode(tokenizer, messages, system=system)
        assert [i for prompt, answer in theirs for i in prompt + answer] == ids
        if same_labels:
            assert theirs == pairs


def test_saved_tokenizer_carries_the_template(tmp_path):
    tokenizer = load("gpt2-dialogpt-small")
    tpl = get_template("qwen3").with_options(enable_thinking=False, default_system="You are Lathe.")
    tpl.fix_tokenizer(tokenizer)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.chat_template == tpl.to_jinja()
    prompt = reloaded.apply_chat_template([CHAT[0]], tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are Lathe.<|im_end|>\n<|im_start|>user\nHi there {content} {{ x }}<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_tokenizer_template_keeps_the_tokenizers_own():
    tokenizer = load("qwen2-instruct-boundless")
    own = tokenizer.chat_template
    tpl = resolve_template(None, tokenizer)
    tpl.fix_tokenizer(tokenizer)
    assert tokenizer.chat_template == own == tpl.to_jinja()
