"""dataset_info.json parsing: LLaMA-Factory's own file unchanged, strict keys, useful errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lathe.data.dataset_info import Columns, DatasetAttr, Tags, get_dataset_attrs, load_registry
from lathe.errors import LatheError
from tests.conftest import SHARED

SHARED_DATA = SHARED / "data"
needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "dataset_info.json").is_file(),
    reason=f"LLaMA-Factory demo data not found at {SHARED_DATA} (the repo's sibling ../shared)",
)


def write_registry(folder: Path, info: dict) -> Path:
    path = folder / "dataset_info.json"
    path.write_text(json.dumps(info, indent=2), encoding="utf-8")
    return path


def error_of(call, *args) -> str:
    with pytest.raises(LatheError) as info:
        call(*args)
    return str(info.value)


# ----------------------------------------------------------------------------- LLaMA-Factory's file


@needs_shared
def test_llamafactory_registry_loads_unchanged():
    registry = load_registry(SHARED_DATA)
    raw = json.loads((SHARED_DATA / "dataset_info.json").read_text(encoding="utf-8"))
    assert list(registry) == list(raw)
    kinds = {}
    for attr in registry.values():
        kinds[attr.load_from] = kinds.get(attr.load_from, 0) + 1
        assert attr.source == str(SHARED_DATA / "dataset_info.json")
    assert sum(kinds.values()) == len(raw)
    assert kinds["file"] == sum(1 for entry in raw.values() if set(entry) & {"hf_hub_url", "ms_hub_url", "om_hub_url"} == set())
    assert kinds["ms_hub"] == 1  # deepctrl is on ModelScope only
    assert {a.formatting for a in registry.values()} == {"alpaca", "sharegpt"}


@needs_shared
def test_llamafactory_entries_mean_what_they_mean_there():
    registry = load_registry(SHARED_DATA)

    identity = registry["identity"]
    assert (identity.load_from, identity.file_name, identity.formatting, identity.split) == ("file", "identity.json", "alpaca", "train")
    assert identity.columns == Columns(prompt="instruction", query="input", response="output")

    # a columns block replaces the defaults: pretraining text has a prompt and nothing else
    assert registry["wiki_demo"].columns == Columns(prompt="text")
    assert registry["openorca"].columns == Columns(prompt="question", response="response", system="system_prompt")

    glaive = registry["glaive_toolcall_en_demo"]
    assert glaive.columns == Columns(messages="conversations", tools="tools")
    assert glaive.tags == Tags("from", "value", "human", "gpt", "observation", "function_call", "system")

    dpo = registry["dpo_en_demo"]
    assert dpo.ranking is True
    assert (dpo.columns.messages, dpo.columns.chosen, dpo.columns.rejected) == ("conversations", "chosen", "rejected")

    kto = registry["kto_en_demo"]
    assert kto.columns == Columns(messages="messages", kto_tag="label")
    # a tags block overrides tag by tag; tags it does not name keep the sharegpt default
    assert kto.tags == Tags("role", "content", "user", "assistant", "observation", "function_call", "system")

    alpaca_en = registry["alpaca_en"]  # hf, ms and om urls: the Hugging Face Hub comes first
    assert (alpaca_en.load_from, alpaca_en.hf_hub_url, alpaca_en.om_hub_url) == ("hf_hub", "llamafactory/alpaca_en", "HaM/alpaca_en")
    assert registry["ultrachat_200k"].split == "train_sft"
    assert registry["llava_1k_en"].subset == "en"
    assert registry["llava_1k_en"].columns.images == "images"
    assert registry["starcoder_python"].folder == "python"
    assert registry["redpajama_v2"].subset == "default"
    assert registry["deepctrl"].load_from == "ms_hub"


# ----------------------------------------------------------------------------- entries


def test_entry_defaults_per_format():
    sharegpt = DatasetAttr.from_entry("s", {"file_name": "s.json", "formatting": "sharegpt"})
    assert sharegpt.columns == Columns(messages="conversations")
    openai = DatasetAttr.from_entry("o", {"file_name": "o.json", "formatting": "openai"})
    assert openai.columns == Columns(messages="messages")
    assert openai.tags == Tags("role", "content", "user", "assistant", "tool", "function_call", "system")


def test_entry_keys_and_null_values():
    attr = DatasetAttr.from_entry("x", {
        "file_name": "x.jsonl", "num_samples": 5, "split": None, "subset": None, "ranking": False,
        "columns": {"prompt": "q", "response": "a", "history": "h", "system": "sys"},
        "tags": {"user_tag": "u", "system_tag": None},
    })
    assert (attr.num_samples, attr.split, attr.subset) == (5, "train", None)
    assert attr.columns == Columns(prompt="q", response="a", history="h", system="sys")
    assert attr.tags.user_tag == "u" and attr.tags.system_tag is None and attr.tags.role_tag == "from"


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"file_nam": "a.json"}, ["unknown key 'file_nam'", "Did you mean `file_name`"]),
        ({"file_name": "a.json", "columns": {"promt": "q"}}, ["'columns' has unknown key 'promt'", "`prompt`"]),
        ({"file_name": "a.json", "tags": {"role": "r"}}, ["'tags' has unknown key 'role'", "`role_tag`"]),
        ({"file_name": "a.json", "formatting": "sharegtp"}, ["formatting `sharegtp`", "`sharegpt`"]),
        ({"file_name": "a.json", "ranking": "yes"}, ["'ranking' must be a JSON boolean"]),
        ({"file_name": "a.json", "num_samples": True}, ["'num_samples' must be a JSON integer"]),
        ({"file_name": "a.json", "num_samples": 0}, ["at least 1"]),
        ({"file_name": "a.json", "columns": {"prompt": 3}}, ["columns.prompt must be a string"]),
        ({"formatting": "alpaca"}, ["nowhere to load the data from", "file_name"]),
        ("a.json", ["must be a JSON object"]),
    ],
)
def test_bad_entries_name_file_entry_and_key(tmp_path, entry, expected):
    path = write_registry(tmp_path, {"good": {"file_name": "g.json"}, "mine": entry})
    message = error_of(load_registry, tmp_path)
    assert f"{path}: entry 'mine'" in message
    for part in expected:
        assert part in message


def test_missing_registry_says_where_it_looked(tmp_path):
    message = error_of(load_registry, tmp_path)
    assert str(tmp_path / "dataset_info.json") in message
    message = error_of(load_registry, tmp_path / "nope")
    assert "does not exist" in message


def test_invalid_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "dataset_info.json"
    path.write_text('{\n  "a": {"file_name": "a.json"},\n  "b": {"file_name": "b.json",}\n}\n', encoding="utf-8")
    message = error_of(load_registry, tmp_path)
    assert f"{path}:3:" in message and "invalid JSON" in message


def test_registry_must_be_an_object(tmp_path):
    (tmp_path / "dataset_info.json").write_text("[1, 2]", encoding="utf-8")
    assert "JSON object" in error_of(load_registry, tmp_path)


# ----------------------------------------------------------------------------- lookup


def test_get_dataset_attrs_comma_list_in_order(tmp_path):
    write_registry(tmp_path, {"a": {"file_name": "a.json"}, "b": {"file_name": "b.json"}, "c": {"hf_hub_url": "org/c"}})
    assert [a.name for a in get_dataset_attrs(" c, a ,", tmp_path)] == ["c", "a"]
    assert [a.name for a in get_dataset_attrs(["b", "a,c"], tmp_path)] == ["b", "a", "c"]


def test_unknown_dataset_name_suggests_close_names(tmp_path):
    path = write_registry(tmp_path, {"alpaca_en_demo": {"file_name": "a.json"}, "identity": {"file_name": "i.json"}})
    message = error_of(get_dataset_attrs, "identity,alpaca_en_dem", tmp_path)
    assert "'alpaca_en_dem'" in message and "Did you mean `alpaca_en_demo`" in message and str(path) in message
    message = error_of(get_dataset_attrs, "zzz", tmp_path)
    assert "e.g. alpaca_en_demo, identity" in message


def test_no_names_is_an_error(tmp_path):
    write_registry(tmp_path, {"a": {"file_name": "a.json"}})
    assert "No dataset names" in error_of(get_dataset_attrs, " , ", tmp_path)


def test_online_names_are_hub_ids():
    (attr,) = get_dataset_attrs("org/data", "ONLINE")
    assert (attr.name, attr.load_from, attr.hf_hub_url, attr.formatting) == ("org/data", "hf_hub", "org/data", "alpaca")
