"""The `minimax1` and `ling` tool formats: exact text, round trips, plain answers, vendor parity, exported jinja.

Ling's parity renders one tool conversation with the vendor's jinja file (`render_vendor`, as
transformers renders it) and compares it with lathe's `bailing_v2` template using the `ling`
format. MiniMax-M1 has no vendor file here: its text is asserted as MiniMax's function-call
guide shows the model's input (see MiniMax1Tools).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lathe.data.formats import TOOL_RESPONSE_JOIN
from lathe.data.templates import ToolCall, get_tool_format, resolve_template
from lathe.data.templates.tools import list_tool_formats, wrap_function
from lathe.errors import LatheError
from tests.data.test_templates_vendor import AGENT, SYSTEM, render_vendor

FORMATS = ("minimax1", "ling")
LING = "ling-3.0-flash-TEMPLATE-ONLY"
ADD = {"name": "add", "description": "Add two numbers", "parameters": {"type": "object", "properties": {
    "a": {"type": "integer", "description": "first"}, "b": {"type": "integer"}}, "required": ["a"]}}
NOW = {"name": "now", "description": "The time", "parameters": {"type": "object", "properties": {}}}
TOOLS = json.dumps([ADD, NOW])
VENDOR_TOOLS = [wrap_function(t) for t in (ADD, NOW)]  # what an OpenAI-style server hands the template
RICH = [  # values of every JSON kind; strings with newlines, quotes, markup-like text and unicode
    ToolCall("write", json.dumps({"path": "a b.txt", "text": 'line 1\n  "quoted" line 2\n', "n": 3, "x": -1.5e3,
                                  "ok": True, "no": False, "none": None, "tags": ["x", 1, None],
                                  "meta": {"k": "v", "deep": {"list": [{"a": 1}]}}, "name": "Zürich 東京 🙂",
                                  "tag": "a <b> & c"}, ensure_ascii=False)),
    ToolCall("now", "{}"),
    ToolCall("add", '{"a": 3, "b": 4}'),
]
NO_TOKENS = SimpleNamespace(bos_token="", eos_token="")


def test_registered():
    assert {"minimax1", "ling"} <= set(list_tool_formats())


# --- calls: exact text, round trips, what is not a call -----------------------------------------------


def test_minimax1_call_text():
    calls = [ToolCall("add", '{"a": 3, "q": "hi\\nthere"}'), ToolCall("now", "{}")]
    assert get_tool_format("minimax1").format_calls(calls) == (
        '<tool_calls>\n{"name": "add", "arguments": {"a": 3, "q": "hi\\nthere"}}\n'
        '{"name": "now", "arguments": {}}\n</tool_calls>'
    )


def test_ling_call_text():
    calls = [ToolCall("add", '{"a": 3, "q": "hi there"}'), ToolCall("now", "{}")]
    assert get_tool_format("ling").format_calls(calls) == (
        "<tool_call>add\n<arg_key>a</arg_key>\n<arg_value>3</arg_value><arg_key>q</arg_key>\n"
        "<arg_value>hi there</arg_value>\n</tool_call>\n<tool_call>now\n\n</tool_call>"
    )


@pytest.mark.parametrize("name", FORMATS)
def test_rich_calls_round_trip(name):
    fmt = get_tool_format(name)
    for calls in (RICH, RICH[:1], RICH[1:2]):
        text = fmt.format_calls(calls)
        assert fmt.parse(text) == calls
        assert fmt.parse("<think>Let me check.</think>\n" + text + "\n") == calls  # text before the calls


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("text", [
    "",
    "It is 7.",
    '{"name": "add", "arguments": {"a": 3}}',  # the default format's bare JSON
    '<tool_call>\n{"name": "add", "arguments": {"a": 3}}\n</tool_call>',  # Qwen / Ling 2.0
    "<tool_call>add\n<arg_key>a</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",  # GLM-4.5
    '<minimax:tool_call>\n<invoke name="add">\n<parameter name="a">3</parameter>\n</invoke>\n</minimax:tool_call>',
])
def test_plain_answers_and_other_spellings_are_not_calls(name, text):
    fmt = get_tool_format(name)
    if name == "ling" and text.startswith("<tool_call>add\n<arg_key>"):
        # Ling 3.0 and GLM-4.5 differ only in newlines, which the (GLM) parser reads through.
        assert fmt.parse(text) == [ToolCall("add", '{"a": 3}')]
        return
    assert fmt.parse(text) is None


def test_other_formats_do_not_read_these_calls():
    text = get_tool_format("minimax1").format_calls(RICH)
    for other in ("qwen", "default", "glm4_moe", "ling", "minimax2"):
        assert get_tool_format(other).parse(text) is None
    assert get_tool_format("qwen").parse(get_tool_format("ling").format_calls(RICH)) is None


@pytest.mark.parametrize("name", FORMATS)
def test_cut_off_calls_are_not_calls(name):
    fmt = get_tool_format(name)
    text = fmt.format_calls(RICH)
    for cut in (len(text) - 3, len(text) // 2, 15):
        assert fmt.parse(text[:cut]) is None, text[:cut]
    # One complete turn followed by a second block cut off: not a clean set of calls.
    assert fmt.parse(text + "\n" + text[:20]) is None


def test_minimax1_reads_generated_text():
    fmt = get_tool_format("minimax1")
    # MiniMax's guide: thoughts, then one JSON line per call.
    assert fmt.parse(
        "<think>\nI will search.\n</think>\n<tool_calls>\n"
        '{"name": "search_web", "arguments": {"query_tag": ["tech"], "query_list": ["\\"OpenAI\\" release"]}}\n'
        '{"name": "search_web", "arguments": {"query_tag": ["tech"], "query_list": ["Gemini"]}}\n</tool_calls>'
    ) == [ToolCall("search_web", '{"query_tag": ["tech"], "query_list": ["\\"OpenAI\\" release"]}'),
          ToolCall("search_web", '{"query_tag": ["tech"], "query_list": ["Gemini"]}')]
    # A pretty-printed object reads too; a line that is not a call object does not.
    pretty = '<tool_calls>\n{\n  "name": "now",\n  "arguments": {}\n}\n</tool_calls>'
    assert fmt.parse(pretty) == [ToolCall("now", "{}")]
    for bad in ('<tool_calls>\n{"name": "now"}\n</tool_calls>',  # no arguments: a JSON answer, not a call
                '<tool_calls>\n[{"name": "now", "arguments": {}}]\n</tool_calls>',
                '<tool_calls>\n{"name": "now", "arguments": {}}\nand then\n</tool_calls>',
                "<tool_calls>\n</tool_calls>"):
        assert fmt.parse(bad) is None, bad


def test_ling_reads_values_as_the_vendor_writes_them():
    fmt = get_tool_format("ling")
    assert fmt.parse(
        "<tool_call>add\n<arg_key>a</arg_key>\n<arg_value>3</arg_value><arg_key>s</arg_key>\n<arg_value>not json"
        "</arg_value><arg_key>l</arg_key>\n<arg_value>[1, 2]</arg_value>\n</tool_call>"
    ) == [ToolCall("add", '{"a": 3, "s": "not json", "l": [1, 2]}')]
    with pytest.raises(LatheError, match="not a JSON object"):
        fmt.render_calls('{"name": "add", "arguments": [3, 4]}')


# --- tools and results ----------------------------------------------------------------------------------


def test_minimax1_tools_and_results_text():
    fmt = get_tool_format("minimax1")
    assert fmt.render_tools(json.dumps(VENDOR_TOOLS)) == fmt.render_tools(TOOLS) == (
        "You are provided with these tools:\n<tools>\n" + json.dumps(ADD) + "\n" + json.dumps(NOW) + "\n</tools>\n\n"
        "If you need to call tools, please respond with <tool_calls></tool_calls> XML tags, and provide tool-name "
        "and json-object of arguments, following the format below:\n<tool_calls>\n"
        '{"name": <tool-name>, "arguments": <args-json-object>}\n...\n</tool_calls>'
    )
    calls = json.dumps([{"name": "add", "arguments": {"a": 3}}, {"name": "now", "arguments": {}}])
    results = AGENT[2]["content"]
    assert fmt.render_results(results, calls) == (
        'tool name: add\ntool result: {"result": 7}\ntool name: now\ntool result: "12:00"'
    )
    assert fmt.render_results('"12:00"') == 'tool result: "12:00"'  # no call to name it


def test_ling_system_with_tools_keeps_the_thinking_switch_last():
    fmt = get_tool_format("ling")
    assert fmt.system_with_tools("detailed thinking on", "TOOLS\n") == "TOOLS\ndetailed thinking on"
    assert fmt.system_with_tools("S\ndetailed thinking off", "TOOLS\n") == "S\nTOOLS\ndetailed thinking off"
    assert fmt.system_with_tools("S", "TOOLS\n") == "S\nTOOLS\n"
    assert fmt.system_with_tools("", "TOOLS\n") == "TOOLS\n"
    assert fmt.render_results("A" + TOOL_RESPONSE_JOIN + '"12:00"') == (
        '\n<tool_response>\nA\n</tool_response>\n<tool_response>\n"12:00"\n</tool_response>'
    )


# --- whole conversations ------------------------------------------------------------------------------


def lathe_text(template: str, fmt: str, system: str) -> str:
    tpl = resolve_template(template, None, tool_format=fmt)
    return tpl.render(NO_TOKENS, AGENT, system=system, tools=TOOLS).text


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_ling_tool_conversation_matches_the_vendor(system):
    """The whole conversation, as the vendor's template writes it.

    One difference is the template's, not the tool format's (see test_templates_glm.py): with a
    system prompt the vendor appends Ling's thinking switch `\\ndetailed thinking on`, which a lathe
    sample writes itself (lathe's default system prompt is that switch alone). With tools the
    vendor writes the switch after the tools block; the `ling` format moves a trailing switch line
    of lathe's system text there, so the texts are equal.
    """
    vendor = render_vendor(LING, AGENT, system, tools=VENDOR_TOOLS)
    text = lathe_text("bailing_v2", "ling", system + "\ndetailed thinking on" if system else "")
    assert text == vendor
    assert "<tool_call>add\n<arg_key>a</arg_key>\n<arg_value>3</arg_value><arg_key>b</arg_key>" in text
    # Every tool part, in place: calls learned as the answer, results in the observation turn.
    tpl = resolve_template("bailing_v2", None, tool_format="ling")
    rendering = tpl.render(NO_TOKENS, AGENT, system=system, tools=TOOLS)
    call_turn = rendering.text[slice(*rendering.answer_spans[0])]
    assert call_turn == "<think></think>" + get_tool_format("ling").render_calls(AGENT[1]["content"]) + "<|role_end|>"
    assert get_tool_format("ling").parse(call_turn.removeprefix("<think></think>").removesuffix("<|role_end|>")) == [
        ToolCall("add", '{"a": 3, "b": 4}'), ToolCall("now", "{}")]


def test_ling_switch_in_the_middle_of_the_system_prompt_matches_the_vendor():
    # A system prompt holding the switch elsewhere: the vendor writes it as is, then the tools.
    system = "detailed thinking off\nYou are a terse pirate."
    assert lathe_text("bailing_v2", "ling", system) == render_vendor(LING, AGENT, system, tools=VENDOR_TOOLS)


def test_minimax1_tool_conversation():
    """MiniMax's guide: the tools in a second system turn (`tool_setting=tools`), one JSON line per call, named results.

    The guide's turns also name the assistant `MiniMax AI` (`ai_setting=MiniMax AI`, `ai name=MiniMax AI`)
    where the `minimax1` template (LLaMA-Factory's) writes `assistant`; that is the template's text.
    """
    assert lathe_text("minimax1", "minimax1", "") == (
        "<beginning_of_sentence>system ai_setting=assistant\nYou are a helpful assistant.<end_of_sentence>\n"
        "<beginning_of_sentence>system tool_setting=tools\nYou are provided with these tools:\n<tools>\n"
        + json.dumps(ADD) + "\n" + json.dumps(NOW) + "\n</tools>\n\n"
        "If you need to call tools, please respond with <tool_calls></tool_calls> XML tags, and provide tool-name "
        "and json-object of arguments, following the format below:\n<tool_calls>\n"
        '{"name": <tool-name>, "arguments": <args-json-object>}\n...\n</tool_calls><end_of_sentence>\n'
        "<beginning_of_sentence>user name=user\nAdd 3 and 4, and tell me the time.<end_of_sentence>\n"
        "<beginning_of_sentence>ai name=assistant\n<tool_calls>\n"
        '{"name": "add", "arguments": {"a": 3, "b": 4}}\n{"name": "now", "arguments": {}}\n'
        "</tool_calls><end_of_sentence>\n"
        '<beginning_of_sentence>tool name=tools\ntool name: add\ntool result: {"result": 7}\ntool name: now\n'
        'tool result: "12:00"<end_of_sentence>\n'
        "<beginning_of_sentence>ai name=assistant\n7; it is noon.<end_of_sentence>"
    )
    with_system = lathe_text("minimax1", "minimax1", SYSTEM)
    assert with_system.startswith(
        f"<beginning_of_sentence>system ai_setting=assistant\n{SYSTEM}<end_of_sentence>\n"
        "<beginning_of_sentence>system tool_setting=tools\nYou are provided with these tools:\n"
    )


def test_minimax1_without_a_system_prompt_keeps_the_tools_in_one_system_turn():
    tpl = resolve_template("minimax1", None, tool_format="minimax1").with_options(default_system="")
    text = tpl.render(NO_TOKENS, AGENT, system="", tools=TOOLS).text
    assert text.startswith("<beginning_of_sentence>system ai_setting=assistant\nYou are provided with these tools:")
    assert "tool_setting" not in text


# --- the exported jinja writes the same text --------------------------------------------------------


@pytest.mark.parametrize("template, fmt", [("minimax1", "minimax1"), ("bailing_v2", "ling"), ("bailing", "ling")])
@pytest.mark.parametrize("system", ["", SYSTEM, SYSTEM + "\ndetailed thinking off"])
def test_exported_jinja_writes_the_formats_text(template, fmt, system):
    from tests.data.test_templates_jinja import jinja_text, load

    tokenizer = load("mistral-7b-instruct-v0.3")
    tpl = resolve_template(template, None, tool_format=fmt)
    for messages in (AGENT, AGENT[:2], [AGENT[0], AGENT[1], AGENT[2], AGENT[1], AGENT[2], AGENT[3]]):
        want = tpl.render(tokenizer, messages, system=system, tools=TOOLS).text
        assert jinja_text(tokenizer, tpl.to_jinja(), messages, system, TOOLS) == want
