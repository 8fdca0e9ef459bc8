"""The Board's UI strings in several languages, read from `locales.yaml` (data, not code).

Every `ui` string exists in every language of `languages` (tests/board/test_locales.py holds
the file to that, with `missing_translations`). Option labels and help lines live under
`fields`; English help is never copied there: it is the config schema's own help line, and
an option the file does not list shows its key and that English help in every language.
`pick_language` chooses the page's language from the browser's Accept-Language header.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

LOCALES_FILE = Path(__file__).with_name("locales.yaml")
DEFAULT_LANG = "en"


@lru_cache(maxsize=1)
def _data() -> dict:
    return yaml.safe_load(LOCALES_FILE.read_text(encoding="utf-8"))


def languages() -> dict[str, str]:
    """Language code -> its own name ({'en': 'English', 'ja': '日本語', ...}), in menu order."""
    return dict(_data()["languages"])


def t(key: str, lang: str = DEFAULT_LANG) -> str:
    """A UI string; falls back to English, then to the key itself."""
    entry = _data()["ui"].get(key, {})
    return entry.get(lang) or entry.get(DEFAULT_LANG) or key


def field_label(name: str, lang: str = DEFAULT_LANG) -> str:
    """'Learning rate (learning_rate)': the words and the config key the YAML uses."""
    entry = _data()["fields"].get(name, {})
    words = entry.get(lang) or entry.get(DEFAULT_LANG)
    return f"{words} ({name})" if words else name


def field_help(name: str, schema_help: str, lang: str = DEFAULT_LANG) -> str:
    """Help text: the translation when there is one, else the schema's own (English) help line."""
    entry = _data()["fields"].get(name, {})
    if lang != DEFAULT_LANG and entry.get(f"{lang}_help"):
        return entry[f"{lang}_help"]
    return schema_help


def missing_translations(data: dict | None = None) -> list[str]:
    """'ui.start: ko', 'fields.cutoff_len: ja_help', ...: every string an entry lacks.

    A `ui` entry needs every language; a `fields` entry needs a label in every language and a
    help line in every language but English (whose help is the schema's). Keys that name no
    language of the file are reported too, as typos ('fields.seed: jp').
    """
    data = _data() if data is None else data
    codes = list(data["languages"])
    helps = [f"{code}_help" for code in codes if code != DEFAULT_LANG]
    out = []
    for section, wanted in (("ui", codes), ("fields", codes + helps)):
        for key, entry in data[section].items():
            entry = entry or {}
            out += [f"{section}.{key}: {code}" for code in wanted if not str(entry.get(code) or "").strip()]
            out += [f"{section}.{key}: {code} (unknown language)" for code in entry if code not in wanted]
    return out


def pick_language(accept_language: str | None, offered: list[str] | None = None) -> str | None:
    """The first language of an Accept-Language header ('ru-RU,ru;q=0.9,en;q=0.8') the Board
    speaks, by the browser's order of preference; None when it speaks none of them.

    A regional tag counts as its language (zh-TW and zh-CN are zh, ja-JP is ja).
    """
    offered = list(languages()) if offered is None else offered
    ranked = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        weight = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if tag and weight > 0:
            ranked.append((-weight, i, tag.strip().lower().split("-")[0]))
    for _, _, code in sorted(ranked):
        if code in offered:
            return code
    return None
