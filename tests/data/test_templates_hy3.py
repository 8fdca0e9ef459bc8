"""The `hy3` template and tool format, checked against Tencent Hy3's own chat template.

`../shared/tokenizers/hunyuan-hy3-TEMPLATE-ONLY` holds the vendor's jinja file (no vocabulary; its
special tokens carry an `:opensource` suffix). Training text is compared with the vendor's
`is_training=True` rendering (every answer with its thoughts, given there as `reasoning_content`,
and its eos), prompts with its `add_generation_prompt` rendering, which adds the think block
lathe leaves to the model (`<think:opensource></think:opensource>` for `no_think`,
`<think:opensource>` for `low` / `high`).
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lathe.data.templates import (
    Slots,
    ToolCall,
    get_template,
    get_tool_format,
    resolve_template,
    to_openai_messages,
)
from lathe.data.templates.slots import split_thought
from lathe.data.templates.tools import wrap_function
from lathe.errors import LatheError
from tests.data.test_templates_vendor import (
    AGENT,
    CHAT,
    HISTORY_WITHOUT_THOUGHTS,
    SYSTEM,
    THINKING,
    lathe_prompt,
    lathe_text,
    vendor_template,
)

HY3 = "hunyuan-hy3-TEMPLATE-ONLY"
HY3_CHECKED = {"hy3"}  # the registered templates this file checks against the vendor's
EFFORTS = ("no_think", "low", "high")
OPEN_THINK = {"no_think": "<think:opensource></think:opensource>", "low": "<think:opensource>",
              "high": "<think:opensource>"}  # what the vendor's generation prompt adds after the assistant header
ADD = {"name": "add", "description": "Add two numbers", "parameters": {"type": "object", "properties": {
    "a": {"type": "integer", "description": "first"}, "b": {"type": "integer"}}, "required": ["a"]}}
NOW = {"name": "now", "description": "The time", "parameters": {"type": "object", "properties": {}}}
TOOLS = json.dumps([ADD, NOW])
VENDOR_TOOLS = [wrap_function(t) for t in (ADD, NOW)]  # what an OpenAI-style server hands the template
VALUES = {  # every JSON kind; strings with newlines, quotes, unicode and spaces
    "path": "a b.txt", "text": 'line 1\n  "quoted" it\'s {x} [y]\n', "name": "Zürich 東京", "n": 3, "neg": -12,
    "x": 1.5, "ok": True, "no": False, "none": None, "tags": ["x", 1, None, [2.5]], "meta": {"k": {"v": [False]}},
}
RICH = [ToolCall("write", json.dumps(VALUES, ensure_ascii=False)), ToolCall("now", "{}")]
NO_TOKENS = SimpleNamespace(bos_token="", eos_token="")
EOS = "<｜hy_eos:opensource｜>"


def vendor(messages, system: str = "", tools: bool = False, **kwargs) -> str:
    """The vendor's text for lathe-schema `messages` as transformers renders it (see `render_vendor`),
    their <think> blocks passed as `reasoning_content`, tool-call arguments as mappings."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    conversation = to_openai_messages(messages, system)
    for message in conversation:
        if message["role"] == "assistant" and "</think>" in (message.get("content") or ""):
            message["reasoning_content"], message["content"] = split_thought(message["content"])
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    if tools:
        kwargs["tools"] = VENDOR_TOOLS
    return env.from_string(vendor_template(HY3)).render(messages=conversation, **kwargs)


def hy3(**options):
    return get_template("hy3").with_options(**options) if options else get_template("hy3")


def text_with_tools(messages, system="", **options) -> str:
    return hy3(**options).render(NO_TOKENS, messages, system=system, tools=TOOLS).text


def prompt_with_tools(messages, system="", **options) -> str:
    return hy3(**options).render_prompt(NO_TOKENS, messages, system=system, tools=TOOLS)


def answers(messages, system="", tools="", **options) -> list[str]:
    rendering = hy3(**options).render(NO_TOKENS, messages, system=system, tools=tools)
    return [rendering.text[start:end] for start, end in rendering.answer_spans]


# --- training text ----------------------------------------------------------------------------------


@pytest.mark.parametrize("effort", EFFORTS)
@pytest.mark.parametrize("system", ["", SYSTEM])
def test_training_text_matches_the_vendor(system, effort):
    # The reasoning-mode tag follows the system text, and is written without one too.
    for messages in (CHAT, CHAT[:2], THINKING, THINKING[2:]):
        assert lathe_text("hy3", messages, system, reasoning_effort=effort) == vendor(
            messages, system, is_training=True, reasoning_effort=effort
        )
    head = "<｜hy_begin_of_sentence:opensource｜>" + system + "<｜reasoning_mode:opensource｜>reasoning_effort:" + effort
    assert lathe_text("hy3", CHAT, system, reasoning_effort=effort).startswith(head + "<｜hy_User:opensource｜>Hi there")


def test_answers_learn_their_think_block_and_eos():
    # An answer without thoughts starts with the empty block the model writes itself; thoughts are
    # written in Hy3's tokens, stripped of the newlines around them (the vendor takes them so).
    assert answers(CHAT) == [f"<think:opensource></think:opensource>Hello! How can I help?{EOS}",
                             f"<think:opensource></think:opensource>Sure: {{content}}.{EOS}"]
    assert answers(THINKING) == [f"<think:opensource>A greeting.</think:opensource>Hello!{EOS}",
                                 f"<think:opensource>Sum.</think:opensource>2+2 equals 4.{EOS}"]
    # Unlearned history (mask_history, preference data) is written as a prompt shows it: thoughts dropped.
    history = hy3().render(NO_TOKENS, THINKING, learn_history=False)
    assert "A greeting." not in history.text and "Sum." in history.text
    assert "A greeting." in hy3(preserve_thinking=True).render(NO_TOKENS, THINKING, learn_history=False).text


# --- prompts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("effort", EFFORTS)
@pytest.mark.parametrize("system", ["", SYSTEM])
def test_generation_prompts_end_at_the_assistant_header(system, effort):
    # The vendor's prompt adds the think block (empty for no_think, opened for low/high): lathe's
    # answers start with it (learned), so the model writes it.
    for messages in (CHAT[:1], CHAT[:3]):
        want = vendor(messages, system, add_generation_prompt=True, reasoning_effort=effort)
        assert lathe_prompt("hy3", messages, system, reasoning_effort=effort) + OPEN_THINK[effort] == want
    # A prompt is the training text before the last answer.
    text = lathe_text("hy3", CHAT, system, reasoning_effort=effort)
    assert text.startswith(lathe_prompt("hy3", CHAT[:3], system, reasoning_effort=effort))


def test_prompts_drop_earlier_thoughts_as_the_vendor_does():
    want = vendor(THINKING[:3], SYSTEM, add_generation_prompt=True)
    assert lathe_prompt("hy3", THINKING[:3], SYSTEM) + OPEN_THINK["no_think"] == want
    assert lathe_prompt("hy3", THINKING[:3], SYSTEM) == lathe_prompt("hy3", HISTORY_WITHOUT_THOUGHTS, SYSTEM)
    # preserve_thinking is the vendor's preserved_thinking.
    kept = vendor(THINKING[:3], SYSTEM, add_generation_prompt=True, preserved_thinking=True)
    assert lathe_prompt("hy3", THINKING[:3], SYSTEM, preserve_thinking=True) + OPEN_THINK["no_think"] == kept
    # With tools the vendor keeps them by default (its preserved_thinking defaults to true then);
    # lathe keeps them only with preserve_thinking, whatever the tools.
    with_tools = vendor(THINKING[:3], SYSTEM, tools=True, add_generation_prompt=True)
    assert prompt_with_tools(THINKING[:3], SYSTEM, preserve_thinking=True) + OPEN_THINK["no_think"] == with_tools
    assert "A greeting." not in prompt_with_tools(THINKING[:3], SYSTEM)


# --- tools ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("effort", EFFORTS)
@pytest.mark.parametrize("system", ["", SYSTEM])
def test_tool_conversation_matches_the_vendor(system, effort):
    """Tools after the system text, the reasoning-mode tag after them; the call block, results in a
    <tool_responses> block; the last answer with its thoughts."""
    final = {"role": "assistant", "content": "<think>\nDone.\n</think>\n\n7; it is noon."}
    for messages in (AGENT, [*AGENT[:3], final]):
        assert text_with_tools(messages, system, reasoning_effort=effort) == vendor(
            messages, system, tools=True, is_training=True, reasoning_effort=effort
        )
    # Prompts after the user turn and after the results.
    for end in (1, 3):
        want = vendor(AGENT[:end], system, tools=True, add_generation_prompt=True, reasoning_effort=effort)
        assert prompt_with_tools(AGENT[:end], system, reasoning_effort=effort) + OPEN_THINK[effort] == want
    # Two rounds of calls, then more turns: each round's results get their own block.
    rounds = [*AGENT[:3], *AGENT[1:3], final, {"role": "user", "content": "Again?"}, {"role": "assistant", "content": "No."}]
    assert text_with_tools(rounds, system, reasoning_effort=effort) == vendor(
        rounds, system, tools=True, is_training=True, reasoning_effort=effort
    )
    assert prompt_with_tools(rounds[:5], system, reasoning_effort=effort) + OPEN_THINK[effort] == vendor(
        rounds[:5], system, tools=True, add_generation_prompt=True, reasoning_effort=effort
    )
    tools_end = "you should print </tool_calls:opensource><｜reasoning_mode:opensource｜>reasoning_effort:" + effort
    assert tools_end + "<｜hy_User:opensource｜>" in text_with_tools(AGENT, system, reasoning_effort=effort)


def test_tool_calls_and_results_spelling():
    call = answers(AGENT, tools=TOOLS)[0]
    assert call == (
        "<think:opensource></think:opensource><tool_calls:opensource>\n"
        "<tool_call:opensource>add<tool_sep:opensource>\n"
        "<arg_key:opensource>a</arg_key:opensource>\n<arg_value:opensource>3</arg_value:opensource>\n"
        "<arg_key:opensource>b</arg_key:opensource>\n<arg_value:opensource>4</arg_value:opensource>\n"
        "</tool_call:opensource>\n<tool_call:opensource>now<tool_sep:opensource>\n</tool_call:opensource>\n"
        f"</tool_calls:opensource>{EOS}"
    )
    text = text_with_tools(AGENT)
    assert (
        "<tool_responses:opensource>\n<tool_response:opensource>\n{\"result\": 7}\n</tool_response:opensource>\n"
        "<tool_response:opensource>\n\"12:00\"\n</tool_response:opensource>\n</tool_responses:opensource>"
        "<｜hy_Assistant:opensource｜>"
    ) in text
    assert get_template("hy3").parse_tool_calls(call) == [ToolCall("add", '{"a": 3, "b": 4}'), ToolCall("now", "{}")]


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_every_json_value_kind_matches_the_vendor_and_reads_back(system):
    function = json.dumps([{"name": c.name, "arguments": c.args} for c in RICH], ensure_ascii=False)
    messages = [AGENT[0], {"role": "function", "content": function}, *AGENT[2:]]
    assert text_with_tools(messages, system) == vendor(messages, system, tools=True, is_training=True)
    fmt = get_tool_format("hy3")
    text = fmt.format_calls(RICH)
    assert fmt.parse(text) == RICH
    assert fmt.parse("<think:opensource>add them</think:opensource>" + text + EOS) == RICH
    assert fmt.parse(fmt.format_calls(RICH[1:])) == RICH[1:]


@pytest.mark.parametrize("text", [
    "It is 7.",
    "",
    "<tool_calls:opensource>\n",  # opened, nothing in it
    "<tool_calls:opensource>\n<tool_call:opensource>add<tool_sep:opensource>\n<arg_key:opensource>a",  # cut off
    ("<tool_calls:opensource>\n<tool_call:opensource>add<tool_sep:opensource>\n{\"a\": 3}\n</tool_call:opensource>\n"
     "</tool_calls:opensource>"),  # a JSON body is another format's call
    "<tool_call>add\n<arg_key>a</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",  # GLM's spelling
    '<tool_call>\n{"name": "add", "arguments": {"a": 3}}\n</tool_call>',  # Qwen's
])
def test_plain_answers_and_other_spellings_are_not_calls(text):
    assert get_tool_format("hy3").parse(text) is None


def test_values_read_back_as_json_where_they_are_json():
    text = ("<tool_calls:opensource>\n<tool_call:opensource>add<tool_sep:opensource>\n"
            "<arg_key:opensource>a</arg_key:opensource>\n<arg_value:opensource>[1, 2]</arg_value:opensource>\n"
            "<arg_key:opensource>s</arg_key:opensource>\n<arg_value:opensource>not json</arg_value:opensource>\n"
            "</tool_call:opensource>\n</tool_calls:opensource>")
    assert get_tool_format("hy3").parse(text) == [ToolCall("add", '{"a": [1, 2], "s": "not json"}')]
    with pytest.raises(LatheError, match="not a JSON object"):
        get_tool_format("hy3").render_calls('{"name": "add", "arguments": [3, 4]}')


# --- options, slots and the exported jinja ----------------------------------------------------------


def test_reasoning_efforts_are_the_templates_own():
    assert get_template("hy3").reasoning_effort == "no_think"
    assert get_template("hy3").slots.reasoning_efforts == EFFORTS
    assert hy3(reasoning_effort="no_think") is get_template("hy3")
    with pytest.raises(LatheError, match="use one of no_think, low, high"):
        hy3(reasoning_effort="medium")
    with pytest.raises(LatheError, match="reasoning_effort.*use one of low, medium, high"):
        get_template("gpt_oss").with_options(reasoning_effort="no_think")
    assert resolve_template("hy3", None, reasoning_effort="high").reasoning_effort == "high"
    with pytest.raises(LatheError, match="use one of no_think, low, high"):
        Slots(name="t", system="{content}{reasoning_effort}", reasoning_effort="max", reasoning_efforts=EFFORTS)
    with pytest.raises(LatheError, match="must give the default"):
        Slots(name="t", system="{content}{reasoning_effort}")


def test_system_always_needs_a_system_slot():
    with pytest.raises(LatheError, match="system_always"):
        Slots(name="t", system_always=True)
    assert Slots(name="t", system="[{content}]", system_always=True).system_always


def test_special_tokens_and_stop_words():
    tpl = get_template("hy3")
    assert tpl.stop_words == [EOS] and tpl.tool_format.name == "hy3" and tpl.reasoning
    text = text_with_tools([*AGENT[:3], {"role": "assistant", "content": "<think>\nT\n</think>\n\nA"}], SYSTEM)
    # Every markup token the text uses is declared, so fix_tokenizer adds what a vocabulary lacks.
    used = set(re.findall(r"<[｜/]?[\w｜]+:opensource｜?>", text))
    assert used and used <= set(tpl.slots.special_tokens) | set(tpl.stop_words)


@pytest.mark.parametrize("options", [{}, {"reasoning_effort": "high"}, {"preserve_thinking": True}])
def test_exported_jinja_writes_the_same_text(options):
    from tests.data.test_templates_jinja import jinja_text, load

    tokenizer = load("mistral-7b-instruct-v0.3")
    tpl = hy3(**options)
    jinja = tpl.to_jinja()
    for messages, tools in ((THINKING, ""), (AGENT, TOOLS)):
        for system in ("", SYSTEM):
            assert jinja_text(tokenizer, jinja, messages, system, tools) == tpl.render(
                tokenizer, messages, system=system, tools=tools).text
            assert jinja_text(tokenizer, jinja, messages[:3], system, tools, add_generation_prompt=True) == (
                tpl.render_prompt(tokenizer, messages[:3], system=system, tools=tools))
    # A server may pass its own effort, as to the vendor's template.
    served = jinja_text(tokenizer, get_template("hy3").to_jinja(), CHAT[:1], "", "", add_generation_prompt=True,
                        reasoning_effort="low")
    assert served == lathe_prompt("hy3", CHAT[:1], reasoning_effort="low")
