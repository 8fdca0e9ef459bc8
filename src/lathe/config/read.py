"""Read a config: a YAML or JSON file and `key=value` overrides, into one flat dict of raw values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import LatheError


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Load a YAML or JSON config file into a flat dict, naming the file and line on errors."""
    p = Path(path)
    if not p.exists():
        raise LatheError(f"Config file not found: {p}. Give the path of a .yaml or .json file.")
    if p.is_dir():
        raise LatheError(f"{p} is a folder; give the path of a .yaml or .json config file.")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise LatheError(f"{p}, line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise LatheError(f"{p}{where}: invalid YAML: {getattr(e, 'problem', e)}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LatheError(f"{p}: a config is a mapping of `key: value` lines, got a {type(data).__name__}.")
    return data


def split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """CONFIG and the key=value overrides of `lathe <command> [CONFIG] key=value ...` (the config is optional)."""
    return (args[0], args[1:]) if args and "=" not in args[0] else (None, args)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn `key=value` command-line items into a dict; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LatheError(f"Override `{item}` is not of the form key=value (e.g. learning_rate=1e-4).")
        if value.strip().lower() in ("yes", "no", "on", "off", "y", "n"):
            out[key.strip()] = value.strip()  # a word, not YAML 1.1's boolean (save_strategy=no)
            continue
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out
