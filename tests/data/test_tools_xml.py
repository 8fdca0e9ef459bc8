"""The XML tool formats (qwen3_5, glm4_moe, glm4_7, minimax2, seed_oss): exact text, round trips, vendor parity.

Parity renders one tool conversation with the vendor's own jinja file (`render_vendor`, as
transformers renders it) and compares it with lathe's text through the registered template whose
default format it is (GLM's are in tests/data/test_templates_glm.py).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lathe.data.templates import ToolCall, get_tool_format, resolve_template
from lathe.data.templates.tools import wrap_function
from lathe.errors import LatheError
from tests.data.test_templates_vendor import AGENT, SYSTEM, render_vendor

XML = ("qwen3_5", "glm4_moe", "glm4_7", "minimax2", "seed_oss")
ADD = {"name": "add", "description": "Add two numbers", "parameters": {"type": "object", "properties": {
    "a": {"type": "integer", "description": "first"}, "b": {"type": "integer"}}, "required": ["a"]}}
NOW = {"name": "now", "description": "The time", "parameters": {"type": "object", "properties": {}}}
TOOLS = json.dumps([ADD, NOW])
VENDOR_TOOLS = [wrap_function(t) for t in (ADD, NOW)]  # what an OpenAI-style server hands the template
RICH = [  # values of every JSON kind; strings with newlines, markup-free unicode and spaces
    ToolCall("write", json.dumps({"path": "a b.txt", "text": "line 1\n  line 2\n", "n": 3, "x": 1.5, "ok": True,
                                  "none": None, "tags": ["x", 1], "meta": {"k": "v"}, "name": "Zürich"},
                                 ensure_ascii=False)),
    ToolCall("now", "{}"),
]
NO_TOKENS = SimpleNamespace(bos_token="", eos_token="")


@pytest.mark.parametrize("name", XML)
def test_rich_calls_round_trip(name):
    fmt = get_tool_format(name)
    text = fmt.format_calls(RICH)
    assert fmt.parse(text) == RICH
    assert fmt.parse("Let me check.\n" + text + "\n") == RICH  # text before the calls is allowed


@pytest.mark.parametrize("name", XML)
@pytest.mark.parametrize("text", ["It is 7.", '<tool_call>\n{"name": "add", "arguments": {"a": 3}}\n</tool_call>', ""])
def test_plain_answers_and_other_spellings_are_not_calls(name, text):
    assert get_tool_format(name).parse(text) is None


def test_call_text_and_values_read_back():
    calls = [ToolCall("add", '{"a": 3, "q": "hi there"}')]
    assert get_tool_format("qwen3_5").format_calls(calls) == (
        "<tool_call>\n<function=add>\n<parameter=a>\n3\n</parameter>\n<parameter=q>\nhi there\n</parameter>\n"
        "</function>\n</tool_call>"
    )
    assert get_tool_format("glm4_moe").format_calls(calls) == (
        "<tool_call>add\n<arg_key>a</arg_key>\n<arg_value>3</arg_value>\n<arg_key>q</arg_key>\n"
        "<arg_value>hi there</arg_value>\n</tool_call>"
    )
    assert get_tool_format("glm4_7").format_calls(calls + calls[:1]) == 2 * (
        "<tool_call>add<arg_key>a</arg_key><arg_value>3</arg_value><arg_key>q</arg_key><arg_value>hi there</arg_value>"
        "</tool_call>"
    )
    assert get_tool_format("minimax2").format_calls(calls) == (
        '<minimax:tool_call>\n<invoke name="add">\n<parameter name="a">3</parameter>\n'
        '<parameter name="q">hi there</parameter>\n</invoke>\n</minimax:tool_call>'
    )
    assert get_tool_format("seed_oss").format_calls(calls) == (
        "<seed:tool_call>\n<function=add>\n<parameter=a>3</parameter>\n<parameter=q>hi there</parameter>\n"
        "</function>\n</seed:tool_call>"
    )
    # Generated text as the models write it: JSON values become data, the rest stays text.
    assert get_tool_format("qwen3_5").parse(
        "<think>\nadd them\n</think>\n\n<tool_call>\n<function=add>\n<parameter=a>\n3\n</parameter>\n"
        "<parameter=q>\n[1, 2]\n</parameter>\n<parameter=s>\nnot json\n</parameter>\n</function>\n</tool_call>"
    ) == [ToolCall("add", '{"a": 3, "q": [1, 2], "s": "not json"}')]
    assert get_tool_format("glm4_moe").parse(
        "<tool_call>add\n<arg_key>a</arg_key>\n<arg_value>true</arg_value>\n</tool_call>"
    ) == [ToolCall("add", '{"a": true}')]


def test_unfinished_or_non_object_calls():
    assert get_tool_format("qwen3_5").parse("<tool_call>\n<function=add>\n<parameter=a>\n3") is None
    # One complete call and one cut off: the turn is not a clean set of calls.
    assert get_tool_format("seed_oss").parse(
        "<seed:tool_call>\n<function=now>\n</function>\n</seed:tool_call>\n<seed:tool_call>\n<function=a"
    ) is None
    with pytest.raises(LatheError, match="not a JSON object"):
        get_tool_format("minimax2").render_calls('{"name": "add", "arguments": [3, 4]}')


# --- parity with the vendors' templates --------------------------------------------------------------


def lathe_text(template: str, fmt: str, system: str) -> str:
    tpl = resolve_template(template, None, tool_format=fmt)
    return tpl.render(NO_TOKENS, AGENT, system=system, tools=TOOLS).text


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_qwen3_5_tool_conversation_matches_the_vendor(system):
    """Tools before the system text in one system turn, <function=...> calls, <tool_response> results in a user turn."""
    vendor = render_vendor("qwen3.5-4b-TEMPLATE-ONLY", AGENT, system, tools=VENDOR_TOOLS)
    assert lathe_text("qwen3_5", "qwen3_5", system) + "\n" == vendor


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_minimax2_tool_conversation_matches_the_vendor(system):
    """The template's own tool format; one documented difference: the vendor writes a newline before
    the call block even with no text before it, which lathe leaves out (see MiniMax2Tools)."""
    vendor = render_vendor("minimax-m2-TEMPLATE-ONLY", AGENT, system, tools=VENDOR_TOOLS)
    tpl = resolve_template("minimax2", None).with_options(
        default_system="You are a helpful assistant."  # this M2 revision's default (see test_templates_vendor)
    )
    assert tpl.tool_format.name == "minimax2"
    text = tpl.render(NO_TOKENS, AGENT, system=system, tools=TOOLS).text
    assert "]~b]ai\n<minimax:tool_call>\n" in text and text.count("<response>") == 2  # each result wrapped once
    assert text + "\n" == vendor.replace("]~b]ai\n\n<minimax:tool_call>", "]~b]ai\n<minimax:tool_call>")


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_seed_oss_tool_conversation_matches_the_vendor(system):
    """Python-signature tool docs (and Seed's own system prompt when there is none), one tool turn per result."""
    vendor = render_vendor("seed-oss-TEMPLATE-ONLY", AGENT, system, tools=VENDOR_TOOLS)
    assert lathe_text("seed_oss", "seed_oss", system) == vendor


def test_seed_oss_tool_docs_match_the_vendor_for_every_schema_part():
    rich = {"name": "f", "description": "  F does\n things ", "parameters": {"type": "object", "properties": {
        "x": {"type": ["string", "null"], "description": "ex"}, "y": {"type": "array"}, "z": {"type": "boolean"},
        "w": {"type": "number"}}, "required": ["z"]},
        "returns": {"type": "object", "properties": {"ok": {"type": "boolean", "description": "yes"}}}}
    only_returns = {"name": "r", "description": "d", "parameters": {"type": "object", "properties": {}},
                    "returns": {"type": "object", "properties": {"n": {"type": "integer"}}}}
    fmt = get_tool_format("seed_oss")
    tools = [rich, only_returns, ADD]
    vendor = render_vendor("seed-oss-TEMPLATE-ONLY", AGENT[:1], "S", tools=[wrap_function(t) for t in tools])
    assert vendor.startswith("<seed:bos>system\n" + fmt.system_with_tools("S", fmt.render_tools(json.dumps(tools))))
    assert "def f(x: Any,y: list,z: bool,w: int):" in vendor and "- z (bool) [必填]: " in vendor


# --- the exported jinja writes the same text --------------------------------------------------------


@pytest.mark.parametrize("template, fmt", [("qwen3_5", "qwen3_5"), ("glm4_moe", "glm4_moe"), ("glm4_7", "glm4_7"),
                                           ("minimax2", "minimax2"), ("seed_oss", "seed_oss")])
@pytest.mark.parametrize("system", ["", SYSTEM])
def test_exported_jinja_writes_the_formats_text(template, fmt, system):
    from tests.data.test_templates_jinja import jinja_text, load

    tokenizer = load("mistral-7b-instruct-v0.3")
    tpl = resolve_template(template, None, tool_format=fmt)
    want = tpl.render(tokenizer, AGENT, system=system, tools=TOOLS).text
    assert jinja_text(tokenizer, tpl.to_jinja(), AGENT, system, TOOLS) == want
