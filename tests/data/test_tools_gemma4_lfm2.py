"""The gemma4 and lfm2 tool formats: exact text, round trips, refusals, vendor parity, exported jinja.

Parity renders tool conversations with the vendors' own jinja files (`render_vendor`, as
transformers renders them) and compares them with lathe's text through the registered templates
`gemma4` and `lfm2`.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lathe.data.formats import TOOL_RESPONSE_JOIN
from lathe.data.templates import ToolCall, get_tool_format, resolve_template
from lathe.data.templates.tools import wrap_function
from lathe.errors import LatheError
from tests.data.test_templates_vendor import AGENT, SYSTEM, render_vendor

GEMMA4 = "gemma-4-31b-it-TEMPLATE-ONLY"
LFM2 = "lfm2-8b-a1b-TEMPLATE-ONLY"
ADD = {"name": "add", "description": "Add two numbers", "parameters": {"type": "object", "properties": {
    "a": {"type": "integer", "description": "first"}, "b": {"type": "integer"}}, "required": ["a"]}}
NOW = {"name": "now", "description": "The time", "parameters": {"type": "object", "properties": {}}}
TOOLS = json.dumps([ADD, NOW])
VALUES = {  # every JSON kind; strings with newlines, quotes, backslashes, unicode and brackets
    "path": "a b.txt", "text": 'line 1\n  "quoted" it\'s\\n {x} [y] (z), k=v\n', "name": "Zürich 東京 🙂",
    "n": 3, "neg": -12, "x": 1.5, "big": 1e+20, "ok": True, "no": False, "none": None,
    "tags": ["x", 1, None, True, [2.5]], "meta": {"k": "v", "inner": {"deep": [False, {"z": None}]}}, "empty": "",
}
RICH = [ToolCall("write", json.dumps(VALUES, ensure_ascii=False)), ToolCall("now", "{}")]
NO_TOKENS = SimpleNamespace(bos_token="", eos_token="")


def sorted_keys(value):
    """`value` with every object's keys in jinja's dictsort order (Gemma 4 writes them so)."""
    if isinstance(value, dict):
        return {k: sorted_keys(value[k]) for k in sorted(value, key=str.lower)}
    if isinstance(value, list):
        return [sorted_keys(v) for v in value]
    return value


def rich_agent(calls=RICH):
    function = json.dumps([{"name": c.name, "arguments": c.args} for c in calls], ensure_ascii=False)
    return [AGENT[0], {"role": "function", "content": function}, *AGENT[2:]]


# --- round trips and what is not a call ------------------------------------------------------------


def test_lfm2_rich_calls_round_trip_exactly():
    fmt = get_tool_format("lfm2")
    text = fmt.format_calls(RICH)
    assert fmt.parse(text) == RICH
    assert [c.arguments for c in fmt.parse(text)] == [c.arguments for c in RICH]  # key order kept too
    assert fmt.parse("Let me check.\n" + text + "\nDone.") == RICH  # text around the block is allowed


def test_gemma4_rich_calls_round_trip_with_sorted_keys():
    """Gemma 4 writes object keys in dictsort order: the data comes back, in that key order."""
    fmt = get_tool_format("gemma4")
    text = fmt.format_calls(RICH)
    parsed = fmt.parse(text)
    assert [(c.name, c.args) for c in parsed] == [(c.name, c.args) for c in RICH]
    in_order = [ToolCall(c.name, json.dumps(sorted_keys(c.args), ensure_ascii=False)) for c in RICH]
    assert [c.arguments for c in parsed] == [c.arguments for c in in_order]
    assert fmt.parse("<|channel>thought\nadd them\n<channel|>" + text) == in_order


OTHER_SPELLINGS = [
    "It is 7.",
    "",
    '<tool_call>\n{"name": "add", "arguments": {"a": 3}}\n</tool_call>',
    '{"name": "add", "arguments": {"a": 3}}',
    "<tool_call>\n<function=add>\n<parameter=a>\n3\n</parameter>\n</function>\n</tool_call>",
    "[add(a=3)]",
]


@pytest.mark.parametrize("text", OTHER_SPELLINGS + ["<|tool_call_start|>[add(a=3)]<|tool_call_end|>"])
def test_gemma4_plain_answers_and_other_spellings_are_not_calls(text):
    assert get_tool_format("gemma4").parse(text) is None


@pytest.mark.parametrize("text", OTHER_SPELLINGS + ["<|tool_call>call:add{a:3}<tool_call|>"])
def test_lfm2_plain_answers_and_other_spellings_are_not_calls(text):
    assert get_tool_format("lfm2").parse(text) is None


@pytest.mark.parametrize("text", [
    '<|tool_call>call:add{a:3,q:<|"|>hi',
    "<|tool_call>call:add{a:3}",
    "<|tool_call>call:now{}<tool_call|><|tool_call>call:add{a:[1,2",  # one complete call, one cut off
    "<|tool_call>call:add{a:3 b:4}<tool_call|>",
    "<|tool_call>call:add{a:nope}<tool_call|>",
])
def test_gemma4_cut_off_or_broken_calls_are_not_calls(text):
    assert get_tool_format("gemma4").parse(text) is None


@pytest.mark.parametrize("text", [
    "<|tool_call_start|>[add(a=3), now(",
    '<|tool_call_start|>[add(a="3)]<|tool_call_end|>',
    "<|tool_call_start|>[add(a=3), now()<|tool_call_end|>",
    "<|tool_call_start|>[]<|tool_call_end|>",
    "<|tool_call_start|>[add(3)]<|tool_call_end|>",  # positional arguments have no name
    "<|tool_call_start|>[add(a=3) now()]<|tool_call_end|>",
    '<|tool_call_start|>[add(a=__import__("os").getcwd())]<|tool_call_end|>',  # never evaluated
    "<|tool_call_start|>[add(a=b)]<|tool_call_end|>",
])
def test_lfm2_cut_off_broken_or_non_literal_calls_are_not_calls(text):
    assert get_tool_format("lfm2").parse(text) is None


# --- exact text -------------------------------------------------------------------------------------


def test_gemma4_call_text():
    fmt = get_tool_format("gemma4")
    calls = [ToolCall("add", '{"q": "hi there", "b": 4, "A": 1, "a": 3}'), ToolCall("now", "{}")]
    assert fmt.format_calls(calls) == (
        '<|tool_call>call:add{A:1,a:3,b:4,q:<|"|>hi there<|"|>}<tool_call|><|tool_call>call:now{}<tool_call|>'
    )
    nested = ToolCall("f", '{"m": {"z": [1, true, null, "s"], "Y": {}}, "f": -2.5}')
    assert fmt.format_calls([nested]) == '<|tool_call>call:f{f:-2.5,m:{Y:{},z:[1,true,None,<|"|>s<|"|>]}}<tool_call|>'
    # Generated text as the model writes it; `null` reads back like the template's `None`.
    assert fmt.parse('<|tool_call>call:f{m:{<|"|>z k<|"|>:null},s:<|"|>a, b: {c}<|"|>}<tool_call|>') == [
        ToolCall("f", '{"m": {"z k": null}, "s": "a, b: {c}"}')
    ]


def test_lfm2_call_and_result_text():
    fmt = get_tool_format("lfm2")
    # The model card's example.
    card = '<|tool_call_start|>[get_candidate_status(candidate_id="12345")]<|tool_call_end|>'
    assert fmt.format_calls([ToolCall("get_candidate_status", '{"candidate_id": "12345"}')]) == card
    assert fmt.parse(card + "Checking the current status of candidate ID 12345.") == [
        ToolCall("get_candidate_status", '{"candidate_id": "12345"}')
    ]
    calls = [ToolCall("f", '{"s": "a\\"b\\nc", "t": true, "n": null, "l": [1, false], "o": {"k": null}}'),
             ToolCall("now", "{}")]
    assert fmt.format_calls(calls) == (
        '<|tool_call_start|>[f(s="a\\"b\\nc", t=True, n=None, l=[1, False], o={"k": None}), now()]<|tool_call_end|>'
    )
    # JSON-style names, single quotes and a bare call (no list) read back too.
    assert fmt.parse("<|tool_call_start|>f(t=true, n=null, s='x', l=[1, false], o={'k': null})<|tool_call_end|>") == [
        ToolCall("f", '{"t": true, "n": null, "s": "x", "l": [1, false], "o": {"k": null}}')
    ]
    # The tool list holds bare function schemas whichever form the sample gives.
    assert fmt.render_tools(json.dumps([wrap_function(t) for t in (ADD, NOW)])) == fmt.render_tools(TOOLS) == (
        "List of tools: <|tool_list_start|>[" + json.dumps(ADD) + ", " + json.dumps(NOW) + "]<|tool_list_end|>"
    )
    assert fmt.render_results('{"a": 1}' + TOOL_RESPONSE_JOIN + "x") == (  # one tool turn per result
        '<|tool_response_start|>{"a": 1}<|tool_response_end|><|im_end|>\n<|im_start|>tool\n'
        "<|tool_response_start|>x<|tool_response_end|>"
    )


def test_what_the_spellings_cannot_carry_is_refused():
    gemma, lfm2 = get_tool_format("gemma4"), get_tool_format("lfm2")
    with pytest.raises(LatheError, match="string delimiter"):
        gemma.render_calls(json.dumps({"name": "f", "arguments": {"s": ["ok", 'a <|"|> b']}}))
    with pytest.raises(LatheError, match="named 'a:b'"):
        gemma.render_calls(json.dumps({"name": "f", "arguments": {"o": {"a:b": 1}}}))
    with pytest.raises(LatheError, match="not a JSON object"):
        gemma.render_calls('{"name": "f", "arguments": [1]}')
    with pytest.raises(LatheError, match="names 'a b'"):
        lfm2.render_calls(json.dumps({"name": "f", "arguments": {"a b": 1}}))
    with pytest.raises(LatheError, match="not a JSON object"):
        lfm2.render_calls('{"name": "f", "arguments": "x"}')


# --- parity with the vendors' templates --------------------------------------------------------------


def lathe_text(template: str, messages, system: str, bos: str, enable_thinking: bool = True) -> str:
    tpl = resolve_template(template, None, tool_format=template, enable_thinking=enable_thinking)
    return tpl.render(SimpleNamespace(bos_token=bos, eos_token=""), messages, system=system, tools=TOOLS).text


@pytest.mark.parametrize("thinking", [True, False], ids=["thinking", "no_thinking"])
@pytest.mark.parametrize("system", ["", SYSTEM])
@pytest.mark.parametrize("calls", [None, RICH], ids=["agent", "rich"])
def test_gemma4_tool_conversation_matches_the_vendor(system, calls, thinking):
    """Declarations after the system text in one system turn (opened by <|think|> in thinking mode), calls
    back to back in the model turn, one `tool` turn per result; the RICH calls include null, which the
    template writes `None`. Without thinking lathe also writes the empty thought channel (unlearned) before
    each model turn, where the vendor writes it only at the end of a prompt (test_templates_vendor.py)."""
    messages = AGENT if calls is None else rich_agent(calls)
    vendor = render_vendor(GEMMA4, messages, system, bos="<bos>", tools=[wrap_function(t) for t in (ADD, NOW)],
                           enable_thinking=thinking)
    assert ("<|think|>" in vendor) == thinking
    text = lathe_text("gemma4", messages, system, "<bos>", enable_thinking=thinking)
    if not thinking:
        assert text.count("<|turn>model\n<|channel>thought\n<channel|>") == 2
        text = text.replace("<|channel>thought\n<channel|>", "")
    assert text + "\n" == vendor


def test_gemma4_declarations_match_the_vendor_for_every_schema_part():
    rich = {"name": "f", "description": "F does\n things", "parameters": {"type": "object", "properties": {
        "s": {"type": "string", "description": "ess", "enum": ["a", "b"], "nullable": True},
        "e": {"type": "string", "enum": ["x"]},
        "o": {"type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k"]},
        "od": {"type": "object", "description": "with a description", "properties": {}},
        "l": {"type": "array", "description": "ell", "items": {"type": "object", "properties": {
            "p": {"type": "number", "description": "pee"}}, "required": ["p"], "description": "item", "x": None}},
        "lt": {"type": "array", "items": {"type": ["string", "null"]}},
        "B": {"type": "boolean"}}, "required": ["s", "o"]},
        "response": {"type": "object", "description": "what comes back"}}
    no_params = {"name": "g", "description": "gee"}
    tools = [rich, no_params, ADD]
    fmt = get_tool_format("gemma4")
    vendor = render_vendor(GEMMA4, AGENT[:1], "S", bos="<bos>", tools=[wrap_function(t) for t in tools])
    assert vendor.startswith("<bos><|turn>system\nS" + fmt.render_tools(json.dumps(tools)) + "<turn|>\n")
    assert "o:{,properties:{k:{type:<|\"|>INTEGER<|\"|>}},required:[<|\"|>k<|\"|>]type:" in vendor  # its quirk


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_lfm2_tool_conversation_matches_the_vendor(system):
    """The tool list after the system text (a newline between), each result wrapped in its own `tool` turn.

    The vendor's template writes an assistant message's content and ignores `tool_calls`, so its side
    gets the call text as content (the call text itself is checked against the model card above);
    its tools are the bare schemas lathe writes, as the model card shows them.
    """
    fmt = get_tool_format("lfm2")
    vendor_messages = [AGENT[0], {"role": "assistant", "content": fmt.render_calls(AGENT[1]["content"])}, *AGENT[2:]]
    bos = "<|startoftext|>"
    vendor = render_vendor(LFM2, vendor_messages, system, bos=bos, tools=[ADD, NOW])
    assert lathe_text("lfm2", AGENT, system, bos) + "\n" == vendor
    assert "<|im_start|>assistant\n<|tool_call_start|>[add(a=3, b=4), now()]<|tool_call_end|><|im_end|>\n" in vendor


# --- the exported jinja writes the same text --------------------------------------------------------


@pytest.mark.parametrize("name", ["gemma4", "lfm2"])
@pytest.mark.parametrize("system", ["", SYSTEM])
@pytest.mark.parametrize("calls", [None, RICH], ids=["agent", "rich"])
def test_exported_jinja_writes_the_formats_text(name, system, calls):
    from tests.data.test_templates_jinja import jinja_text, load

    tokenizer = load("mistral-7b-instruct-v0.3")
    messages = AGENT if calls is None else rich_agent(calls)
    tpl = resolve_template(name, None, tool_format=name)
    want = tpl.render(tokenizer, messages, system=system, tools=TOOLS).text
    assert jinja_text(tokenizer, tpl.to_jinja(), messages, system, TOOLS) == want


def test_exported_gemma4_jinja_writes_every_schema_part():
    from tests.data.test_templates_jinja import jinja_text, load

    tokenizer = load("mistral-7b-instruct-v0.3")
    tools = json.dumps([{"name": "f", "description": "d", "parameters": {"type": "object", "properties": {
        "s": {"type": "string", "description": "ess", "enum": ["a"], "nullable": True},
        "o": {"type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k"]},
        "l": {"type": "array", "items": {"type": ["string", "null"], "properties": {"p": {"type": "number"}},
                                         "required": ["p"], "x": 1}}}, "required": ["s"]},
        "response": {"type": "object", "description": "r"}}, {"name": "g", "description": "gee"}])
    tpl = resolve_template("gemma4", None, tool_format="gemma4")
    want = tpl.render(tokenizer, AGENT, system=SYSTEM, tools=tools).text
    assert jinja_text(tokenizer, tpl.to_jinja(), AGENT, SYSTEM, tools) == want
