"""The Board's UI strings in several languages, read from `locales.yaml` (data, not code)."""

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
    """Help text: the translation when there is one, else the schema's own help line."""
    entry = _data()["fields"].get(name, {})
    if lang != DEFAULT_LANG and entry.get(f"{lang}_help"):
        return entry[f"{lang}_help"]
    return schema_help
