"""Every option of the Train tab has its words in every language, not only the visible rows.

tests/board/test_locales.py holds each entry to every language; these tests hold the file to
the form: an option the schema adds to the Train tab (a method panel's, an optimizer's, a memory
switch) without a `fields` entry shows its raw key and English help in every language, so it fails
here instead of reaching the page untranslated.
"""

from __future__ import annotations

import re

import yaml

from lathe.board.form import TRAINING_FIELDS, sections, train_form
from lathe.board.locales import LOCALES_FILE, field_help, field_label

HELP_LANGS = ("zh", "ru", "ko", "ja")


def _entries() -> dict:
    return yaml.safe_load(LOCALES_FILE.read_text(encoding="utf-8"))["fields"]


def test_every_option_of_every_train_section_has_an_entry():
    entries = _entries()
    fields = train_form()
    assert {f.section for f in fields} <= set(sections())
    assert [f"{f.section}: {f.name}" for f in fields if f.name not in entries] == []


def test_method_panels_and_memory_options_are_labelled_in_each_language():
    assert field_label("lora_rank", "ja") == "LoRA ランク (lora_rank)"
    assert field_label("galore_rank", "zh") == "GaLore 秩 (galore_rank)"
    assert field_label("oft_block_size", "ru") == "Размер блока OFT (oft_block_size)"
    assert field_label("tiled_mlp", "ko") == "타일 MLP (tiled_mlp)"
    assert field_help("offload_activations", "English help", "en") == "English help"
    assert field_help("offload_activations", "English help", "ja").startswith("GPU 学習")


def test_translated_help_keeps_the_option_keys_the_schema_help_names():
    """Option names are YAML keys: a help line that names one (cutoff_len, adapter_name_or_path)
    names it untranslated in every language. Hugging Face's own help lines are shortened in the
    translations, so only lathe's options are held to it."""
    entries = _entries()
    fields = [f for f in train_form() if f.name not in TRAINING_FIELDS]
    keys = {f.name for f in fields} | set(TRAINING_FIELDS)
    lost = []
    for f in fields:
        named = {w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", f.help) if "_" in w and w in keys}
        for lang in HELP_LANGS:
            lost += [f"{f.name}.{lang}_help: {k}" for k in sorted(named) if k not in entries[f.name][f"{lang}_help"]]
    assert lost == []


def test_an_unlisted_option_falls_back_to_its_key_and_english_help():
    assert "no_such_option" not in _entries()
    assert field_label("no_such_option", "ja") == "no_such_option"
    assert field_help("no_such_option", "Schema help.", "ru") == "Schema help."
