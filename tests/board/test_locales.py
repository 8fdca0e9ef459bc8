"""The Board's languages: every string in every language, labels per language, browser language."""

from __future__ import annotations

import gradio as gr
import pytest
import yaml

from lathe.board.form import train_form
from lathe.board.locales import LOCALES_FILE, field_help, field_label, languages, missing_translations, pick_language, t

LANGS = ["en", "zh", "ru", "ko", "ja"]
# Shown without opening a panel (top bar, first rows, training grid) or in the Extras panel:
# these must be translated; the other panels' options may fall back to their key and English help.
TRANSLATED_SECTIONS = ("top", "basic", "training", "extras")


def _fn(app, name: str):
    """The event handler called `name` and the components it takes, from a built Board."""
    found = [f for f in app.fns.values() if f.name == name]
    assert len(found) == 1, f"{len(found)} handlers named {name}"
    return found[0]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    from lathe.board.app import create_board

    return create_board(tmp_path_factory.mktemp("wd"))


def test_the_board_speaks_five_languages_and_every_entry_has_them_all():
    assert list(languages()) == LANGS
    assert missing_translations() == []


def test_a_missing_or_misspelt_language_is_reported():
    data = yaml.safe_load(LOCALES_FILE.read_text(encoding="utf-8"))
    del data["ui"]["start"]["ko"]
    data["fields"]["seed"].pop("ja_help")
    data["fields"]["seed"]["jp"] = "シード"
    data["ui"]["abort"]["ru"] = "  "
    assert sorted(missing_translations(data)) == sorted([
        "ui.start: ko", "ui.abort: ru", "fields.seed: ja_help", "fields.seed: jp (unknown language)"])


def test_visible_options_are_translated_and_the_rest_fall_back_to_english():
    entries = yaml.safe_load(LOCALES_FILE.read_text(encoding="utf-8"))["fields"]
    shown = [f.name for f in train_form() if f.section in TRANSLATED_SECTIONS]
    assert [name for name in shown if name not in entries] == []
    assert field_label("cutoff_len", "ja") == "最大長 (cutoff_len)"
    assert field_label("learning_rate", "ru") == "Скорость обучения (learning_rate)"
    assert field_help("learning_rate", "The initial learning rate.", "ko") == "옵티마이저의 초기 학습률."
    assert field_help("learning_rate", "The initial learning rate.", "en") == "The initial learning rate."
    # An option the file does not list (every Train-tab option has an entry now): its key, and the schema's
    # English help in every language.
    assert "no_such_option" not in entries
    assert field_label("no_such_option", "ja") == "no_such_option"
    assert field_help("no_such_option", "Schema help.", "ru") == "Schema help."
    assert t("no_such_key", "ko") == "no_such_key" and t("start", "xx") == "Start"


@pytest.mark.parametrize("header, expected", [
    ("ja-JP,ja;q=0.9,en-US;q=0.8", "ja"),
    ("de-DE,de;q=0.9,ko;q=0.8,en;q=0.5", "ko"),
    ("en;q=0.3, ru-RU", "ru"),
    ("zh-TW,zh;q=0.9", "zh"),
    ("ru;q=0, fr", None),
    ("fr-FR, *", None),
    ("", None),
    (None, None),
])
def test_browser_language_is_the_first_one_the_board_speaks(header, expected):
    assert pick_language(header) == expected


def test_every_widget_is_relabelled_in_every_language(board):
    widgets = board.lathe_widgets
    n = len(widgets.relabel_targets())
    seen = {}
    for lang in LANGS:
        updates = widgets.relabel(lang)
        assert len(updates) == n
        assert all(u.get("label") or u.get("value") for u in updates)
        seen[lang] = [u.get("label") or u.get("value") for u in updates]
    assert "最大長 (cutoff_len)" in seen["ja"] and "学習" in seen["ja"] and "開始" in seen["ja"]
    assert "Запустить" in seen["ru"] and "Размер батча (per_device_train_batch_size)" in seen["ru"]
    assert "시작" in seen["ko"] and "학습률 (learning_rate)" in seen["ko"]
    assert len({tuple(labels) for labels in seen.values()}) == len(LANGS)


def test_page_opens_in_the_browsers_language(board):
    on_open = _fn(board, "on_open").fn
    assert on_open(gr.Request(headers={"accept-language": "ko-KR,ko;q=0.9,en;q=0.8"}))[0] == "ko"
    # English, as the page was built: the menu is left alone (a language picked meanwhile stays)
    assert isinstance(on_open(gr.Request(headers={"accept-language": "fr-FR"}))[0], type(gr.skip()))
    assert isinstance(on_open(gr.Request(headers={}))[0], type(gr.skip()))


def test_messages_speak_the_language_the_menu_shows_now(board):
    """Handlers get the menu's value last, so a page switched to Japanese gets Japanese messages."""
    lang_pick = next(c for c, kind, key in board.lathe_widgets.labels if key == "lang")
    abort = _fn(board, "on_abort")
    assert abort.inputs[-1] is lang_pick
    assert abort.fn(None, "ja") == "実行中のものはありません。"
    assert abort.fn(None, "ru") == "Ничего не запущено."
    preview = _fn(board, "on_data_preview")
    assert preview.inputs[-1] is lang_pick
    *_, message = preview.fn(*[c.value for c in preview.inputs[:-1]], "ko")  # the form as built: no model yet
    assert message.startswith("**오류:**")
    for name in ("on_preview", "on_start", "on_tick", "on_save", "on_load", "start", "tick"):
        assert all(f.inputs[-1] is lang_pick for f in board.fns.values() if f.name == name), name

    from lathe.board.monitor import progress_html

    records = [{"current_steps": 2, "total_steps": 4, "loss": 1.5, "percentage": 50.0, "elapsed_time": "0:00:02",
                "remaining_time": "0:00:02"}]
    assert "2/4 ステップ · 50% · 経過 0:00:02 · 残り 0:00:02 · 損失 1.5000" in progress_html(records, "running", "", "ja")
    assert "2/4 steps · 50% · elapsed 0:00:02 · ETA 0:00:02 · loss 1.5000" in progress_html(records, "running")


def test_unknown_start_language_is_refused(tmp_path):
    from lathe.board.app import create_board
    from lathe.errors import LatheError

    with pytest.raises(LatheError, match="--lang de: the Board speaks en, zh, ru, ko, ja"):
        create_board(tmp_path / "wd", lang="de")


def test_a_new_language_redraws_the_progress_bar_and_the_gauge(board):
    """They are drawn text, not labels: the language menu redraws them even when no run ticks."""
    from lathe.board.locales import t

    lang_pick = next(c for c, kind, key in board.lathe_widgets.labels if key == "lang")
    redraw = next(f for f in board.fns.values() if f.name == "on_tick" and f.targets and
                  any(target[0] == lang_pick._id for target in f.targets))
    progress, *_rest, memory, _speed, _rewards, _samples = redraw.fn(None, "", "sft", "ja")
    assert t("state_idle", "ja") in progress and t("watch_device", "ja") in memory
