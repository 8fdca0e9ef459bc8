"""The `gpt_oss` template (OpenAI's harmony format) and the `gpt_oss` tool format, against the vendor's template.

`../shared/tokenizers/gpt-oss-120b-TEMPLATE-ONLY` holds gpt-oss's jinja chat template without a
vocabulary: it is rendered with jinja2 as transformers renders it, and the texts are compared.
The one difference everywhere: the vendor writes `Current date: <today>` into the system
message (with `strftime_now`); lathe writes no date line, so the training text does not change
from day to day. The vendor's text is compared with that line taken out.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoTokenizer

from lathe.data.formats import TOOL_RESPONSE_JOIN
from lathe.data.templates import ToolCall, get_template, get_tool_format, to_openai_messages
from lathe.data.templates.slots import split_thought
from lathe.data.templates.tool_calls import wrap_function
from lathe.errors import LatheError
from tests.conftest import SHARED
from tests.data.test_templates_vendor import CHAT, SYSTEM, THINKING  # the conversations every parity test uses

GPT_OSS_CHECKED = {"gpt_oss"}  # the registered templates this file checks against the vendor's
FOLDER = SHARED / "tokenizers" / "gpt-oss-120b-TEMPLATE-ONLY"
DATE = "2026-01-02"
TOKENS = SimpleNamespace(bos_token="", eos_token="")
TOOLS = [
    {"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "description": "first"}, "b": {"type": "number"}},
        "required": ["a"]}}},
    {"name": "now", "description": "The time", "parameters": {"type": "object", "properties": {}}},
]
AGENT = [
    {"role": "user", "content": "Add 3 and 4."},
    {"role": "function", "content": json.dumps({"name": "add", "arguments": {"a": 3, "b": 4}})},
    {"role": "observation", "content": '{"result": 7}'},
    {"role": "assistant", "content": "<think>\nThe tool said 7.\n</think>\n\nIt is 7."},
    {"role": "user", "content": "Thanks, 你好!"},
    {"role": "assistant", "content": "You are welcome."},
]
# Schemas that take every branch of the vendor's TypeScript rendering.
SCHEMAS = [
    {"name": "bare", "description": "No parameters"},
    {"name": "empty", "description": "Empty", "parameters": {"type": "object", "properties": {}}},
    {"name": "kinds", "description": "Every kind", "parameters": {"type": "object", "required": ["s", "o"], "properties": {
        "s": {"type": "string", "description": "a string"},
        "e": {"type": "string", "enum": ["x", "y"], "default": "x"},
        "ns": {"type": "string", "nullable": True},
        "i": {"type": "integer", "default": 3},
        "f": {"type": "number"},
        "b": {"type": "boolean", "default": False},
        "sa": {"type": "array", "items": {"type": "string"}},
        "ia": {"type": "array", "items": {"type": "integer"}, "nullable": True},
        "ba": {"type": "array", "items": {"type": "boolean"}},
        "oa": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
        "aa": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        "na": {"type": "array"},
        "o": {"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "integer"}}, "required": ["x"]},
        "eo": {"type": "object"},
        "u": {"oneOf": [{"type": "string", "description": "text"}, {"type": "number", "default": 1}]},
        "uo": {"oneOf": [{"type": "object"}, {"type": "string"}], "default": "z"},
        "t": {"type": ["string", "null"]},
        "t1": {"type": ["integer"]},
        "any": {"description": "untyped", "default": {"k": [1, None]}},
    }}},
]


def vendor_messages(messages, system: str = "") -> list[dict]:
    """lathe's messages as the vendor's template takes them: the thoughts of an answer in `thinking`."""
    out = to_openai_messages(messages, system)
    for message in out:
        if message["role"] == "assistant" and "</think>" in message.get("content", ""):
            message["thinking"], message["content"] = split_thought(message["content"])
    return out


def render_vendor(messages, system: str = "", tools=None, **kwargs) -> str:
    """The vendor's template rendered as transformers renders it, with its date line taken out."""
    path = FOLDER / "chat_template.jinja"
    if not path.is_file():
        pytest.skip(f"{path} not found (the shared/ folder next to the repo)")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda value, **_: json.dumps(value, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: DATE
    tools = [wrap_function(tool) for tool in tools] if tools else None  # the vendor reads `tool.function`
    text = env.from_string(path.read_text()).render(messages=vendor_messages(messages, system), tools=tools, **kwargs)
    assert text.count(f"Current date: {DATE}\n") == 1
    return text.replace(f"Current date: {DATE}\n", "")


def template(**options):
    return get_template("gpt_oss").with_options(**options) if options else get_template("gpt_oss")


def lathe_text(messages, system: str = "", tools=None, **options) -> str:
    return template(**options).render(TOKENS, messages, system=system, tools=json.dumps(tools) if tools else "").text


def lathe_prompt(messages, system: str = "", tools=None, **options) -> str:
    return template(**options).render_prompt(TOKENS, messages, system=system, tools=json.dumps(tools) if tools else "")


def answers(messages, system: str = "", tools=None, **options) -> list[str]:
    rendering = template(**options).render(TOKENS, messages, system=system, tools=json.dumps(tools) if tools else "")
    return [rendering.text[start:end] for start, end in rendering.answer_spans]


# --- text parity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_multi_turn_text(system):
    assert lathe_text(CHAT, system) == render_vendor(CHAT, system)
    assert lathe_text(CHAT[:2], system) == render_vendor(CHAT[:2], system)
    text = lathe_text(CHAT, system)
    assert text.startswith("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
                           "Knowledge cutoff: 2024-06\n\nReasoning: medium\n\n# Valid channels:")
    assert ("<|start|>developer<|message|># Instructions\n\n" + SYSTEM + "\n\n<|end|>" in text) == bool(system)
    assert text.endswith("<|start|>user<|message|>Write {content} literally.<|end|>"
                         "<|start|>assistant<|channel|>final<|message|>Sure: {content}.<|return|>")


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_thoughts_go_to_the_analysis_channel_of_the_last_answer(system):
    # The vendor writes the analysis of the last answer only; lathe drops earlier thoughts too.
    text = lathe_text(THINKING, system)
    assert text == render_vendor(THINKING, system)
    assert text.endswith("<|start|>assistant<|channel|>analysis<|message|>Sum.<|end|>"
                         "<|start|>assistant<|channel|>final<|message|>2+2 equals 4.<|return|>")
    assert "A greeting." not in text and "<think>" not in text
    assert lathe_text(THINKING[:2], system) == render_vendor(THINKING[:2], system)


def test_preserve_thinking_keeps_earlier_analysis():
    text = lathe_text(THINKING, preserve_thinking=True)
    assert ("<|start|>assistant<|channel|>analysis<|message|>A greeting.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Hello!<|end|>") in text
    assert text.replace("<|channel|>analysis<|message|>A greeting.<|end|><|start|>assistant", "") == lathe_text(THINKING)


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_generation_prompt(system):
    for messages in (CHAT[:1], CHAT[:3], THINKING[:3]):
        prompt = lathe_prompt(messages, system)
        assert prompt == render_vendor(messages, system, add_generation_prompt=True)
        assert prompt.endswith("<|end|><|start|>assistant")
    # What a prompt holds is what training wrote before the last answer.
    assert lathe_text(THINKING).startswith(lathe_prompt(THINKING[:3]))


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_reasoning_effort(effort):
    assert lathe_text(THINKING, SYSTEM, reasoning_effort=effort) == render_vendor(
        THINKING, SYSTEM, reasoning_effort=effort
    )
    assert f"\n\nReasoning: {effort}\n\n" in lathe_prompt(CHAT[:1], reasoning_effort=effort)
    assert template(reasoning_effort=effort).reasoning_effort == effort
    assert template(reasoning_effort=effort).with_options(tool_format="gpt_oss").reasoning_effort == effort


def test_reasoning_effort_default_and_refusals():
    assert get_template("gpt_oss").reasoning_effort == "medium"
    assert template(reasoning_effort="medium") is get_template("gpt_oss")
    with pytest.raises(LatheError, match="use one of low, medium, high"):
        template(reasoning_effort="extreme")
    with pytest.raises(LatheError, match="has no reasoning-effort setting"):
        get_template("qwen").with_options(reasoning_effort="high")


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_tool_conversation(system):
    assert lathe_text(AGENT, system, TOOLS) == render_vendor(AGENT, system, TOOLS)
    for end in (1, 3, 5):
        assert lathe_prompt(AGENT[:end], system, TOOLS) == render_vendor(
            AGENT[:end], system, TOOLS, add_generation_prompt=True
        )
    assert lathe_text(AGENT[:2], system, TOOLS) == render_vendor(AGENT[:2], system, TOOLS)
    text = lathe_text(AGENT, system, TOOLS)
    assert ("<|start|>assistant to=functions.add<|channel|>commentary json<|message|>{\"a\": 3, \"b\": 4}<|call|>"
            '<|start|>functions.add to=assistant<|channel|>commentary<|message|>"{\\"result\\": 7}"<|end|>') in text
    assert "Calls to these tools must go to the commentary channel: 'functions'.<|end|>" in text
    assert "Calls to these tools" not in lathe_text(CHAT, system)


def test_tools_namespace_matches_the_vendor_for_every_kind_of_schema():
    text = lathe_text(CHAT[:2], SYSTEM, SCHEMAS)
    assert text == render_vendor(CHAT[:2], SYSTEM, SCHEMAS)
    assert "type bare = () => any;\n\n" in text and "o: {\nx: \n                string, y?: \n" in text


# --- learned spans ----------------------------------------------------------------------------------


def test_learned_spans():
    # The answers are learned with the analysis and final messages; only the last ends with the
    # learned <|return|>: the <|end|> that replaces it in history is context, like every prompt part.
    assert answers(CHAT, SYSTEM) == ["<|channel|>final<|message|>Hello! How can I help?",
                                     "<|channel|>final<|message|>Sure: {content}.<|return|>"]
    assert answers(THINKING) == [
        "<|channel|>final<|message|>Hello!",
        "<|channel|>analysis<|message|>Sum.<|end|><|start|>assistant<|channel|>final<|message|>2+2 equals 4.<|return|>",
    ]
    assert answers(AGENT, SYSTEM, TOOLS) == [
        ' to=functions.add<|channel|>commentary json<|message|>{"a": 3, "b": 4}<|call|>',
        "<|channel|>final<|message|>It is 7.",
        "<|channel|>final<|message|>You are welcome.<|return|>",
    ]
    assert answers(AGENT[:4], SYSTEM, TOOLS)[-1] == (
        "<|channel|>analysis<|message|>The tool said 7.<|end|><|start|>assistant"
        "<|channel|>final<|message|>It is 7.<|return|>"
    )
    # A tool call that ends the conversation ends with its own <|call|>, and nothing follows it.
    assert answers(AGENT[:2], tools=TOOLS)[-1].endswith("<|call|>")
    assert lathe_text(AGENT[:2], tools=TOOLS).endswith("<|call|>")


def test_ids_mask_exactly_on_a_real_vocabulary():
    folder = SHARED / "tokenizers" / "qwen2-instruct-boundless"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tpl = get_template("gpt_oss")
    assert set(tpl.fix_tokenizer(tokenizer)) >= {"<|start|>", "<|channel|>", "<|return|>", "<|call|>"}
    pairs = tpl.encode(tokenizer, AGENT, system=SYSTEM, tools=json.dumps(TOOLS))
    assert [tokenizer.decode(answer) for _, answer in pairs] == answers(AGENT, SYSTEM, TOOLS)
    rendering = tpl.render(tokenizer, AGENT, system=SYSTEM, tools=json.dumps(TOOLS))
    assert [i for p, a in pairs for i in p + a] == tokenizer(rendering.text, add_special_tokens=False)["input_ids"]


# --- tool calls -------------------------------------------------------------------------------------

VALUES = {"s": 'a "quoted" line\nand 你好', "i": -3, "f": 2.5, "t": True, "n": None, "l": [1, "x", [False]],
          "o": {"k": {"deep": []}}, "e": ""}


def test_calls_round_trip_every_json_value():
    fmt = get_tool_format("gpt_oss")
    calls = [ToolCall("lookup", json.dumps(VALUES, ensure_ascii=False)), ToolCall("now", "{}")]
    for some in (calls[:1], calls):
        text = fmt.format_calls(some)
        assert fmt.parse(text) == some
        assert get_template("gpt_oss").parse_tool_calls(text) == some
    assert fmt.format_calls(calls).count("<|start|>assistant to=functions.") == 1  # one message per call


def test_parses_the_harmony_librarys_spelling_and_thoughts_before_a_call():
    fmt = get_tool_format("gpt_oss")
    args = json.dumps(VALUES, ensure_ascii=False)
    want = [ToolCall("lookup", args)]
    for text in (
        f"<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>{args}<|call|>",
        (f"<|channel|>analysis<|message|>Look it up.<|end|><|start|>assistant<|channel|>commentary "
         f"to=functions.lookup <|constrain|>json<|message|>{args}<|call|>"),
        f" to=functions.lookup<|channel|>commentary <|constrain|>json<|message|>{args}",  # stop word cut off
        f"<|start|>assistant to=functions.lookup<|channel|>commentary json<|message|> {args} <|call|>",
    ):
        assert fmt.parse(text) == want, text


def test_plain_answers_are_not_calls():
    fmt = get_tool_format("gpt_oss")
    for text in ("Hello!", "<|channel|>final<|message|>Hello!<|return|>", '{"name": "add", "arguments": {"a": 1}}',
                 "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>4",
                 "to=functions.add<|channel|>commentary json<|message|>not json<|call|>",
                 "to=functions.add<|channel|>commentary json<|message|>[1, 2]<|call|>"):
        assert fmt.parse(text) is None, text


def test_results_are_named_after_their_calls():
    fmt = get_tool_format("gpt_oss")
    calls = json.dumps([{"name": "add", "arguments": {}}, {"name": "now", "arguments": {}}])
    assert fmt.render_results("7" + TOOL_RESPONSE_JOIN + "noon", calls) == (
        '<|start|>functions.add to=assistant<|channel|>commentary<|message|>"7"<|end|>'
        '<|start|>functions.now to=assistant<|channel|>commentary<|message|>"noon"<|end|>'
    )
    with pytest.raises(LatheError, match="follows no tool call"):
        fmt.render_results("7", "")


# --- the exported jinja -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def any_tokenizer():
    folder = SHARED / "tokenizers" / "mistral-7b-instruct-v0.3"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return AutoTokenizer.from_pretrained(str(folder))


def served(tokenizer, tpl, messages, system="", tools=None, **kwargs) -> str:
    return tokenizer.apply_chat_template(to_openai_messages(messages, system), tools=tools, tokenize=False,
                                         chat_template=tpl.to_jinja(), **kwargs)


@pytest.mark.parametrize("options", [{}, {"reasoning_effort": "high"}, {"preserve_thinking": True}])
def test_exported_jinja_writes_what_lathe_trains_on(any_tokenizer, options):
    tpl = template(**options)
    cases = [(CHAT, "", None), (THINKING, SYSTEM, None), (AGENT, "", TOOLS), (AGENT, SYSTEM, TOOLS),
             (THINKING, SYSTEM, SCHEMAS)]
    for messages, system, tools in cases:
        tools_json = json.dumps(tools) if tools else ""
        for end in range(1, len(messages) + 1):
            part = messages[:end]
            if end % 2 == 0:
                want = tpl.render(any_tokenizer, part, system=system, tools=tools_json).text
            else:
                want = tpl.render_prompt(any_tokenizer, part, system=system, tools=tools_json)
            got = served(any_tokenizer, tpl, part, system, tools, add_generation_prompt=end % 2 == 1)
            assert got == want, (options, system, end)


def test_exported_jinja_takes_the_reasoning_effort_when_serving(any_tokenizer):
    got = served(any_tokenizer, get_template("gpt_oss"), CHAT[:1], reasoning_effort="low", add_generation_prompt=True)
    assert got == lathe_prompt(CHAT[:1], reasoning_effort="low")


def test_special_tokens_and_stop_words():
    tpl = get_template("gpt_oss")
    assert tpl.stop_words == ["<|return|>", "<|call|>"]
    assert set(tpl.slots.special_tokens) == {"<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>",
                                             "<|return|>", "<|call|>"}
    assert tpl.tool_format.name == "gpt_oss" and tpl.reasoning


def test_slots_check_the_reasoning_effort():
    from lathe.data.templates import Slots

    with pytest.raises(LatheError, match="must give the default"):
        Slots(name="t", prefix="Reasoning: {reasoning_effort}")
    with pytest.raises(LatheError, match="use one of low, medium, high"):
        Slots(name="t", prefix="Reasoning: {reasoning_effort}", reasoning_effort="max")
    with pytest.raises(LatheError, match="cannot fill"):
        Slots(name="t", user="{reasoning_effort}{content}", reasoning_effort="low")


def test_reasoning_effort_reaches_the_template_and_is_refused_where_there_is_none():
    from lathe.data.templates import resolve_template
    from lathe.errors import LatheError

    tokens = SimpleNamespace(bos_token="", eos_token="")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    text = resolve_template("gpt_oss", None, reasoning_effort="high").render(tokens, messages).text
    assert "\nReasoning: high\n" in text
    with pytest.raises(LatheError, match="reasoning_effort.*low, medium, high"):
        resolve_template("gpt_oss", None, reasoning_effort="extreme")
    with pytest.raises(LatheError, match="template `chatml` has no reasoning-effort setting"):
        resolve_template("chatml", None, reasoning_effort="low")
