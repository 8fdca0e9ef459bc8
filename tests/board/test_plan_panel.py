"""The Train tab's "Will it fit?" panel: `lathe plan`'s numbers for the form, and the warning before Start.

New UI strings may not be merged into locales.yaml yet (t() then returns the key), so these tests
look at numbers, config keys, data attributes and elem_ids, never at English words.
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest

from lathe.board.checks import check_config
from lathe.board.plan_panel import (
    build_plan_panel,
    changes,
    form_key,
    guard,
    parse_memory_text,
    plan_report,
    start_warning,
    verdict_html,
)
from lathe.efficiency import plan as planning
from lathe.errors import LatheError
from lathe.model.memory import GiB

DATA = Path(__file__).resolve().parents[2] / "data"
MiB = 1024**2


@pytest.fixture
def form(tiny_llama, tmp_path):
    """The raw dict the Train tab's `collect` makes, for the tiny model on the identity data."""

    def make(**overrides):
        raw = {"do_train": True, "model_name_or_path": str(tiny_llama), "stage": "sft", "finetuning_type": "lora",
               "template": "chatml", "dataset_dir": str(DATA), "dataset": "lathe_identity", "cutoff_len": 128,
               "per_device_train_batch_size": 4, "output_dir": str(tmp_path / "out")}
        raw.update(overrides)
        return raw

    return make


def _plan_inputs(raw):
    cfg = check_config(raw)
    lengths = planning.data_lengths(cfg)
    return cfg, lengths, planning.model_shape(planning.meta_model(cfg)), planning.plan_kwargs(cfg, lengths=lengths)


def test_the_report_holds_lathe_plans_numbers(form):
    raw = form()
    report = plan_report(raw, memory=80 * GiB)
    cfg, lengths, shape, kwargs = _plan_inputs(raw)
    expected = planning.estimate(shape, "lora", batch=4 * lengths.rows, **kwargs).total
    assert (report.method, report.needed, report.memory, report.fits) == ("lora", expected, 80 * GiB, True)
    assert report.seq == lengths.seq < 128  # the data's longest sample, not cutoff_len
    assert report.text == planning.plan(cfg, 80 * GiB, lengths=lengths)  # exactly `lathe plan`'s table
    assert 'data-fits="yes"' in verdict_html(report) and f'data-needed="{expected}"' in verdict_html(report)
    assert start_warning(raw, 80 * GiB) is None


def test_sharded_devices_share_the_weights(form):
    raw = form(finetuning_type="full", deepspeed=str(DATA.parent / "examples/deepspeed/ds_z3_config.json"))
    one, two = (plan_report(raw, 80 * GiB, devices=n, table=False) for n in (1, 2))
    cfg, lengths, shape, kwargs = _plan_inputs(raw)
    kwargs = planning.plan_kwargs(cfg, 2, "zero3", lengths)
    assert two.needed == planning.estimate(shape, "full", batch=4, **kwargs).total < one.needed


def test_the_forms_method_names_its_plan_row(form):
    assert plan_report(form(finetuning_type="full", use_galore=True), 80 * GiB, table=False).method == "galore"
    assert plan_report(form(finetuning_type="freeze"), 80 * GiB, table=False).method == "freeze"
    oft = plan_report(form(finetuning_type="oft"), 80 * GiB)
    assert oft.fits is None and oft.needed is None and "oft" in oft.note and oft.text  # the table is still there
    assert 'data-fits="unknown"' in verdict_html(oft)
    assert start_warning(form(finetuning_type="oft"), MiB) is None  # not plannable: no warning, no error


def test_a_tiny_device_does_not_fit(form):
    raw = form(finetuning_type="full")
    report = plan_report(raw, memory=MiB)
    assert report.fits is False and report.needed > MiB
    assert (report.max_batch, report.max_cutoff, report.lighter, changes(report)) == (0, 0, (), [])
    warning = start_warning(raw, MiB)
    assert warning is not None and "1.0M" in warning
    assert 'data-fits="no"' in verdict_html(report)


def test_the_warning_names_the_batch_cutoff_and_methods_that_fit(form):
    raw = form(finetuning_type="full")
    _, _, shape, kwargs = _plan_inputs(raw)
    relaxed = {**kwargs, "checkpointing": True, "tiled": True}  # the run checkpoints as memory needs
    memory = planning.estimate(shape, "full", batch=2, **relaxed).total  # a batch of 2 fits, not 4
    report = plan_report(raw, memory, table=False)
    assert report.fits is False and report.needed == planning.estimate(shape, "full", batch=4, **relaxed).total
    assert report.max_batch == planning.largest_batch(shape, "full", memory, **relaxed) and 2 <= report.max_batch < 4
    assert report.max_cutoff == planning.longest_cutoff(shape, "full", memory, batch=4,
                                                         **{k: v for k, v in relaxed.items() if k != "seq"})
    warning = start_warning(raw, memory)
    assert f"per_device_train_batch_size: {report.max_batch}" in warning
    assert f"cutoff_len: {report.max_cutoff}" in warning and report.max_cutoff < report.seq

    full = planning.estimate(shape, "full", batch=1, **relaxed).total
    lora = planning.estimate(shape, "lora", batch=4, **relaxed).total
    memory = (full + lora) // 2  # lora at batch 4 fits; full fits at no batch
    report = plan_report(raw, memory, table=False)
    assert report.fits is False and report.max_batch == 0 and "lora" in [name for name, _, _ in report.lighter]
    assert "`finetuning_type: lora (" in start_warning(raw, memory)


def test_start_warns_once_then_lets_the_same_form_through(form):
    raw = form(finetuning_type="full")
    warning, key = guard(raw, "en", "1MiB")
    assert warning and key == form_key(raw, "1MiB")
    assert guard(raw, "en", "1MiB", key) == (None, None)  # pressed again: it starts
    changed = form(finetuning_type="full", cutoff_len=64)
    warning, other = guard(changed, "en", "1MiB", key)  # another form: warned again
    assert warning and other != key
    assert guard(raw, "en", "", None) == (None, None)  # this machine's memory: fits
    with pytest.raises(LatheError, match="device memory"):
        guard(raw, "en", "lots")
    assert parse_memory_text(" ") is None and parse_memory_text("24GiB") == 24 * GiB


def test_the_panel_plans_the_form(form, tmp_path):
    from lathe.board.chat import ChatSession
    from lathe.board.context import BoardContext
    from lathe.board.runner import Runner
    from lathe.board.widgets import Widgets

    ctx = BoardContext(Runner(tmp_path / "wd"), ChatSession(), Widgets("en"))
    with gr.Blocks() as app:
        ctx.lang_pick = gr.Dropdown(choices=["en"], value="en")
        box = gr.Textbox(value=json.dumps(form()))
        processes = gr.Number(value=1)
        panel = build_plan_panel(ctx, [box, processes], lambda args: (json.loads(args[0]), int(args[1]), {}))
    assert isinstance(panel.warned, gr.State) and panel.button.elem_id == "plan-run"
    on_plan = next(f.fn for f in app.fns.values() if f.name == "on_plan")
    text, verdict = on_plan("80GiB", json.dumps(form()), 1, "en")
    assert text.startswith("model ") and "device memory: 80.0 GiB" in text and 'data-fits="yes"' in verdict
    text, verdict = on_plan("1MiB", json.dumps(form()), 1, "en")
    assert 'data-fits="no"' in verdict
    text, verdict = on_plan("", json.dumps(form(model_name_or_path=str(tmp_path / "nothing"))), 1, "en")
    assert text == "" and 'data-error="1"' in verdict and "model_name_or_path" in verdict


def test_the_board_has_the_panel(tmp_path, monkeypatch):
    from lathe.board.app import create_board

    monkeypatch.chdir(tmp_path)
    board = create_board(tmp_path / "wd")
    ids = {getattr(c, "elem_id", None) for c in board.blocks.values()}
    assert {"plan-panel", "plan-memory", "plan-run", "plan-out", "plan-verdict"} <= ids
    assert any(f.name == "on_plan" for f in board.fns.values())
