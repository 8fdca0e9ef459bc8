"""Hostile data, generated: every converter and the registry fail only with lathe's own errors.

Hypothesis builds rows and dataset_info.json entries out of wrong types, missing keys, huge
numbers, unicode, empty strings and nested junk. A bad row must be skipped and counted under
its index (or, when no row is usable, a LatheError naming the dataset); a bad entry must raise
a LatheError naming it. Anything else (KeyError, TypeError, AttributeError...) is a lathe bug.
Examples per property: LATHE_HYPOTHESIS_EXAMPLES (CI default below; `make test-slow` and
docs/reliability.md use 10,000).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lathe.data.formats import convert_rows
from lathe.data.dataset_info import DatasetAttr
from lathe.errors import LatheError

EXAMPLES = int(os.environ.get("LATHE_HYPOTHESIS_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True),
    st.text(max_size=30), st.sampled_from(["", " ", "human", "gpt", "user", "assistant", "system", "tool",
                                           "function_call", "observation", "true", "{}", "[]", "null"]),
)
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                      max_size=3), max_leaves=4)
COLUMN_NAMES = ["instruction", "input", "output", "history", "system", "tools", "conversations", "messages",
                "chosen", "rejected", "kto_tag", "from", "value", "role", "content"]
message = st.dictionaries(st.sampled_from(["from", "value", "role", "content", "tool_calls", "name"]), scalars | junk,
                          max_size=3)
rows = st.dictionaries(st.sampled_from(COLUMN_NAMES), scalars | st.lists(message, max_size=4) | junk, max_size=6)

ENTRIES = {
    "alpaca": {"file_name": "x.json"},
    "alpaca_ranking": {"file_name": "x.json", "ranking": True,
                       "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}},
    "alpaca_kto": {"file_name": "x.json", "columns": {"prompt": "instruction", "response": "output",
                                                       "kto_tag": "kto_tag"}},
    "sharegpt": {"file_name": "x.json", "formatting": "sharegpt"},
    "sharegpt_tools": {"file_name": "x.json", "formatting": "sharegpt",
                       "columns": {"messages": "conversations", "tools": "tools", "system": "system"}},
    "sharegpt_ranking": {"file_name": "x.json", "formatting": "sharegpt", "ranking": True,
                         "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
    "sharegpt_kto": {"file_name": "x.json", "formatting": "sharegpt",
                     "columns": {"messages": "messages", "kto_tag": "kto_tag"},
                     "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                              "assistant_tag": "assistant"}},
    "openai": {"file_name": "x.json", "formatting": "openai"},
}


@pytest.mark.parametrize("kind", sorted(ENTRIES))
def test_converters_fail_only_with_counted_skips_or_lathe_errors(kind):
    attr = DatasetAttr.from_entry(kind, ENTRIES[kind], source="generated")

    @SETTINGS
    @given(st.lists(rows, min_size=1, max_size=2))
    def check(batch):
        try:
            result = convert_rows(attr, batch)
        except LatheError as e:
            assert kind in str(e)  # names the dataset
            return
        assert len(result.samples) + result.num_skipped == len(batch)
        if result.num_skipped:
            assert "row" in result.report() and kind in result.report()

    check()


entries = st.dictionaries(
    st.sampled_from(["file_name", "hf_hub_url", "formatting", "ranking", "columns", "tags", "split", "num_samples",
                     "subset", "folder"]) | st.text(max_size=8),
    junk | st.dictionaries(st.sampled_from(["prompt", "query", "response", "messages", "role_tag", "user_tag"])
                           | st.text(max_size=6), junk, max_size=3),
    max_size=6,
)


@SETTINGS
@given(st.text(min_size=1, max_size=12), junk | entries)
def test_registry_entries_fail_only_with_lathe_errors_naming_them(name, entry):
    try:
        DatasetAttr.from_entry(name, entry, source="dataset_info.json")
    except LatheError as e:
        assert repr(name) in str(e) or name in str(e)


def test_found_by_fuzzing_tool_calls_that_are_not_a_list():
    attr = DatasetAttr.from_entry("openai", ENTRIES["openai"], source="generated")
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": True}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    result = convert_rows(attr, rows)
    assert result.num_skipped == 1 and "malformed tool_calls" in result.report()
