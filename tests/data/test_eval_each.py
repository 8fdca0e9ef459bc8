"""`eval_on_each_dataset`: each eval dataset is evaluated on its own, one `eval_<name>_loss` each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lathe.config import load_config
from lathe.data.loader import get_dataset
from lathe.errors import LatheError
from tests.data.test_loader import private_cache, setup  # noqa: F401 (private_cache: an autouse fixture)

EVALS = "lathe_identity,lathe_numbers"


def bundle(cfg):
    return get_dataset(cfg, *setup(cfg))


def test_loader_returns_one_eval_set_per_name(sft_config):
    on = bundle(load_config(sft_config(eval_dataset=EVALS, eval_on_each_dataset=True, max_samples=5)))
    assert list(on.eval) == ["lathe_identity", "lathe_numbers"]
    assert [len(d) for d in on.eval.values()] == [5, 5]
    identity = bundle(load_config(sft_config(eval_dataset="lathe_identity", max_samples=5))).eval
    assert on.eval["lathe_identity"]["input_ids"] == identity["input_ids"]
    # Without the option the names are mixed into one set, as before.
    off = bundle(load_config(sft_config(eval_dataset=EVALS, max_samples=5)))
    assert len(off.eval) == 10 and not isinstance(off.eval, dict)


def test_streamed_eval_sets_are_separate(sft_config):
    cfg = load_config(sft_config(eval_dataset=EVALS, eval_on_each_dataset=True, streaming=True, max_steps=2))
    evals = bundle(cfg).eval
    assert list(evals) == ["lathe_identity", "lathe_numbers"]
    first = {name: list(next(iter(data))["input_ids"]) for name, data in evals.items()}
    assert first["lathe_identity"] != first["lathe_numbers"]


def test_sft_run_logs_a_loss_per_eval_dataset(sft_config):
    from lathe.train import run_stage

    cfg = load_config(sft_config(eval_dataset=EVALS, eval_on_each_dataset=True, do_eval=True, max_samples=8,
                                 max_steps=2, per_device_eval_batch_size=4, eval_strategy="steps", eval_steps=1))
    metrics = run_stage(cfg).metrics
    losses = {k: v for k, v in metrics.items() if k.startswith("eval_") and k.endswith("_loss")}
    assert set(losses) == {"eval_lathe_identity_loss", "eval_lathe_numbers_loss"}
    assert losses["eval_lathe_identity_loss"] != losses["eval_lathe_numbers_loss"]
    # the evaluations during training reach trainer_log.jsonl (the Board's curves), one record per dataset and step
    records = [json.loads(line) for line in (Path(cfg.training.output_dir) / "trainer_log.jsonl").read_text().splitlines()]
    logged = {(r["current_steps"], k) for r in records for k in r if k.startswith("eval_") and k.endswith("_loss")}
    assert {(1, "eval_lathe_identity_loss"), (1, "eval_lathe_numbers_loss"), (2, "eval_lathe_numbers_loss")} <= logged


@pytest.mark.parametrize("extra, message", [
    ({"val_size": 0.2, "eval_dataset": None}, "`val_size` holds out one set"),
    ({"val_size": 0, "eval_dataset": None}, "none is named"),
    ({"eval_dataset": EVALS, "do_predict": True}, "cannot go with `do_predict`"),
])
def test_refused_where_there_is_no_set_per_name(sft_config, extra, message):
    config = {"eval_on_each_dataset": True, "max_samples": 20, **extra}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(LatheError, match=message):  # when the config loads, before any data is read
        load_config(sft_config(**config))
