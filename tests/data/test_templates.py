"""Chat templates: token-for-token parity with the models' own templates, and exact loss masks.

Real tokenizers come from `shared/tokenizers` next to the repository (see its README.md). Each
parity test renders the same conversation with lathe and with the tokenizer's
`apply_chat_template` and compares ids. One difference is by design and checked explicitly:
lathe does not render what a template writes after the final end-of-turn token (e.g. ChatML's
trailing "\\n"), because nothing there is learned; `assert_parity` checks that the model's ids
are lathe's ids followed by exactly that suffix.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoTokenizer, PythonBackend

from lathe.data.templates import (
    TEMPLATES_FILE,
    SlotTemplate,
    Slots,
    Template,
    TokenizerTemplate,
    get_template,
    list_templates,
    resolve_template,
)
from lathe.data.templates.named import _resolve_entry
from lathe.errors import LatheError
from tests.conftest import SHARED

TOKENIZERS = SHARED / "tokenizers"
LLAMA3_DATE = "26 Jul 2024"
LLAMA3_HEADER = f"Cutting Knowledge Date: December 2023\nToday Date: {LLAMA3_DATE}\n\n"

# Contents are distinct so a prompt can be checked to hold no answer text; braces check that
# message text is never taken for a placeholder.
ONE_TURN = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}]
THREE_TURNS = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Write {content} and {system} literally."},
    {"role": "assistant", "content": "Sure: {content} and {system}."},
    {"role": "user", "content": "Thanks, bye."},
    {"role": "assistant", "content": "Goodbye, take care!"},
]
SYSTEM = "You are a terse pirate."


def load(folder: str):
    path = TOKENIZERS / folder
    if not path.is_dir():
        pytest.skip(f"real tokenizers not found at {TOKENIZERS.resolve()} (the shared/ folder next to the repo)")
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def qwen2():
    return load("qwen2-instruct-boundless")


@pytest.fixture(scope="module")
def qwen3():
    return load("qwen3-4b-thinking-2507-assembled")


@pytest.fixture(scope="module")
def llama3():
    return load("llama3.2-instruct")


@pytest.fixture(scope="module")
def mistral():
    return load("mistral-7b-instruct-v0.3")


@pytest.fixture(scope="module")
def gpt2():
    return load("gpt2-dialogpt-small")


def gemma_chat_template() -> str:
    path = TOKENIZERS / "gemma-2b-it-TEMPLATE-ONLY" / "tokenizer_config.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text())["chat_template"]


def hf_ids(tokenizer, messages, system="", **kwargs) -> list[int]:
    """The model's own ids; transformers 5 returns a BatchEncoding from apply_chat_template."""
    conversation = ([{"role": "system", "content": system}] if system else []) + list(messages)
    out = tokenizer.apply_chat_template(conversation, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def flat(pairs) -> list[int]:
    return [i for prompt, answer in pairs for i in prompt + answer]


def assert_parity(tokenizer, pairs, reference: list[int], suffix: str = "") -> None:
    """lathe's ids are the model's ids, minus `suffix` (text after the last end-of-turn token)."""
    ids = flat(pairs)
    assert reference[: len(ids)] == ids
    assert reference[len(ids) :] == tokenizer(suffix, add_special_tokens=False)["input_ids"]


def assert_labels(tokenizer, pairs, messages, end: str, expected=None) -> None:
    """Each answer decodes to its content plus the end-of-turn token; no prompt holds answer text."""
    answers = [m["content"] for m in messages[1::2]]
    expected = expected or [a + end for a in answers]
    assert len(pairs) == len(answers)
    for (prompt, answer), want in zip(pairs, expected):
        assert tokenizer.decode(answer) == want
        decoded_prompt = tokenizer.decode(prompt)
        assert not any(a in decoded_prompt for a in answers)


# --- registry -------------------------------------------------------------------------------------


def test_registry_lists_required_templates():
    names = list_templates()
    assert names == sorted(names)
    for required in ("default", "empty", "chatml", "qwen", "qwen3", "llama3", "mistral", "gemma", "llama2", "vicuna"):
        assert required in names
        assert isinstance(get_template(required), Template)
    assert get_template("qwen").stop_words == ["<|im_end|>"]


def test_unknown_template_names_close_ones_and_the_file():
    with pytest.raises(LatheError) as err:
        get_template("qwen2")
    message = str(err.value)
    assert "`qwen`" in message and "Did you mean" in message
    assert str(TEMPLATES_FILE) in message and "llama3" in message


def test_template_data_is_validated():
    with pytest.raises(LatheError, match="slot `user` uses `{system}`"):
        Slots(name="broken", user="{system}")
    entries = {"x": {"base": "chatml", "asistant": "{content}"}, "chatml": {}}
    with pytest.raises(LatheError, match="unknown key `asistant`.*assistant"):
        _resolve_entry("x", entries, Path("t.yaml"))
    with pytest.raises(LatheError, match="not defined"):
        _resolve_entry("y", {"y": {"base": "nope"}}, Path("t.yaml"))


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages, match",
    [
        ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], "prompt turn"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "answer turn"),
        ([{"role": "system", "content": "a"}, {"role": "assistant", "content": "b"}], "passed separately"),
        ([{"role": "user", "content": "a"}], "must end with an answer"),
        ([], "no messages"),
        ([{"role": "user", "content": None}, {"role": "assistant", "content": "b"}], "expected text"),
    ],
)
def test_bad_conversations_raise(gpt2, messages, match):
    with pytest.raises(LatheError, match=match):
        get_template("chatml").encode(gpt2, messages)


def test_prompt_must_end_with_a_prompt_turn(gpt2):
    with pytest.raises(LatheError, match="must end with a user or observation"):
        get_template("chatml").encode_prompt(gpt2, ONE_TURN)


class CharTokenizer(PythonBackend):
    """A slow, character-level tokenizer (no offsets)."""

    def __init__(self, **kwargs):
        self._vocab = {chr(i): i for i in range(32, 127)}
        super().__init__(**kwargs)

    @property
    def vocab_size(self):
        return len(self._vocab)

    def get_vocab(self):
        return dict(self._vocab)

    def _tokenize(self, text):
        return list(text)

    def _convert_token_to_id(self, token):
        return self._vocab.get(token, 0)

    def _convert_id_to_token(self, index):
        return chr(index)


def test_slow_tokenizer_is_refused():
    with pytest.raises(LatheError, match="slow .*fast tokenizer"):
        get_template("empty").encode(CharTokenizer(eos_token="~"), ONE_TURN)


def test_invalid_tools_json(gpt2):
    with pytest.raises(LatheError, match="`tools` is not valid JSON"):
        get_template("qwen").encode(gpt2, ONE_TURN, tools="[{not json")


# --- hand-checked: default, empty, llama2, vicuna, tools ------------------------------------------


def test_default_template_exact(gpt2):
    tpl = get_template("default")
    rendering = tpl.render(gpt2, THREE_TURNS[:4], system="Be kind.")
    assert rendering.text == (
        "System: Be kind.\nHuman: Hi there\nAssistant: Hello! How can I help?<|endoftext|>\n"
        "Human: Write {content} and {system} literally.\nAssistant: Sure: {content} and {system}.<|endoftext|>"
    )
    learned = [rendering.text[s:e] for s, e in rendering.answer_spans]
    assert learned == [" Hello! How can I help?<|endoftext|>", " Sure: {content} and {system}.<|endoftext|>"]
    pairs = tpl.encode(gpt2, THREE_TURNS[:4], system="Be kind.")
    assert [gpt2.decode(a) for _, a in pairs] == learned
    assert [gpt2.decode(p) for p, _ in pairs] == [
        "System: Be kind.\nHuman: Hi there\nAssistant:",
        "\nHuman: Write {content} and {system} literally.\nAssistant:",
    ]
    assert flat(pairs) == gpt2(rendering.text, add_special_tokens=False)["input_ids"]
    prompt = tpl.encode_prompt(gpt2, THREE_TURNS[:1])
    assert gpt2.decode(prompt) == "Human: Hi there\nAssistant:"


def test_empty_template_exact(gpt2):
    tpl = get_template("empty")
    pairs = tpl.encode(gpt2, THREE_TURNS[:4])
    assert [(gpt2.decode(p), gpt2.decode(a)) for p, a in pairs] == [
        ("Hi there", "Hello! How can I help?<|endoftext|>"),
        ("Write {content} and {system} literally.", "Sure: {content} and {system}.<|endoftext|>"),
    ]
    # A system prompt is glued to the first prompt as plain text.
    pairs = tpl.encode(gpt2, ONE_TURN, system="Context. ")
    assert gpt2.decode(pairs[0][0]) == "Context. What is 2+2?"


def test_llama2_and_vicuna_exact():
    tokens = SimpleNamespace(bos_token="<s>", eos_token="</s>")
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
    llama2 = get_template("llama2").render(tokens, messages, system="S")
    assert llama2.text == "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST] A2 </s>"
    assert [llama2.text[s:e] for s, e in llama2.answer_spans] == [" A1 </s>", " A2 </s>"]
    vicuna = get_template("vicuna").render(tokens, messages)
    assert vicuna.text == (
        "<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Q1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>"
    )


def test_tool_calls_and_results_qwen(qwen2):
    tools = json.dumps([{"name": "add", "description": "Add two numbers", "parameters": {"type": "object"}}])
    messages = [
        {"role": "user", "content": "What is 3+4?"},
        {"role": "function", "content": '{"name": "add", "arguments": {"a": 3, "b": 4}}'},
        {"role": "observation", "content": "7"},
        {"role": "assistant", "content": "It is 7."},
    ]
    tpl = get_template("qwen")
    rendering = tpl.render(qwen2, messages, tools=tools)
    assert rendering.text.startswith(
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions"
    )
    # A bare schema is written in OpenAI's {"type": "function", "function": ...} form, as Qwen models saw tools.
    assert (
        '<tools>\n{"type": "function", "function": {"name": "add", "description": "Add two numbers", '
        '"parameters": {"type": "object"}}}\n</tools>'
    ) in rendering.text
    assert [rendering.text[s:e] for s, e in rendering.answer_spans] == [
        '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 4}}\n</tool_call><|im_end|>',
        "It is 7.<|im_end|>",
    ]
    pairs = tpl.encode(qwen2, messages, tools=tools)
    assert qwen2.decode(pairs[1][0]) == (
        "\n<|im_start|>user\n<tool_response>\n7\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )


# --- registered templates vs the models' own templates --------------------------------------------


@pytest.mark.parametrize("messages", [ONE_TURN, THREE_TURNS[:4], THREE_TURNS])
@pytest.mark.parametrize("system", ["", SYSTEM])
def test_qwen_parity(qwen2, messages, system):
    pairs = get_template("qwen").encode(qwen2, messages, system=system)
    assert_parity(qwen2, pairs, hf_ids(qwen2, messages, system), suffix="\n")
    assert_labels(qwen2, pairs, messages, "<|im_end|>")
    prompt = get_template("qwen").encode_prompt(qwen2, messages[:-1], system=system)
    assert prompt == hf_ids(qwen2, messages[:-1], system, add_generation_prompt=True)


@pytest.mark.parametrize("messages", [ONE_TURN, THREE_TURNS])
@pytest.mark.parametrize("system", ["", SYSTEM])
def test_llama3_parity(llama3, messages, system):
    """Llama 3's template always writes a system block with a date; lathe's `llama3` writes only the
    system prompt it is given, so the date header is passed to lathe as part of the system prompt."""
    tpl = get_template("llama3")
    pairs = tpl.encode(llama3, messages, system=LLAMA3_HEADER + system)
    assert_parity(llama3, pairs, hf_ids(llama3, messages, system, date_string=LLAMA3_DATE))
    assert_labels(llama3, pairs, messages, "<|eot_id|>")
    prompt = tpl.encode_prompt(llama3, messages[:-1], system=LLAMA3_HEADER + system)
    assert prompt == hf_ids(llama3, messages[:-1], system, date_string=LLAMA3_DATE, add_generation_prompt=True)


def test_llama3_without_system_has_no_date_block(llama3):
    text = llama3.decode(flat(get_template("llama3").encode(llama3, ONE_TURN)))
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?")


@pytest.mark.parametrize("messages", [ONE_TURN, THREE_TURNS[:4], THREE_TURNS])
def test_mistral_parity_without_system(mistral, messages):
    tpl = get_template("mistral")
    pairs = tpl.encode(mistral, messages)
    assert_parity(mistral, pairs, hf_ids(mistral, messages))
    assert_labels(mistral, pairs, messages, "</s>")
    assert tpl.encode_prompt(mistral, messages[:-1]) == hf_ids(mistral, messages[:-1], add_generation_prompt=True)


def test_mistral_system_prompt(mistral):
    """Mistral's template keeps the system prompt only when the last message is the user's, in that
    last turn. lathe puts it in the FIRST user turn, so training never drops it."""
    tpl = get_template("mistral")
    # Single-turn prompt: first turn == last turn, so inference matches the model exactly.
    assert tpl.encode_prompt(mistral, ONE_TURN[:1], system=SYSTEM) == hf_ids(
        mistral, ONE_TURN[:1], SYSTEM, add_generation_prompt=True
    )
    # Multi-turn training keeps the system prompt (the model's own template drops it here).
    pairs = tpl.encode(mistral, THREE_TURNS, system=SYSTEM)
    assert mistral.decode(pairs[0][0]) == f"<s>[INST] {SYSTEM}\n\nHi there[/INST]"
    assert SYSTEM not in mistral.decode(hf_ids(mistral, THREE_TURNS, SYSTEM))
    assert_labels(mistral, pairs, THREE_TURNS, "</s>")


def render_gemma_jinja(messages, add_generation_prompt=False) -> str:
    """Render Gemma's template the way transformers does (it has no vocabulary here to tokenize)."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(gemma_chat_template()).render(
        messages=messages, bos_token="<bos>", eos_token="<eos>", add_generation_prompt=add_generation_prompt
    )


@pytest.mark.parametrize("messages", [ONE_TURN, THREE_TURNS])
def test_gemma_matches_its_template_text(messages):
    tokens = SimpleNamespace(bos_token="<bos>", eos_token="<eos>")
    tpl = get_template("gemma")
    rendering = tpl.render(tokens, messages)
    assert rendering.text + "\n" == render_gemma_jinja(messages)
    assert [rendering.text[s:e] for s, e in rendering.answer_spans] == [
        m["content"] + "<end_of_turn>" for m in messages[1::2]
    ]
    assert tpl.render_prompt(tokens, messages[:-1]) == render_gemma_jinja(messages[:-1], add_generation_prompt=True)


def test_gemma_system_goes_into_the_first_user_turn():
    """Gemma's template raises on a system message; lathe prepends the system prompt to the first user turn."""
    with pytest.raises(jinja2.exceptions.TemplateError, match="System role not supported"):
        render_gemma_jinja([{"role": "system", "content": SYSTEM}] + ONE_TURN)
    tokens = SimpleNamespace(bos_token="<bos>", eos_token="<eos>")
    text = get_template("gemma").render(tokens, ONE_TURN, system=SYSTEM).text
    merged = [{"role": "user", "content": f"{SYSTEM}\n\nWhat is 2+2?"}, ONE_TURN[1]]
    assert text + "\n" == render_gemma_jinja(merged)


THINKING = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nSimple arithmetic.\n</think>\n\n2+2 equals 4."},
]
THINKING_MULTI = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nSimple arithmetic.\n</think>\n\n2+2 equals 4."},
]
THOUGHTS_IN_HISTORY = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "<think>\nA greeting.\n</think>\n\nHello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nSimple arithmetic.\n</think>\n\n2+2 equals 4."},
]


@pytest.mark.parametrize("messages", [THINKING, THINKING_MULTI])
@pytest.mark.parametrize("system", ["", SYSTEM])
def test_qwen3_parity(qwen3, messages, system):
    """Qwen3-Thinking's template is not prefix-stable: earlier answers lose their <think> block and the
    last one always gets one. Conversations whose data already has that shape match exactly."""
    pairs = get_template("qwen3").encode(qwen3, messages, system=system)
    assert_parity(qwen3, pairs, hf_ids(qwen3, messages, system), suffix="\n")
    assert_labels(qwen3, pairs, messages, "<|im_end|>")


def test_qwen3_keeps_thoughts_and_prompt_differs_by_think(qwen3):
    tpl = get_template("qwen3")
    # lathe learns every answer as written, thoughts included; the model's template drops old thoughts.
    pairs = tpl.encode(qwen3, THOUGHTS_IN_HISTORY)
    assert_labels(qwen3, pairs, THOUGHTS_IN_HISTORY, "<|im_end|>")
    assert "A greeting." not in qwen3.decode(hf_ids(qwen3, THOUGHTS_IN_HISTORY))
    # The thinking model's generation prompt opens the <think> block; the `qwen3` template (hybrid
    # Qwen3) leaves that to the model, so its prompt is the model's minus "<think>\n".
    prompt = tpl.encode_prompt(qwen3, THINKING_MULTI[:3])
    think = qwen3("<think>\n", add_special_tokens=False)["input_ids"]
    assert prompt + think == hf_ids(qwen3, THINKING_MULTI[:3], add_generation_prompt=True)


def test_qwen3_tools_parity(qwen3):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {}}}]
    pairs = get_template("qwen3").encode(qwen3, THINKING, system=SYSTEM, tools=json.dumps(tools))
    assert_parity(qwen3, pairs, hf_ids(qwen3, THINKING, SYSTEM, tools=tools), suffix="\n")


# --- the tokenizer's own template (template omitted) ----------------------------------------------


@pytest.mark.parametrize("messages", [ONE_TURN, THREE_TURNS])
@pytest.mark.parametrize(
    "fixture, kwargs, end, suffix",
    [
        ("qwen2", {}, "<|im_end|>", "\n"),
        ("llama3", {"date_string": LLAMA3_DATE}, "<|eot_id|>", ""),
        ("gpt2", {}, "<|endoftext|>", ""),
        ("qwen3", {}, "<|im_end|>", "\n"),
    ],
)
def test_tokenizer_template_parity(request, fixture, kwargs, end, suffix, messages):
    tokenizer = request.getfixturevalue(fixture)
    tpl = TokenizerTemplate(tokenizer, kwargs)
    for system in ("", SYSTEM):
        pairs = tpl.encode(tokenizer, messages, system=system)
        assert_parity(tokenizer, pairs, hf_ids(tokenizer, messages, system, **kwargs), suffix)
        assert_labels(tokenizer, pairs, messages, end)
        prompt = tpl.encode_prompt(tokenizer, messages[:-1], system=system)
        assert prompt == hf_ids(tokenizer, messages[:-1], system, add_generation_prompt=True, **kwargs)
    assert end in tpl.stop_words


@pytest.mark.parametrize("messages", [ONE_TURN, THREE_TURNS])
def test_tokenizer_template_parity_mistral(mistral, messages):
    tpl = resolve_template(None, mistral)
    assert isinstance(tpl, TokenizerTemplate)
    pairs = tpl.encode(mistral, messages)
    assert_parity(mistral, pairs, hf_ids(mistral, messages))
    assert_labels(mistral, pairs, messages, "</s>")


def test_tokenizer_template_qwen3_thinking_multiturn(qwen3):
    """Earlier thoughts are dropped by the template, so lathe learns what it renders: the answer alone."""
    tpl = TokenizerTemplate(qwen3)
    pairs = tpl.encode(qwen3, THOUGHTS_IN_HISTORY)
    assert_parity(qwen3, pairs, hf_ids(qwen3, THOUGHTS_IN_HISTORY), suffix="\n")
    assert [qwen3.decode(a) for _, a in pairs] == [
        "Hello! How can I help?<|im_end|>",
        "<think>\nSimple arithmetic.\n</think>\n\n2+2 equals 4.<|im_end|>",
    ]
    # An answer without thoughts: the template adds an empty <think> block, which stays in the prompt.
    pairs = tpl.encode(qwen3, THREE_TURNS[:2])
    assert qwen3.decode(pairs[0][0]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert qwen3.decode(pairs[0][1]) == "Hello! How can I help?<|im_end|>"


def test_tokenizer_template_reformatted_thoughts(qwen2):
    """DeepSeek-R1's template keeps only the text after </think>; that part (and eos) is learned."""
    path = TOKENIZERS / "deepseek-r1-distill-qwen-32b-TEMPLATE-ONLY" / "tokenizer_config.json"
    config = json.loads(path.read_text())
    tokenizer = load("qwen2-instruct-boundless")  # a fresh copy: tokens are added below
    tokenizer.add_special_tokens(
        {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
         "additional_special_tokens": ["<｜User｜>", "<｜Assistant｜>"]},
        replace_extra_special_tokens=False,
    )
    tokenizer.chat_template = config["chat_template"]
    pairs = TokenizerTemplate(tokenizer).encode(tokenizer, THOUGHTS_IN_HISTORY)
    assert_parity(tokenizer, pairs, hf_ids(tokenizer, THOUGHTS_IN_HISTORY))
    assert [tokenizer.decode(a) for _, a in pairs] == [
        "Hello! How can I help?<｜end▁of▁sentence｜>",
        "2+2 equals 4.<｜end▁of▁sentence｜>",
    ]


def test_tokenizer_template_tools(qwen3, qwen2):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {}}}]
    pairs = TokenizerTemplate(qwen3).encode(qwen3, THINKING, tools=json.dumps(tools))
    assert_parity(qwen3, pairs, hf_ids(qwen3, THINKING, tools=tools), suffix="\n")
    # qwen2-instruct-boundless's template has no tool section: refuse rather than drop the schemas.
    with pytest.raises(LatheError, match="ignores `tools`"):
        TokenizerTemplate(qwen2).encode(qwen2, ONE_TURN, tools=json.dumps(tools))


def test_tokenizer_template_errors():
    tokenizer = load("gpt2-dialogpt-small")
    tokenizer.chat_template = "{% for m in messages %}{{ m.content | upper }}{{ eos_token }}{% endfor %}"
    with pytest.raises(LatheError, match="could not be found in the text rendered"):
        TokenizerTemplate(tokenizer).encode(tokenizer, ONE_TURN)
    tokenizer.chat_template = gemma_chat_template()
    with pytest.raises(LatheError, match="System role not supported.*registered template"):
        TokenizerTemplate(tokenizer).encode(tokenizer, ONE_TURN, system=SYSTEM)


def test_resolve_template(gpt2, caplog):
    assert isinstance(resolve_template(None, gpt2), TokenizerTemplate)
    assert resolve_template("qwen", gpt2) is get_template("qwen")
    bare = load("gpt2-dialogpt-small")
    bare.chat_template = None
    with caplog.at_level(logging.WARNING, logger="lathe.data.templates"):
        tpl = resolve_template(None, bare)
    assert tpl is get_template("empty")
    assert "has no chat template" in caplog.text
    with pytest.raises(LatheError, match="has no chat_template"):
        TokenizerTemplate(bare)


# --- fix_tokenizer --------------------------------------------------------------------------------


def test_fix_tokenizer_adds_missing_tokens_once():
    tokenizer = load("gpt2-dialogpt-small")
    assert tokenizer.pad_token is None
    tpl = get_template("chatml")
    assert tpl.fix_tokenizer(tokenizer) == ["<|im_start|>", "<|im_end|>"]
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert len(tokenizer("<|im_start|>user<|im_end|>", add_special_tokens=False)["input_ids"]) == 3
    assert tpl.fix_tokenizer(tokenizer) == []
    assert len(tokenizer) == 50259


def test_fix_tokenizer_sets_missing_eos_from_stop_words():
    tokenizer = load("gpt2-dialogpt-small")
    tokenizer.eos_token = None
    assert get_template("gemma").fix_tokenizer(tokenizer) == ["<end_of_turn>", "<start_of_turn>"]
    assert tokenizer.eos_token == tokenizer.pad_token == "<end_of_turn>"
    assert get_template("gemma").fix_tokenizer(tokenizer) == []
    tokenizer.eos_token = None
    with pytest.raises(LatheError, match="no eos_token"):
        get_template("empty").fix_tokenizer(tokenizer)


def test_fix_tokenizer_on_a_matching_tokenizer_adds_nothing():
    qwen2, llama3 = load("qwen2-instruct-boundless"), load("llama3.2-instruct")  # fresh: fix_tokenizer changes them
    own = qwen2.chat_template
    assert TokenizerTemplate(qwen2).fix_tokenizer(qwen2) == []
    assert qwen2.chat_template == own  # the tokenizer's own template stays
    assert get_template("qwen").fix_tokenizer(qwen2) == []
    assert qwen2.chat_template == get_template("qwen").to_jinja()  # the trained template travels with it
    assert get_template("llama3").fix_tokenizer(llama3) == []
    assert llama3.pad_token == "<|eot_id|>"
    assert isinstance(get_template("llama3"), SlotTemplate)


def test_a_multimodal_template_is_refused_as_multimodal_not_unknown():
    with pytest.raises(LatheError, match="`minicpm_v` is a multimodal one"):
        get_template("minicpm_v")


def test_the_multimodal_names_refused_are_those_lathe_lacks_and_the_docs_list():
    """Registered multimodal templates leave the refused list; docs/templates.md names exactly those left."""
    import re

    from lathe.data.templates.named import MULTIMODAL_TEMPLATES

    assert not MULTIMODAL_TEMPLATES & set(list_templates())
    text = (Path(__file__).parents[2] / "docs" / "templates.md").read_text(encoding="utf-8")
    listed = text.split("Still refused by name (no lathe media plugin yet):", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"`(\w+)`", listed)) == MULTIMODAL_TEMPLATES
