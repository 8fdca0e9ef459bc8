"""In-process tokenization (data/table.py) gives what datasets.map gives, and mixing keeps datasets' order."""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa
import pytest

from lathe.config import load_config
from lathe.data.encode import tokenize_samples
from lathe.data.mixing import load_mixed_samples, mix
from lathe.data.processors import SAMPLE_COLUMNS, sample_features
from lathe.data.report import DataReport
from lathe.data.table import arrow_table, encode_in_process
from lathe.data.templates import resolve_template
from lathe.model.load import load_tokenizer
from lathe.registry import STAGES


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    datasets.disable_progress_bars()


def run_setup(cfg):
    tokenizer = load_tokenizer(cfg.model)
    template = resolve_template(cfg.data.template, tokenizer)
    template.fix_tokenizer(tokenizer)
    return tokenizer, template


@pytest.mark.parametrize("stage", ["sft", "dpo", "kto"])
def test_in_process_equals_datasets_map(sft_config, stage):
    names = {"sft": "lathe_identity", "dpo": "lathe_pairs", "kto": "lathe_feedback"}
    cfg = load_config(sft_config(stage=stage, dataset=names[stage], cutoff_len=48))
    tokenizer, template = run_setup(cfg)
    samples = load_mixed_samples(cfg.data.dataset, cfg, DataReport())
    processor = STAGES[stage].processor
    kwargs = processor.kwargs(cfg, tokenizer, template)
    ours = encode_in_process(samples, SAMPLE_COLUMNS, processor.encode, kwargs, batch_size=7)
    theirs = datasets.Dataset.from_list(samples, features=sample_features()).map(
        processor.encode, batched=True, batch_size=7, fn_kwargs=kwargs, remove_columns=list(SAMPLE_COLUMNS))
    assert ours.features == theirs.features
    assert ours.to_list() == theirs.to_list()


def test_a_function_may_change_the_row_count():
    """pt packs a batch's texts into fewer blocks; a batch may also give no row at all."""

    def halve(batch):
        keep = batch["x"][::2]
        return {"ids": [np.arange(x, dtype=np.int64) for x in keep], "_drop": ["" for _ in keep]}

    samples = [{"x": x} for x in range(7)]
    data = encode_in_process(samples, ["x"], halve, {}, batch_size=3)
    assert data["ids"] == [[], [0, 1], [0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]]  # batches 0-2, 3-5, 6


def test_a_batch_of_empty_lists_joins_the_others():
    """Every sample of a batch dropped (empty lists, no type of their own) must not break the table."""

    def encode(batch):
        return {"ids": [list(range(x)) if x > 2 else [] for x in batch["x"]]}

    data = encode_in_process([{"x": x} for x in (0, 1, 5)], ["x"], encode, {}, batch_size=2)
    assert data["ids"] == [[], [], [0, 1, 2, 3, 4]]
    assert data.features["ids"].feature.dtype == "int64"


def test_numpy_columns_become_one_list_column():
    table = arrow_table({"ids": [np.array([1, 2], dtype=np.int64), np.array([], dtype=np.int64)], "flag": [True, False]})
    assert table.column("ids").type == pa.list_(pa.int64())
    assert table.to_pydict() == {"ids": [[1, 2], []], "flag": [True, False]}


def test_token_columns_are_stored_narrow_as_datasets_stores_them():
    table = arrow_table({"input_ids": [np.array([7, 8])], "attention_mask": [[1, 1]], "labels": [np.array([-100, 8])]})
    assert [table.column(c).type.value_type for c in table.column_names] == [pa.int32(), pa.int8(), pa.int64()]


def test_worker_processes_give_the_same_data(sft_config):
    cfg = load_config(sft_config(dataset="lathe_identity,lathe_numbers"))
    tokenizer, template = run_setup(cfg)
    samples = load_mixed_samples(cfg.data.dataset, cfg, DataReport())
    report = DataReport()
    in_process = tokenize_samples(samples, cfg, tokenizer, template, report)
    with_workers = load_config(sft_config(dataset="lathe_identity,lathe_numbers", preprocessing_num_workers=2))
    workers_report = DataReport()
    workers = tokenize_samples(samples, with_workers, tokenizer, template, workers_report)
    assert in_process.to_list() == workers.to_list() and in_process.features == workers.features
    assert workers_report.to_dict() == report.to_dict() and report.tokens > 0


@pytest.mark.parametrize("strategy", ["interleave_under", "interleave_over"])
def test_interleaving_keeps_the_order_datasets_gives(sft_config, strategy):
    cfg = load_config(sft_config(dataset="lathe_identity,lathe_numbers", mix_strategy=strategy,
                                 interleave_probs="0.3,0.7"))
    mixed = load_mixed_samples(cfg.data.dataset, cfg, DataReport())
    parts = [load_mixed_samples(name, cfg, DataReport()) for name in ("lathe_identity", "lathe_numbers")]
    expected = mix([datasets.Dataset.from_list(part, features=sample_features()) for part in parts], cfg)
    assert mixed == expected.to_list()
