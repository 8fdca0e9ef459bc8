"""Tool calling: each tool format's round trip, its parity with the models' own templates, and agent data.

Parity tests render one tool-using conversation (tools, a tool-call turn, a tool-result turn, an
answer) with lathe and with the tokenizer's `apply_chat_template`, given the same conversation as
OpenAI-style messages (`to_openai_messages`), and compare ids token for token.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from lathe.data.formats import TOOL_RESPONSE_JOIN, get_format
from lathe.data.dataset_info import DatasetAttr
from lathe.data.templates import (
    ToolCall,
    get_template,
    get_tool_format,
    list_tool_formats,
    resolve_template,
    to_openai_messages,
)
from lathe.data.templates.tools import call_id, load_calls, wrap_function
from lathe.errors import LatheError
from tests.conftest import SHARED

LLAMA3_HEADER = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"

ADD = {
    "name": "add",
    "description": "Add two numbers",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}
WEATHER = {"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}}}}
TOOLS = json.dumps([ADD, WEATHER])
ONE_CALL = json.dumps({"name": "add", "arguments": {"a": 3, "b": 4}})
TWO_CALLS = json.dumps([{"name": "add", "arguments": {"a": 3, "b": 4}}, {"name": "get_weather", "arguments": {
    "city": "Zürich"}}])
AGENT = [  # one call, its result, the answer
    {"role": "user", "content": "What is 3+4?"},
    {"role": "function", "content": ONE_CALL},
    {"role": "observation", "content": '{"result": 7}'},
    {"role": "assistant", "content": "It is 7."},
]
PARALLEL = [  # two calls in one turn, two results joined by the converter
    {"role": "user", "content": "What is 3+4, and the weather in Zürich?"},
    {"role": "function", "content": TWO_CALLS},
    {"role": "observation", "content": '{"result": 7}' + TOOL_RESPONSE_JOIN + '{"sky": "clear"}'},
    {"role": "assistant", "content": "<think>\nBoth came back.\n</think>\n\n7, and the sky is clear."},
]
SYSTEM = "Be brief."


def load(folder: str):
    path = SHARED / "tokenizers" / folder
    if not path.is_dir():
        pytest.skip(f"real tokenizers not found at {path}")
    return AutoTokenizer.from_pretrained(str(path))


def hf_ids(tokenizer, conversation, **kwargs) -> list[int]:
    out = tokenizer.apply_chat_template(conversation, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def flat(pairs) -> list[int]:
    return [i for prompt, answer in pairs for i in prompt + answer]


# --- the registry and the round trip ----------------------------------------------------------------


def test_tool_formats_are_registered_and_templates_name_one():
    assert {"default", "qwen", "llama3", "mistral", "glm4"} <= set(list_tool_formats())
    assert get_template("qwen").tool_format.name == "qwen"
    assert get_template("qwen3").tool_format.name == "qwen"
    assert get_template("llama3").tool_format.name == "llama3"
    assert get_template("mistral").tool_format.name == "mistral"
    assert get_template("ministral").tool_format.name == "mistral_tekken"
    assert get_template("glm4").tool_format.name == "glm4"
    assert get_template("chatml").tool_format.name == "default"


def test_unknown_tool_format_lists_the_registered_ones():
    with pytest.raises(LatheError, match="Unknown tool format `hermes`.*Registered tool formats: default, .*glm4"):
        resolve_template("chatml", None, tool_format="hermes")
    with pytest.raises(LatheError, match="Did you mean `qwen`"):
        get_tool_format("qwenn")


@pytest.mark.parametrize("name", list_tool_formats())
@pytest.mark.parametrize("calls_json", [ONE_CALL, TWO_CALLS, json.dumps({"name": "now", "arguments": {}})])
def test_parse_reads_back_what_render_calls_wrote(name, calls_json):
    fmt = get_tool_format(name)
    text = fmt.render_calls(calls_json)
    assert fmt.parse(text) == load_calls(calls_json)
    assert fmt.parse("  " + text + "\n") == load_calls(calls_json)  # generation often ends with whitespace


@pytest.mark.parametrize("name", list_tool_formats())
@pytest.mark.parametrize("text", ["It is 7.", '{"name": "Ada"}', "Sure\nI can help.", "", "[1, 2]"])
def test_plain_answers_are_not_tool_calls(name, text):
    assert get_tool_format(name).parse(text) is None


def test_parsed_calls_carry_json_arguments():
    calls = get_tool_format("qwen").parse('<tool_call>\n{"name": "add", "arguments": {"a": 3}}\n</tool_call>')
    assert calls == [ToolCall("add", '{"a": 3}')]
    assert calls[0].args == {"a": 3}
    # Generated text in each family's own spelling, as a model writes it.
    assert get_tool_format("llama3").parse('<|python_tag|>{"name": "add", "parameters": {"a": 3}}') == calls
    assert get_tool_format("mistral").parse('[{"name": "add", "arguments": {"a": 3}, "id": "abcdefghi"}]') == calls
    assert get_tool_format("glm4").parse('add\n{"a": 3}') == calls
    assert get_tool_format("default").parse('```json\n{"name": "add", "arguments": {"a": 3}}\n```') == calls
    assert get_template("qwen3").parse_tool_calls("<tool_call>\n{not json}\n</tool_call>") is None


def test_function_turn_content_must_be_a_call():
    with pytest.raises(LatheError, match="function \\(tool call\\) turn must hold JSON"):
        get_template("qwen").render(_Tokens(), [{"role": "user", "content": "q"}, {"role": "function", "content": "add(3)"}])
    # Arguments stored as a JSON string (some datasets do) are read as the object they hold.
    assert load_calls('{"name": "add", "arguments": "{\\"a\\": 3}"}') == [ToolCall("add", '{"a": 3}')]


class _Tokens:
    bos_token, eos_token = "<s>", "</s>"


# --- parity with the models' own templates ---------------------------------------------------------


@pytest.fixture(scope="module")
def qwen3():
    return load("qwen3-4b-thinking-2507-assembled")


@pytest.mark.parametrize("messages", [AGENT[:3] + [PARALLEL[3]], PARALLEL])
def test_qwen3_tool_parity(qwen3, messages):
    """Hermes-style tools, <tool_call> turns and <tool_response> results as Qwen3's template writes them.
    Bare schemas are given to lathe; the model's template gets them in OpenAI form, as lathe writes them.
    (A conversation *ending* in a tool call is not compared: Qwen3-Thinking's template gives the last
    assistant turn a <think> block whatever it holds, the non-prefix-stable rule of docs/templates.md.)"""
    tpl = get_template("qwen3")
    pairs = tpl.encode(qwen3, messages, system=SYSTEM, tools=TOOLS)
    reference = hf_ids(qwen3, to_openai_messages(messages, SYSTEM), tools=[wrap_function(t) for t in (ADD, WEATHER)])
    ids = flat(pairs)
    assert reference[: len(ids)] == ids
    assert qwen3.decode(reference[len(ids):]) == "\n"  # ChatML's trailing newline, never rendered for training
    learned = [qwen3.decode(answer) for _, answer in pairs]
    assert learned[0] == tpl.tool_format.render_calls(messages[1]["content"]) + "<|im_end|>"
    if len(pairs) > 1:  # the tool result is prompt, never learned
        assert "<tool_response>\n" in qwen3.decode(pairs[1][0]) and "result" not in learned[1]


@pytest.fixture(scope="module")
def llama3():
    return load("llama3.2-instruct")


@pytest.mark.parametrize("messages", [AGENT[:2], AGENT])
def test_llama3_tool_parity(llama3, messages):
    """Llama 3.2's template with `date_string`: tools in the first user message, "Environment: ipython" in
    the system block, calls as {"name", "parameters"}, results in an ipython turn.

    Matched exceptions: lathe writes no date, so the date header is passed to lathe in the system
    prompt; and a tool result is given to the model's template as a mapping, because it writes a
    *string* result as a JSON string literal (quoted, escaped), which lathe does not copy.
    """
    pairs = get_template("llama3").encode(llama3, messages, system=LLAMA3_HEADER + SYSTEM, tools=TOOLS)
    conversation = to_openai_messages(messages, SYSTEM)
    for message in conversation:
        if message["role"] == "tool":
            message["content"] = json.loads(message["content"])
    reference = hf_ids(llama3, conversation, tools=[wrap_function(t) for t in (ADD, WEATHER)], date_string="26 Jul 2024")
    assert flat(pairs) == reference
    assert llama3.decode(pairs[0][1]) == '{"name": "add", "parameters": {"a": 3, "b": 4}}<|eot_id|>'


@pytest.fixture(scope="module")
def mistral():
    return load("mistral-7b-instruct-v0.3")


@pytest.mark.parametrize("messages", [AGENT, PARALLEL[:3] + [AGENT[3]]])
def test_mistral_tool_parity(mistral, messages):
    """Mistral 7B v0.3's template: [AVAILABLE_TOOLS] before the user turn, [TOOL_CALLS] with call ids,
    one [TOOL_RESULTS] block per result naming its call.

    Mistral requires 9-character alphanumeric call ids, which lathe's data does not carry: lathe
    derives them from each call (`call_id`: a hash of the call and its position, stable across
    runs), and `to_openai_messages` gives the model's template those same ids, so the match is
    exact given the ids. With one user turn the tools block sits where Mistral puts it (before
    the last user turn); lathe always puts it before the first.
    """
    pairs = get_template("mistral").encode(mistral, messages, tools=TOOLS)
    reference = hf_ids(mistral, to_openai_messages(messages), tools=[wrap_function(t) for t in (ADD, WEATHER)])
    assert flat(pairs) == reference
    calls = load_calls(messages[1]["content"])
    ids = [call_id(c, k) for k, c in enumerate(calls)]
    assert all(len(i) == 9 and i.isalnum() for i in ids)
    assert mistral.decode(pairs[0][1]).startswith("[TOOL_CALLS] [") and all(i in mistral.decode(pairs[0][1]) for i in ids)
    assert mistral.decode(pairs[1][0]).count("[TOOL_RESULTS]") == len(calls)


def test_glm4_tool_text():
    """GLM-4's spelling (no tokenizer here): the Chinese tool prompt in the system block, a call as
    `name\\n{arguments}` right after <|assistant|>, the result in an <|observation|> turn."""
    rendering = get_template("glm4").render(_Tokens(), AGENT, tools=json.dumps([ADD]))
    tool_json = json.dumps(ADD, ensure_ascii=False, indent=4)
    assert rendering.text == (
        "[gMASK]<sop><|system|>\n你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
        "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具\n\n## add\n\n"
        f"{tool_json}\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
        '<|user|>\nWhat is 3+4?<|assistant|>add\n{"a": 3, "b": 4}<|observation|>\n{"result": 7}<|assistant|>\nIt is 7.</s>'
    )
    learned = [rendering.text[s:e] for s, e in rendering.answer_spans]
    assert learned == ['add\n{"a": 3, "b": 4}<|observation|>', "\nIt is 7.</s>"]


def test_tool_format_override_changes_only_the_tool_spelling(mistral):
    tpl = resolve_template("chatml", mistral, tool_format="qwen")
    assert tpl.name == "chatml" and tpl.tool_format.name == "qwen"
    text = tpl.render(_Tokens(), AGENT, tools=TOOLS).text
    assert "<tools>" in text and "<tool_call>" in text
    assert "<|im_start|>tool\n<tool_response>\n" in text  # chatml's tool turn, qwen's result spelling


# --- agent data from the dataset converter ----------------------------------------------------------


def glaive_samples(n: int = 6) -> list[dict]:
    path = SHARED / "data" / "glaive_toolcall_en_demo.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    rows = json.loads(path.read_text())
    attr = DatasetAttr.from_entry(
        "glaive", {"file_name": path.name, "formatting": "sharegpt", "columns": {"messages": "conversations", "tools": "tools"}},
        source=str(path.parent / "dataset_info.json"),
    )
    samples = [get_format("sharegpt").convert(attr, row) for row in rows]
    with_calls = [s for s in samples if s["tools"] and any(m["role"] == "function" for m in s["messages"])]
    return with_calls[:n]


@pytest.mark.parametrize(
    "template, folder",
    [
        ("qwen", "qwen2-instruct-boundless"),
        ("llama3", "llama3.2-instruct"),
        ("mistral", "mistral-7b-instruct-v0.3"),
        ("glm4", "qwen2-instruct-boundless"),
        ("chatml", "qwen2-instruct-boundless"),
        ("default", "gpt2-dialogpt-small"),
    ],
)
def test_glaive_tool_rows_encode(template, folder):
    """Rows of the glaive demo (sharegpt with function_call / observation turns and a tools column):
    tool calls are learned in the template's spelling, tool results never are."""
    tokenizer = load(folder)
    tpl = get_template(template)
    tpl.fix_tokenizer(tokenizer)  # e.g. glm4's role tokens on the Qwen2 vocabulary
    samples = glaive_samples()
    assert len(samples) >= 3
    for sample in samples:
        messages = sample["messages"]
        pairs = tpl.encode(tokenizer, messages, system=sample["system"], tools=sample["tools"])
        assert len(pairs) == len(messages) // 2
        text = tpl.render(tokenizer, messages, system=sample["system"], tools=sample["tools"]).text
        assert flat(pairs) == tokenizer(text, add_special_tokens=False)["input_ids"]
        for k, (prompt, answer) in enumerate(pairs):
            turn = messages[2 * k + 1]
            learned = tokenizer.decode(answer)
            if turn["role"] == "function":
                for call in load_calls(turn["content"]):
                    assert call.name in learned
            if k > 0 and messages[2 * k]["role"] == "observation":
                result = messages[2 * k]["content"]
                assert result[:40] in tokenizer.decode(prompt) and result[:40] not in learned
