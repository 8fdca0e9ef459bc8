"""USE_MODELSCOPE_HUB / USE_OPENMIND_HUB: a hub id becomes the client's snapshot folder, loaded like a local model.

No test touches the network: the clients' snapshot_download is replaced by a fake that
returns a local tiny model, or (ModelScope, when installed) reads a cache laid out as the
real client lays it out, with the hub reported unreachable.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
import types

import pytest

import lathe.hub as hub
from lathe.config.load import build_config
from lathe.errors import LatheError
from lathe.model.load import load_model, load_model_config, load_tokenizer

TOKEN = "ms-secret-4242"


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for other in hub.OTHER_HUBS:
        monkeypatch.delenv(other.env, raising=False)
    monkeypatch.setattr(hub, "_SNAPSHOTS", {})


def _fake_client(monkeypatch, module: str, folder, calls: list[dict]):
    """A client module whose snapshot_download records its arguments and returns `folder`."""

    def snapshot_download(model_id, **kwargs):
        calls.append({"model_id": model_id, **kwargs})
        return str(folder)

    fake = types.ModuleType(module)
    fake.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, module, fake)


def _cfg(name: str, **overrides):
    return build_config({"model_name_or_path": name, "template": "chatml", **overrides}, purpose="infer")


@pytest.mark.parametrize("env, module, token_key, revision", [
    ("USE_MODELSCOPE_HUB", "modelscope.hub.snapshot_download", "ms_hub_token", "master"),
    ("USE_OPENMIND_HUB", "openmind_hub", "om_hub_token", "main"),
])
def test_hub_id_loads_from_the_snapshot_and_the_token_reaches_only_the_client(
        monkeypatch, caplog, tiny_llama, env, module, token_key, revision):
    calls: list[dict] = []
    _fake_client(monkeypatch, module, tiny_llama, calls)
    monkeypatch.setattr(hub, "hub_reachable", lambda url=None: True)
    monkeypatch.setenv(env, "1")
    cfg = _cfg("someone/tiny-llama", **{token_key: TOKEN})
    caplog.set_level(logging.DEBUG)

    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg, tokenizer)

    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2  # the tiny model's shape
    assert len(calls) == 1  # one download per process, however many loads follow
    call = calls[0]
    assert (call["model_id"], call["token"], call["revision"], call["local_files_only"]) == (
        "someone/tiny-llama", TOKEN, revision, False)  # ModelScope calls the default branch "master"
    assert str(tiny_llama) in caplog.text and TOKEN not in caplog.text
    assert token_key not in cfg.to_dict() and TOKEN not in str(cfg.to_dict())  # what runs save


def test_without_the_variable_a_hub_id_stays_a_hugging_face_id(monkeypatch, tiny_llama):
    calls: list[dict] = []
    _fake_client(monkeypatch, "modelscope.hub.snapshot_download", tiny_llama, calls)
    assert hub.model_snapshot(_cfg("someone/tiny-llama").model) == "someone/tiny-llama"
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")  # a local folder is never looked up on the hub
    assert hub.model_snapshot(_cfg(str(tiny_llama)).model) == str(tiny_llama)
    assert calls == []


def test_modelscope_wins_when_both_are_set(monkeypatch):
    monkeypatch.setenv("USE_OPENMIND_HUB", "1")
    assert hub.other_hub().extra == "openmind"
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "true")
    assert hub.other_hub().extra == "modelscope"


def test_missing_client_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openmind_hub", None)  # import fails as if not installed
    monkeypatch.setenv("USE_OPENMIND_HUB", "1")
    with pytest.raises(LatheError, match=r"pip install 'lathe\[openmind\]'.*openmind_hub"):
        load_model_config(_cfg("someone/tiny-llama").model)


def test_offline_reads_the_cache_only_and_fails_at_once(monkeypatch):
    calls: list[dict] = []

    def snapshot_download(model_id, **kwargs):
        calls.append(kwargs)
        raise FileNotFoundError("no cached snapshot")

    monkeypatch.setitem(sys.modules, "openmind_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    monkeypatch.setattr(hub, "hub_reachable", lambda url=None: False)
    monkeypatch.setenv("USE_OPENMIND_HUB", "1")
    monkeypatch.setenv("OPENMIND_HUB_ENDPOINT", "https://modelers.example")
    with pytest.raises(LatheError, match=r"https://modelers.example cannot be reached.*no cached snapshot"):
        load_tokenizer(_cfg("someone/tiny-llama", om_hub_token=TOKEN).model)
    assert calls[0]["local_files_only"] is True


@pytest.mark.skipif(importlib.util.find_spec("modelscope") is None, reason="the modelscope client is not installed")
def test_modelscope_cache_layout_loads_offline(monkeypatch, tmp_path, tiny_llama):
    """The real client, offline, finds a snapshot where it caches one: <cache>/models/<owner>--<name>/snapshots/master."""
    shutil.copytree(tiny_llama, tmp_path / "models" / "someone--tiny-llama" / "snapshots" / "master")
    monkeypatch.setattr(hub, "hub_reachable", lambda url=None: False)
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    config = load_model_config(_cfg("someone/tiny-llama", cache_dir=str(tmp_path)).model)
    assert config.hidden_size == 64
    with pytest.raises(LatheError, match="cannot be reached.*someone/absent"):
        load_model_config(_cfg("someone/absent", cache_dir=str(tmp_path)).model)


# ----------------------------------------------------------------------------- datasets: ms_hub_url / om_hub_url

ROWS = [{"instruction": "2+2?", "input": "", "output": "4"}, {"instruction": "Capital of France?", "input": "", "output": "Paris"}]


def _registry(tmp_path, entry: dict):
    import json

    (tmp_path / "dataset_info.json").write_text(json.dumps({"mixed": entry}))
    return tmp_path


def _fake_msdataset(monkeypatch, calls: list[dict]):
    """A `modelscope` module whose MsDataset.load records its arguments and returns ROWS as a datasets.Dataset."""
    import datasets

    class MsDataset:
        @staticmethod
        def load(dataset_name, **kwargs):
            calls.append({"dataset_name": dataset_name, **kwargs})
            return datasets.Dataset.from_list(ROWS)

    fake = types.ModuleType("modelscope")
    fake.MsDataset = MsDataset
    monkeypatch.setitem(sys.modules, "modelscope", fake)


def test_dataset_entry_reads_ms_hub_url_under_use_modelscope_hub(monkeypatch, tmp_path):
    from lathe.data import readers
    from lathe.data.dataset_info import get_dataset_attrs

    calls: list[dict] = []
    _fake_msdataset(monkeypatch, calls)
    monkeypatch.setattr(readers, "hub_reachable", lambda url=None: True)
    data_dir = _registry(tmp_path, {"hf_hub_url": "hf-org/data", "ms_hub_url": "ms-org/data", "subset": "zh"})

    (attr,) = get_dataset_attrs("mixed", data_dir)
    assert attr.load_from == "hf_hub"  # without the variable the Hugging Face URL wins, as in LLaMA-Factory
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    (attr,) = get_dataset_attrs("mixed", data_dir)
    assert attr.load_from == "ms_hub"

    model_args = _cfg("someone/tiny-llama", ms_hub_token=TOKEN).model
    rows = readers.read_rows(attr, data_dir, token=readers.entry_token(attr, model_args))
    assert list(readers.iter_rows(rows)) == ROWS
    assert calls == [{"dataset_name": "ms-org/data", "subset_name": "zh", "data_dir": None, "split": "train",
                      "use_streaming": False, "token": TOKEN}]


def test_an_entry_with_only_a_modelscope_url_uses_it_without_the_variable(tmp_path):
    from lathe.data.dataset_info import get_dataset_attrs

    (attr,) = get_dataset_attrs("mixed", _registry(tmp_path, {"ms_hub_url": "ms-org/data"}))
    assert (attr.load_from, attr.ms_hub_url) == ("ms_hub", "ms-org/data")
    (other,) = get_dataset_attrs("mixed", _registry(tmp_path, {"om_hub_url": "om/d", "file_name": "x.json"}))
    assert other.load_from == "om_hub"  # hub URLs come before file_name, as in LLaMA-Factory


def test_modelscope_dataset_offline_fails_at_once_and_missing_client_names_the_extra(monkeypatch, tmp_path):
    from lathe.data import readers
    from lathe.data.dataset_info import get_dataset_attrs

    calls: list[dict] = []
    _fake_msdataset(monkeypatch, calls)
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "https://modelscope.example")
    (attr,) = get_dataset_attrs("mixed", _registry(tmp_path, {"hf_hub_url": "hf-org/data", "ms_hub_url": "ms-org/data"}))
    monkeypatch.setattr(readers, "hub_reachable", lambda url=None: url != "https://modelscope.example")
    with pytest.raises(LatheError, match=r"ModelScope dataset 'ms-org/data'.*https://modelscope.example cannot be reached"):
        readers.read_rows(attr, tmp_path)
    assert calls == []  # the client, which would retry for minutes, is never called

    monkeypatch.setitem(sys.modules, "modelscope", None)  # not installed
    with pytest.raises(LatheError, match=r"reads datasets from ModelScope.*pip install 'lathe\[modelscope\]'"):
        readers.read_rows(attr, tmp_path)
