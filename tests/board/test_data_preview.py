"""The Train tab's data preview: pages of the data a form trains on, the learned tokens marked, as the shell shows them.

`data.preview.preview_page` is the one path `lathe data preview` and the Board take; these tests hold
it to the labels the run computes (a learned mark exactly where a label is not IGNORE_INDEX), to its
pages, and the Board's handlers to the form they read.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import re

import pytest

from lathe.config import load_config
from lathe.data.preview import join_marked, page_text, preview, preview_page, render_marked
from lathe.errors import LatheError
from tests.conftest import DATA

MARKED = re.compile(r'<mark class="lathe-learned"[^>]*>(.*?)</mark>', re.DOTALL)
SAMPLE_DIV = re.compile(r'<div class="lathe-sample" data-index="(\d+)" data-part="(\w*)".*?</pre></div>', re.DOTALL)


def _identity_rows() -> int:
    return len(json.loads((DATA / "lathe_identity.json").read_text()))


@pytest.fixture
def cfg(sft_config):
    return load_config(sft_config(), purpose="infer")


def test_pages_hold_their_own_samples_and_tokenize_only_those(cfg, monkeypatch):
    from lathe.data import preview as module

    tokenized = []
    real = module.tokenize_samples
    monkeypatch.setattr(module, "tokenize_samples", lambda samples, *a, **k: tokenized.append(len(samples)) or
                        real(samples, *a, **k))
    first, second = preview_page(cfg, 0, 2), preview_page(cfg, 1, 2)
    assert tokenized == [2, 2]  # page 2 does not tokenize the whole data set
    assert first.total == second.total == _identity_rows() and first.pages == math.ceil(_identity_rows() / 2)
    assert [s.index for s in first.sequences] == [0, 1] and [s.index for s in second.sequences] == [2, 3]
    assert second.first == 2 and [r["messages"] for r in first.rows] != [r["messages"] for r in second.rows]
    assert join_marked(first.sequences[0].segments) != join_marked(second.sequences[0].segments)
    assert first.header == "datasets: lathe_identity; stage sft; template: chatml"

    last = preview_page(cfg, 999, 4)  # past the end: the last page, partly filled
    assert last.page == last.pages - 1 and len(last.sequences) == last.total - last.first <= 4
    with pytest.raises(LatheError, match="at least 1"):
        preview_page(cfg, 0, 0)


def test_learned_runs_are_exactly_the_labelled_tokens(cfg):
    """Tokenized again on their own, the page's samples give the same ids; each run of tokens with a label
    (not IGNORE_INDEX) is one learned segment, and the HTML marks those and nothing else."""
    from lathe.board.data_preview import page_html
    from lathe.data.encode import tokenize_samples
    from lathe.data.loader import run_template
    from lathe.data.mixing import load_mixed_samples
    from lathe.data.report import DataReport
    from lathe.data.sample import IGNORE_INDEX
    from lathe.model.load import add_config_tokens, load_tokenizer

    page = preview_page(cfg, 1, 3)
    tokenizer = load_tokenizer(cfg.model)
    template = run_template(cfg, tokenizer)
    template.fix_tokenizer(tokenizer)
    add_config_tokens(tokenizer, cfg.model)
    samples = load_mixed_samples(cfg.data.dataset, cfg, DataReport())[3:6]
    data = tokenize_samples(samples, cfg, tokenizer, template, DataReport())
    assert len(page.sequences) == len(data) == 3
    drawn = SAMPLE_DIV.findall(page_html(page))
    assert [int(i) for i, _ in drawn] == [3, 4, 5]
    for seq, row, block in zip(page.sequences, data, SAMPLE_DIV.finditer(page_html(page))):
        ids, labels = row["input_ids"], row["labels"]
        runs = [(tokenizer.decode([t for t, _ in run], skip_special_tokens=False), learned)
                for learned, run in itertools.groupby(zip(ids, labels), key=lambda p: p[1] != IGNORE_INDEX)
                for run in [list(run)]]
        assert seq.segments == runs and any(learned for _, learned in runs) and not runs[0][1]
        assert (seq.tokens, seq.learned) == (len(ids), sum(1 for t in labels if t != IGNORE_INDEX))
        assert join_marked(seq.segments, "plain") == render_marked(tokenizer, ids, labels, "plain")
        text = block.group(0)
        assert MARKED.findall(text) == [html.escape(t) for t, learned in seq.segments if learned]
        assert "<|im_start|>" not in text and "&lt;|im_start|&gt;" in text  # the template's tokens are escaped


def test_the_shell_preview_is_page_zero_as_text(cfg):
    page = preview_page(cfg, 0, 2)
    text = preview(cfg, 2)
    assert text == page_text(page)
    assert text.startswith(f"{page.header}; learned tokens are shown [[like this]]\n\n--- sample 0: ")
    assert text.count("--- sample") == 2 and "<|im_start|>assistant\n[[" in text


def test_pairs_and_feedback_show_their_parts(sft_config):
    from lathe.board.data_preview import page_html

    pairs = preview_page(load_config(sft_config(stage="dpo", dataset="lathe_pairs"), purpose="infer"), 1, 1)
    assert [(s.index, s.part) for s in pairs.sequences] == [(1, "chosen"), (1, "rejected")]
    assert SAMPLE_DIV.findall(page_html(pairs)) == [("1", "chosen"), ("1", "rejected")]
    feedback = preview_page(load_config(sft_config(stage="kto", dataset="lathe_feedback"), purpose="infer"), 0, 2)
    assert [s.kto_tag for s in feedback.sequences] == [True, False]


@pytest.fixture
def board(tmp_path, monkeypatch):
    from lathe.board.app import create_board

    monkeypatch.chdir(tmp_path)
    return create_board(tmp_path / "wd")


def _handler(app, name: str):
    found = [f for f in app.fns.values() if f.name == name]
    assert len(found) == 1, f"{len(found)} handlers named {name}"
    return found[0]


def test_the_board_pages_through_the_forms_data(board, tiny_llama):
    """The handlers read the whole form (top bar: model and template; the tab: stage, data, cutoff_len)."""
    comps = board.lathe_widgets.components
    form = {comps["model_name_or_path"]: str(tiny_llama), comps["template"]: "chatml",
            comps["dataset_dir"]: str(DATA), comps["dataset"]: ["lathe_identity"], comps["cutoff_len"]: "128"}
    show = _handler(board, "on_data_preview")
    per_page = next(c for c in show.inputs if getattr(c, "elem_id", None) == "preview-per-page")
    raw_rows = next(c for c in show.inputs if getattr(c, "elem_id", None) == "preview-raw")
    lang_pick = next(c for c, _, key in board.lathe_widgets.labels if key == "lang")
    assert show.inputs[-1] is lang_pick
    assert {o.elem_id for o in show.outputs} >= {"data-preview-html", "preview-page", "data-rows", "train-status"}

    def call(name, page, **values):
        handler = _handler(board, name)
        args = [{per_page: 2, raw_rows: True}.get(c, form.get(c, c.value)) for c in handler.inputs[:-1]]
        args[0] = page
        for comp, value in values.items():
            args[[getattr(c, "elem_id", None) for c in handler.inputs].index(comp)] = value
        return handler.fn(*args, "en")

    box, view, number, rows, status = call("on_data_preview", 1)
    assert box["visible"] and status == "" and number == 1
    assert 'data-page="1"' in view and f'data-total="{_identity_rows()}"' in view and 'data-per-page="2"' in view
    assert SAMPLE_DIV.findall(view) == [("0", ""), ("1", "")] and MARKED.search(view)
    assert rows["visible"] and len(rows["value"]) == 2 and rows["value"][0]["messages"][0]["role"] == "user"

    _, view, number, _, _ = call("on_preview_next", 1)
    assert number == 2 and 'data-page="2"' in view and SAMPLE_DIV.findall(view)[0] == ("2", "")
    assert call("on_preview_prev", 1)[2] == 1  # no page before the first
    pages = math.ceil(_identity_rows() / 2)
    _, view, number, _, _ = call("on_preview_page", 999)
    assert number == pages and f'data-page="{pages}" data-pages="{pages}"' in view

    box, view, number, rows, status = call("on_data_preview", 1, **{"f-model_name_or_path": ""})
    assert not box["visible"] and status.startswith("**") and "model_name_or_path" in status
    status = call("on_data_preview", 1, **{"f-dataset": []})[-1]
    assert "`dataset`" in status
