"""Format converters: exact samples per format, bad rows counted per reason, the demo data end to end."""

from __future__ import annotations

import json

import datasets
import pytest

from lathe.data.formats import (
    FORMATS,
    TOOL_RESPONSE_JOIN,
    RowError,
    convert_rows,
    fill_placeholders,
    get_format,
    register_format,
)
from lathe.data.readers import read_rows
from lathe.data.dataset_info import get_dataset_attrs, DatasetAttr, load_registry
from lathe.errors import LatheError
from tests.conftest import SHARED

SHARED_DATA = SHARED / "data"


def attr(**entry) -> DatasetAttr:
    return DatasetAttr.from_entry("mine", {"file_name": "mine.json", **entry}, source="/reg/dataset_info.json")


def convert(entry: dict, row: dict):
    a = attr(**entry)
    return get_format(a.formatting).convert(a, row)


def reason_of(entry: dict, row: dict) -> str:
    with pytest.raises(RowError) as info:
        convert(entry, row)
    return info.value.reason


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


# ----------------------------------------------------------------------------- alpaca


def test_alpaca_instruction_and_input():
    row = {"instruction": "Translate", "input": "bonjour", "output": "hello"}
    assert convert({}, row) == {"messages": [user("Translate\nbonjour"), bot("hello")], "system": "", "tools": ""}
    assert convert({}, {**row, "input": ""})["messages"][0] == user("Translate")
    assert convert({}, {"instruction": "Hi", "output": "Hello"})["messages"][0] == user("Hi")  # no input column at all


def test_alpaca_history_system_and_tools():
    entry = {"columns": {"prompt": "q", "response": "a", "history": "h", "system": "sys", "tools": "t"}}
    row = {"q": "and 3+3?", "a": "6", "h": [["2+2?", "4"]], "sys": "Be brief.", "t": [{"name": "calc"}]}
    assert convert(entry, row) == {
        "messages": [user("2+2?"), bot("4"), user("and 3+3?"), bot("6")],
        "system": "Be brief.",
        "tools": '[{"name": "calc"}]',
    }
    assert convert(entry, {**row, "h": None, "sys": None})["messages"] == [user("and 3+3?"), bot("6")]


def test_alpaca_without_response_column_is_text_only():
    assert convert({"columns": {"prompt": "text"}}, {"text": "A document."}) == {
        "messages": [user("A document.")], "system": "", "tools": ""}


def test_alpaca_ranking_and_kto():
    ranking = {"ranking": True, "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}}
    assert convert(ranking, {"instruction": "Pick", "chosen": "good", "rejected": "bad"}) == {
        "messages": [user("Pick")], "system": "", "tools": "", "chosen": [bot("good")], "rejected": [bot("bad")]}
    older = convert({"ranking": True}, {"instruction": "Pick", "input": "", "output": ["good", "bad"]})
    assert (older["chosen"], older["rejected"]) == ([bot("good")], [bot("bad")])
    kto = {"columns": {"prompt": "prompt", "response": "completion", "kto_tag": "label"}}
    assert convert(kto, {"prompt": "Q", "completion": "A", "label": False}) == {
        "messages": [user("Q"), bot("A")], "system": "", "tools": "", "kto_tag": False}


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"input": "", "output": "x"}, "missing column 'instruction'"),
        ({"instruction": "q", "input": ""}, "missing column 'output'"),
        ({"instruction": "q", "output": None}, "missing column 'output'"),
        ({"instruction": "q", "output": ["a", "b"]}, "non-string content"),
        ({"instruction": "q", "output": 3}, "non-string content"),
        ({"instruction": "q", "output": " \n"}, "empty assistant turn"),
        ({"instruction": "", "input": "", "output": "x"}, "empty prompt"),
    ],
)
def test_alpaca_bad_rows(row, reason):
    assert reason_of({}, row) == reason


def test_alpaca_bad_history_and_kto_tag():
    with_history = {"columns": {"prompt": "q", "response": "a", "history": "h"}}
    assert reason_of(with_history, {"q": "x", "a": "y", "h": [["only one"]]}) == "malformed history"
    assert reason_of(with_history, {"q": "x", "a": "y", "h": [["q", ""]]}) == "empty assistant turn"
    kto = {"columns": {"prompt": "q", "response": "a", "kto_tag": "l"}}
    assert reason_of(kto, {"q": "x", "a": "y", "l": "yes"}) == "kto_tag is not a boolean"
    with_system = {"columns": {"prompt": "q", "response": "a", "system": "s"}}
    assert reason_of(with_system, {"q": "x", "a": "y"}) == "missing column 's'"


# ----------------------------------------------------------------------------- sharegpt

SHAREGPT = {"formatting": "sharegpt", "columns": {"messages": "conversations", "tools": "tools"}}


def turn(tag, text):
    return {"from": tag, "value": text}


def test_sharegpt_tool_call_conversation():
    row = {
        "conversations": [
            turn("system", "You help."),
            turn("human", "Weather in Paris?"),
            turn("function_call", '{"name": "weather", "arguments": {"city": "Paris"}}'),
            turn("observation", '{"temp": 21}'),
            turn("gpt", "It is 21 degrees."),
        ],
        "tools": '[{"name": "weather"}]',
    }
    assert convert(SHAREGPT, row) == {
        "messages": [
            user("Weather in Paris?"),
            {"role": "function", "content": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"role": "observation", "content": '{"temp": 21}'},
            bot("It is 21 degrees."),
        ],
        "system": "You help.",
        "tools": '[{"name": "weather"}]',
    }


def test_sharegpt_function_call_given_as_json_becomes_text():
    row = {"conversations": [turn("human", "q"), turn("function_call", {"name": "f"}), turn("observation", "r"), turn("gpt", "a")],
           "tools": None}
    assert convert(SHAREGPT, row)["messages"][1] == {"role": "function", "content": '{"name": "f"}'}


def test_sharegpt_ranking():
    entry = {"formatting": "sharegpt", "ranking": True,
             "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}
    row = {"conversations": [turn("human", "Hi")], "chosen": turn("gpt", "Hello!"), "rejected": turn("gpt", "Go away.")}
    assert convert(entry, row) == {"messages": [user("Hi")], "system": "", "tools": "",
                                   "chosen": [bot("Hello!")], "rejected": [bot("Go away.")]}
    assert reason_of(entry, {**row, "conversations": [turn("human", "Hi"), turn("gpt", "x")]}) == \
        "ranking conversation must end with a prompt turn"
    assert reason_of(entry, {**row, "chosen": turn("human", "x")}) == "wrong role order"
    assert reason_of(entry, {**row, "rejected": None}) == "missing column 'rejected'"
    assert reason_of(entry, {**row, "chosen": turn("gpt", "")}) == "empty assistant turn"


def test_sharegpt_kto_with_role_tags():
    entry = {"formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}
    row = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "label": True}
    assert convert(entry, row) == {"messages": [user("Q"), bot("A")], "system": "", "tools": "", "kto_tag": True}


@pytest.mark.parametrize(
    "conversation, reason",
    [
        ([turn("human", "a"), turn("human", "b")], "wrong role order"),
        ([turn("gpt", "a"), turn("human", "b")], "wrong role order"),
        ([turn("human", "a"), turn("gpt", "b"), turn("system", "c"), turn("gpt", "d")], "wrong role order"),
        ([turn("human", "a"), turn("gpt", "b"), turn("human", "c")], "conversation ends with a prompt turn"),
        ([turn("human", "a"), turn("bot", "b")], "unknown role tag 'bot'"),
        ([turn("human", "a"), {"from": ["gpt"], "value": "b"}], "unknown role tag ['gpt']"),
        ([turn("human", "a"), {"value": "b"}], "missing message key 'from'"),
        ([turn("human", "a"), turn("gpt", 5)], "non-string content"),
        ([turn("human", "a"), turn("gpt", None)], "non-string content"),
        ([turn("human", "a"), turn("gpt", "")], "empty assistant turn"),
        ([], "empty conversation"),
        ([turn("system", "only a system prompt")], "empty conversation"),
        ("not a list", "malformed messages"),
    ],
)
def test_sharegpt_bad_rows(conversation, reason):
    assert reason_of({"formatting": "sharegpt"}, {"conversations": conversation}) == reason


def test_sharegpt_missing_messages_column():
    assert reason_of({"formatting": "sharegpt"}, {"messages": []}) == "missing column 'conversations'"


# ----------------------------------------------------------------------------- openai


def test_openai_tool_calls_and_merged_tool_results():
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    call2 = {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}}
    row = {
        "messages": [
            {"role": "system", "content": "You help."},
            {"role": "user", "content": "Paris and Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [call, call2]},
            {"role": "tool", "content": "21"},
            {"role": "tool", "content": "25"},
            {"role": "assistant", "content": "21 and 25.", "tool_calls": None},
        ],
        "tools": [{"type": "function", "function": {"name": "weather"}}],
    }
    entry = {"formatting": "openai", "columns": {"messages": "messages", "tools": "tools"}}
    assert convert(entry, row) == {
        "messages": [
            user("Paris and Rome?"),
            {"role": "function", "content": json.dumps([call["function"], call2["function"]])},
            {"role": "observation", "content": "21" + TOOL_RESPONSE_JOIN + "25"},
            bot("21 and 25."),
        ],
        "system": "You help.",
        "tools": '[{"type": "function", "function": {"name": "weather"}}]',
    }


def test_openai_defaults_and_bad_rows():
    row = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    assert convert({"formatting": "openai"}, row) == {"messages": [user("Q"), bot("A")], "system": "", "tools": ""}
    ends_on_tool = {"messages": row["messages"] + [{"role": "tool", "content": "r"}]}
    assert reason_of({"formatting": "openai"}, ends_on_tool) == "conversation ends with a prompt turn"
    bad_call = {"messages": [row["messages"][0], {"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]}]}
    assert reason_of({"formatting": "openai"}, bad_call) == "malformed tool_calls"
    no_content = {"messages": [row["messages"][0], {"role": "assistant", "content": None}]}
    assert reason_of({"formatting": "openai"}, no_content) == "non-string content"


# ----------------------------------------------------------------------------- convert_rows


def test_bad_rows_are_counted_per_reason_with_indices():
    good = {"instruction": "q", "input": "", "output": "a"}
    rows = [good] * 4 + [{"instruction": "q"}] + [good] * 12 + [{"instruction": "q"}] + [good] * 12 + \
        [{"instruction": "q"}, {"instruction": "q", "output": 7}] + [good] * 60
    result = convert_rows(attr(), rows)
    assert result.num_rows == 92 and len(result.samples) == 88 and result.num_skipped == 4
    assert result.skipped == {"missing column 'output'": [4, 17, 30], "non-string content": [31]}
    assert result.skip_counts == {"missing column 'output'": 3, "non-string content": 1}
    assert result.report() == (
        "mine: skipped 4 of 92 rows: missing column 'output' (rows 4, 17, 30); "
        "non-string content (row 31; e.g. row 31: column 'output' is int, not text)"
    )


def test_only_the_first_indices_are_kept_but_all_are_counted():
    result = convert_rows(attr(), [{"instruction": "q"}] * 8 + [{"instruction": "q", "output": "a"}])
    assert result.skipped["missing column 'output'"] == [0, 1, 2, 3, 4]
    assert result.skip_counts["missing column 'output'"] == 8
    assert "missing column 'output' (8 rows: 0, 1, 2, 3, 4, ...)" in result.report()


def test_media_columns_are_read_and_a_missing_file_skips_its_row(tmp_path):
    (tmp_path / "p.png").write_bytes(b"")
    entry = attr(columns={"prompt": "q", "response": "a", "images": "img"})
    entry.media_dir = str(tmp_path)
    result = convert_rows(entry, [{"q": "x", "a": "y", "img": ["p.png"]}, {"q": "x", "a": "y", "img": "gone.png"}])
    assert result.samples[0]["images"] == [str(tmp_path / "p.png")]
    assert result.samples[0]["messages"][0]["content"] == "<image>x"  # LLaMA-Factory puts it first
    assert result.skip_counts == {"missing media file": 1} and "gone.png" in result.report()


def test_no_usable_rows_is_an_error_with_reasons():
    with pytest.raises(LatheError) as info:
        convert_rows(attr(), [{"question": "q", "answer": "a"}] * 3)
    message = str(info.value)
    assert "No usable rows in dataset 'mine' (entry 'mine' in /reg/dataset_info.json)" in message
    assert "missing column 'instruction' (rows 0, 1, 2)" in message and "`columns`" in message


def test_no_rows_is_an_error():
    with pytest.raises(LatheError, match="has no rows"):
        convert_rows(attr(), [])


def test_rows_from_a_dataset_with_null_filled_keys():
    rows = datasets.Dataset.from_list([{"instruction": "q", "output": "a"}, {"instruction": "q", "output": None}])
    result = convert_rows(attr(), rows)
    assert len(result.samples) == 1 and result.skipped == {"missing column 'output'": [1]}


def test_a_dict_of_columns_is_not_rows():
    rows = datasets.Dataset.from_list([{"instruction": "q", "output": "a"}] * 3)
    with pytest.raises(TypeError, match=r"dataset.select\(range\(n\)\)"):
        convert_rows(attr(), rows[:2])
    assert len(convert_rows(attr(), rows.select(range(2))).samples) == 2


def test_fill_placeholders():
    sample = {"messages": [user("Who are you?"), bot("I am {{name}}, made by {{ author }}. {{other}}")],
              "system": "{{name}} here", "tools": "", "chosen": [bot("{{name}}")]}
    filled = fill_placeholders(sample, {"name": "Lathe", "author": "us"})
    assert filled["messages"][1]["content"] == "I am Lathe, made by us. {{other}}"
    assert filled["system"] == "Lathe here" and filled["chosen"] == [bot("Lathe")]
    assert sample["messages"][1]["content"].startswith("I am {{name}}")  # the input is not changed


def test_format_registry():
    assert set(FORMATS) >= {"alpaca", "sharegpt", "openai"}
    with pytest.raises(LatheError, match="Did you mean `openai`"):
        get_format("opnai")
    with pytest.raises(ValueError, match="registered twice"):
        register_format("alpaca", columns={}, tags={})(lambda a, r: {})


# ----------------------------------------------------------------------------- the demo data end to end


def local_entries() -> list[str]:
    if not (SHARED_DATA / "dataset_info.json").is_file():
        return []
    registry = load_registry(SHARED_DATA)
    return [name for name, a in registry.items() if a.load_from == "file" and (SHARED_DATA / a.file_name).exists()]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    datasets.disable_progress_bars()
    return tmp_path_factory.mktemp("datasets-cache")


@pytest.mark.skipif(not local_entries(), reason=f"LLaMA-Factory demo data not found at {SHARED_DATA} (the repo's sibling ../shared)")
@pytest.mark.parametrize("name", local_entries())
def test_every_local_demo_entry_reads_and_converts(name, cache_dir):
    a = get_dataset_attrs(name, SHARED_DATA)[0]  # with its media folder
    rows = read_rows(a, SHARED_DATA, cache_dir=cache_dir)
    path = SHARED_DATA / a.file_name
    raw = path.read_text(encoding="utf-8")
    expected_rows = len(json.loads(raw)) if path.suffix == ".json" else len(raw.splitlines())
    assert len(rows) == expected_rows
    result = convert_rows(a, rows)
    assert len(result.samples) + result.num_skipped == expected_rows
    assert result.num_skipped == 0, result.report()  # the demo data is clean; a skip here is a converter bug
    sample = result.samples[0]
    assert sample["messages"][0]["role"] == "user" and set(sample) >= {"messages", "system", "tools"}
    assert ("chosen" in sample) == a.ranking and ("kto_tag" in sample) == bool(a.columns.kto_tag)


@pytest.mark.skipif(not (SHARED_DATA / "identity.json").is_file(), reason=f"demo data not found at {SHARED_DATA}")
def test_identity_placeholders_are_left_for_later(cache_dir):
    a = load_registry(SHARED_DATA)["identity"]
    result = convert_rows(a, read_rows(a, SHARED_DATA, cache_dir=cache_dir))
    assert "{{name}}" in result.samples[0]["messages"][1]["content"]
    filled = fill_placeholders(result.samples[0], {"name": "Lathe", "author": "the lathe team"})
    assert "{{" not in filled["messages"][1]["content"]
