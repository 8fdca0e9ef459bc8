"""Reading rows: every file type, folders, broken files, num_samples, and hubs without a network."""

from __future__ import annotations

import json
import time
from pathlib import Path

import datasets
import pyarrow as pa
import pytest

from lathe import hub
from lathe.data import readers
from lathe.data.readers import iter_rows, read_rows
from lathe.data.dataset_info import DatasetAttr
from lathe.errors import LatheError

ROWS = [{"instruction": "a", "output": "x"}, {"instruction": "b", "output": "y"}, {"instruction": "c", "output": "z"}]


@pytest.fixture(autouse=True)
def quiet_datasets():
    datasets.disable_progress_bars()


def attr_for(file_name: str, **entry) -> DatasetAttr:
    return DatasetAttr.from_entry("mine", {"file_name": file_name, **entry}, source="/reg/dataset_info.json")


def read(tmp_path: Path, file_name: str, **entry) -> list[dict]:
    return list(iter_rows(read_rows(attr_for(file_name, **entry), tmp_path, cache_dir=tmp_path / "cache")))


def write_arrow(path: Path, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows)
    with pa.ipc.new_stream(str(path), table.schema) as writer:
        writer.write_table(table)


WRITERS = {
    "json": lambda path, rows: path.write_text(json.dumps(rows), encoding="utf-8"),
    "jsonl": lambda path, rows: path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"),
    "csv": lambda path, rows: datasets.Dataset.from_list(rows).to_csv(str(path), index=False),
    "parquet": lambda path, rows: datasets.Dataset.from_list(rows).to_parquet(str(path)),
    "arrow": write_arrow,
}


@pytest.mark.parametrize("ext", sorted(WRITERS))
def test_each_file_type(tmp_path, ext):
    WRITERS[ext](tmp_path / f"data.{ext}", ROWS)
    assert read(tmp_path, f"data.{ext}") == ROWS


def test_txt_is_one_row_per_line(tmp_path):
    (tmp_path / "corpus.txt").write_text("first doc\nsecond doc\n\nfourth doc\n", encoding="utf-8")
    assert read(tmp_path, "corpus.txt") == [{"text": "first doc"}, {"text": "second doc"}, {"text": ""}, {"text": "fourth doc"}]


def test_folder_reads_all_files_of_its_type(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    WRITERS["jsonl"](folder / "a.jsonl", ROWS[:2])
    WRITERS["json"](folder / "b.json", ROWS[2:])  # .json and .jsonl are both read as json
    (folder / "README.md").write_text("not data", encoding="utf-8")
    (folder / ".hidden.csv").write_text("x\n1\n", encoding="utf-8")
    assert read(tmp_path, "parts") == ROWS


def test_folder_with_mixed_types_is_an_error(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    WRITERS["jsonl"](folder / "a.jsonl", ROWS)
    WRITERS["csv"](folder / "b.csv", ROWS)
    with pytest.raises(LatheError, match=r"mixes file types \(json: a.jsonl; csv: b.csv\)"):
        read(tmp_path, "parts")


def test_folder_without_data_files_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatheError, match="has no data files"):
        read(tmp_path, "empty")


def test_unknown_extension_is_an_error(tmp_path):
    (tmp_path / "data.xlsx").write_text("?", encoding="utf-8")
    with pytest.raises(LatheError, match=r"unknown file type; lathe reads \.arrow, \.csv"):
        read(tmp_path, "data.xlsx")


def test_missing_file_names_path_and_entry(tmp_path):
    with pytest.raises(LatheError) as info:
        read(tmp_path, "absent.json")
    message = str(info.value)
    assert "dataset 'mine' (entry in /reg/dataset_info.json)" in message
    assert str(tmp_path / "absent.json") in message


def test_broken_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"instruction": "a", "output": "x"},\n  {"instruction": "b, "output": "y"}\n]\n', encoding="utf-8")
    with pytest.raises(LatheError) as info:
        read(tmp_path, "data.json")
    assert f"{path}:3:" in str(info.value) and "invalid JSON" in str(info.value)


def test_broken_jsonl_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"instruction": "a", "output": "x"}\n\n{"instruction" "b"}\n', encoding="utf-8")
    with pytest.raises(LatheError) as info:
        read(tmp_path, "data.jsonl")
    assert f"{path}:3:16: invalid JSON: Expecting ':' delimiter" in str(info.value)


def test_rows_missing_a_key_get_null(tmp_path):
    WRITERS["jsonl"](tmp_path / "data.jsonl", [{"instruction": "a", "output": "x"}, {"instruction": "b"}])
    assert read(tmp_path, "data.jsonl")[1] == {"instruction": "b", "output": None}


def test_unknown_split_of_a_local_file(tmp_path):
    WRITERS["json"](tmp_path / "data.json", ROWS)
    with pytest.raises(LatheError, match="split 'validation' does not exist"):
        read(tmp_path, "data.json", split="validation")
    assert read(tmp_path, "data.json", split="train[:2]") == ROWS[:2]


def test_num_samples_draws_without_then_with_repeats(tmp_path):
    WRITERS["json"](tmp_path / "data.json", ROWS)
    fewer = read(tmp_path, "data.json", num_samples=2)
    assert len(fewer) == 2 and len({r["instruction"] for r in fewer}) == 2
    more = read(tmp_path, "data.json", num_samples=7)
    assert len(more) == 7 and {r["instruction"] for r in more} == {"a", "b", "c"}  # every row at least once
    assert read(tmp_path, "data.json", num_samples=7) == more  # same seed, same draw


# ----------------------------------------------------------------------------- local JSON without datasets


def test_local_json_is_read_without_a_datasets_copy(tmp_path):
    """lathe caches tokenized data itself; the raw rows need no Arrow copy in the datasets cache."""
    WRITERS["json"](tmp_path / "data.json", ROWS)
    rows = read_rows(attr_for("data.json"), tmp_path, cache_dir=tmp_path / "cache")
    assert rows == ROWS and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("text, rows", [
    ('{"instruction": "a"}\n\n{"instruction": "b"}\n', [{"instruction": "a"}, {"instruction": "b"}]),  # lines in .json
    ('["first doc", "second doc"]', [{"text": "first doc"}, {"text": "second doc"}]),
    ('\ufeff[{"instruction": "a"}]', [{"instruction": "a"}]),  # a byte order mark
    ('[{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}]',
     [{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}]),  # nested values as written
])
def test_json_layouts(tmp_path, text, rows):
    (tmp_path / "data.json").write_text(text, encoding="utf-8")
    assert read(tmp_path, "data.json") == rows


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_json_lines_keep_unicode_line_separators_inside_strings(tmp_path, separator):
    """json.dumps(ensure_ascii=False) writes U+2028 and friends unescaped; they are not line ends."""
    rows = [{"instruction": f"first{separator}line", "output": "x"}, {"instruction": "b", "output": f"y{separator}"}]
    for name in ("data.jsonl", "lines.json"):
        (tmp_path / name).write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
        assert read(tmp_path, name) == rows


def test_control_characters_inside_strings_are_accepted(tmp_path):
    (tmp_path / "data.json").write_text('[{"instruction": "a\tb", "output": "x"}]', encoding="utf-8")
    (tmp_path / "data.jsonl").write_text('{"instruction": "a\tb", "output": "x"}\n', encoding="utf-8")
    assert read(tmp_path, "data.json") == read(tmp_path, "data.jsonl") == [{"instruction": "a\tb", "output": "x"}]


def test_a_pretty_printed_object_in_a_jsonl_file_is_one_row(tmp_path):
    (tmp_path / "data.jsonl").write_text('{\n  "instruction": "a",\n  "output": "x"\n}\n', encoding="utf-8")
    assert read(tmp_path, "data.jsonl") == [{"instruction": "a", "output": "x"}]


def test_an_empty_json_file_has_no_rows(tmp_path):
    (tmp_path / "data.jsonl").write_text("\n\n", encoding="utf-8")
    assert read(tmp_path, "data.jsonl") == []


def test_an_array_in_a_jsonl_file(tmp_path):
    (tmp_path / "data.jsonl").write_text(json.dumps(ROWS, indent=1), encoding="utf-8")
    assert read(tmp_path, "data.jsonl") == ROWS


def test_json_that_is_not_utf8_says_so(tmp_path):
    (tmp_path / "data.json").write_bytes('[{"instruction": "caf\u00e9"}]'.encode("latin-1"))
    with pytest.raises(LatheError, match=r"data.json is not UTF-8 text"):
        read(tmp_path, "data.json")


def test_json_of_mixed_values_goes_to_datasets(tmp_path, monkeypatch):
    """A layout the json reader does not take (rows that are not all objects) is left to `datasets`."""
    (tmp_path / "data.json").write_text('[{"instruction": "a"}, 3]', encoding="utf-8")
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: asked.append(a) or datasets.Dataset.from_list([]))
    read(tmp_path, "data.json")
    assert asked == [("json",)]


# ----------------------------------------------------------------------------- hubs


def hub_attr(**entry) -> DatasetAttr:
    return DatasetAttr.from_entry("alpaca_en", {"hf_hub_url": "llamafactory/alpaca_en", **entry}, source="/reg/dataset_info.json")


def test_hub_with_offline_env_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # as when the variable is set after import
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(LatheError) as info:
        read_rows(hub_attr(), tmp_path, cache_dir=tmp_path)
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert "'llamafactory/alpaca_en' and needs the network" in message and "HF_HUB_OFFLINE" in message
    assert "'file_name'" in message


def test_hub_with_datasets_offline_looks_in_the_cache_and_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(LatheError, match="offline mode: no cached copy was found"):
        read_rows(hub_attr(subset="en"), tmp_path, cache_dir=tmp_path)
    assert time.monotonic() - start < 5


def test_hub_unreachable_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(readers, "hub_reachable", lambda: False)
    with pytest.raises(LatheError, match="cannot be reached"):
        read_rows(hub_attr(), tmp_path, cache_dir=tmp_path)


def test_hub_probe_gives_up_quickly_on_a_closed_port(monkeypatch):
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens here
    start = time.monotonic()
    assert hub.hub_reachable() is False
    assert time.monotonic() - start < hub.NETWORK_PROBE_TIMEOUT_S + 1


def test_sources_lathe_cannot_read_say_what_to_do(tmp_path):
    attr = DatasetAttr.from_entry("bucket", {"cloud_file_name": "s3://b/x.json"})
    with pytest.raises(LatheError, match="cloud storage .*which lathe cannot read yet.*'file_name'"):
        read_rows(attr, tmp_path)
