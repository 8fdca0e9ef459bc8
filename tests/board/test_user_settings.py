"""What the Board remembers between starts: <workdir>/user_config.yaml (language, model, folders)."""

from __future__ import annotations

import gradio as gr
import pytest
import yaml

from lathe.board.user_settings import SETTINGS_NAME, UserSettings, start_language


def _fn(app, name: str, target=None):
    """The handler called `name` (the one `target` fires, when several share the name)."""
    found = [f for f in app.fns.values() if f.name == name and (target is None or f.inputs == [target])]
    assert len(found) == 1, f"{len(found)} handlers named {name}"
    return found[0].fn


def test_settings_round_trip_through_the_work_folder(tmp_path):
    settings = UserSettings(tmp_path / "wd")
    assert settings.as_dict() == {} and not (tmp_path / "wd").exists()
    assert settings.update(lang="ja", model_name_or_path="/models/tiny", dataset_dir="data")
    assert not settings.update(lang="ja")  # unchanged: the file is not written again
    again = UserSettings(tmp_path / "wd")
    assert again.as_dict() == {"lang": "ja", "model_name_or_path": "/models/tiny", "dataset_dir": "data"}
    assert again.update(dataset_dir="", output_dir=" saves/x ")
    assert yaml.safe_load((tmp_path / "wd" / SETTINGS_NAME).read_text()) == {
        "lang": "ja", "model_name_or_path": "/models/tiny", "output_dir": "saves/x"}
    with pytest.raises(KeyError, match="hf_hub_token"):
        again.update(hf_hub_token="hf_x")


def test_a_broken_settings_file_is_reported_and_replaced(tmp_path, capsys):
    (tmp_path / SETTINGS_NAME).write_text("lang: [unclosed\n")
    settings = UserSettings(tmp_path)
    assert settings.as_dict() == {}
    assert SETTINGS_NAME in capsys.readouterr().err
    (tmp_path / SETTINGS_NAME).write_text("- a list\n")
    assert UserSettings(tmp_path).as_dict() == {}
    (tmp_path / SETTINGS_NAME).write_text("lang: ko\nsecret: x\noutput_dir: {a: 1}\n")
    assert UserSettings(tmp_path).as_dict() == {"lang": "ko"}  # unknown keys and odd values are dropped
    assert settings.update(lang="ru") and UserSettings(tmp_path).get("lang") == "ru"


def test_start_language_order():
    header = "ko-KR,ko;q=0.9"
    assert start_language("zh", "ja", header) == "zh"  # --lang wins
    assert start_language(None, "ja", header) == "ja"  # then the language last picked in the menu
    assert start_language(None, None, header) == "ko"  # then the browser's
    assert start_language(None, "xx", "fr") == "en"  # else English


def test_the_board_remembers_model_folders_and_language_between_starts(tmp_path):
    from lathe.board.app import create_board

    workdir = tmp_path / "wd"
    app = create_board(workdir)
    w = app.lathe_widgets
    lang_pick = next(c for c, kind, key in w.labels if key == "lang")
    # What the page's events do: the user picks Korean in the menu and types a model and folders.
    _fn(app, "on_change", lang_pick)("ko")
    hub = next(c for c, kind, key in w.labels if key == "hub")
    _fn(app, "on_change", hub)("modelscope")
    for name, value in (("model_name_or_path", "/models/tiny"), ("template", "chatml"), ("dataset_dir", "my_data"),
                        ("output_dir", "saves/run1")):
        _fn(app, "on_change", w.components[name])(value)
    assert yaml.safe_load((workdir / SETTINGS_NAME).read_text()) == {
        "lang": "ko", "hub": "modelscope", "model_name_or_path": "/models/tiny", "template": "chatml",
        "dataset_dir": "my_data", "output_dir": "saves/run1"}

    # The next start: built in Korean, and a page opening gets the values back, whatever its browser says.
    app = create_board(workdir)
    assert app.lathe_widgets.lang == "ko"
    code, hub_name, model, template, dataset_dir, output_dir = _fn(app, "on_open")(
        gr.Request(headers={"accept-language": "ja"}))
    assert isinstance(code, type(gr.skip()))  # built in Korean already: the menu is left as it is
    assert (hub_name, model, template, dataset_dir, output_dir) == (
        "modelscope", "/models/tiny", "chatml", "my_data", "saves/run1")
    # --lang still decides the language; an empty remembered value leaves the field at its default.
    UserSettings(workdir).update(output_dir=None)
    app = create_board(workdir, lang="ru")
    assert app.lathe_widgets.lang == "ru"
    code, *_, output_dir = _fn(app, "on_open")(gr.Request(headers={"accept-language": "ja"}))
    assert isinstance(code, type(gr.skip())) and isinstance(output_dir, type(gr.skip()))
