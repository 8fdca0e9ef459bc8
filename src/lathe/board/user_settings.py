"""What the Board remembers from one start to the next: `<workdir>/user_config.yaml`.

The language picked in the menu, the hub models come from, the last model (path and template) and the last folders
(dataset_dir, output_dir) live in the Board's work folder, next to its runs, as LLaMA Board
keeps `user_config.yaml` in its cache folder. A page opening anew gets them back. Only these
keys are kept, as plain text; nothing secret is ever written (tokens are never Board fields).
A file that cannot be read is reported on stderr and replaced by the next save: it is
the Board's own memory, never the user's only copy of anything.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from .launch import HUBS
from .locales import DEFAULT_LANG, languages, pick_language

SETTINGS_NAME = "user_config.yaml"
# What is remembered: the language, and the values of these Board fields (by config key).
REMEMBERED_FIELDS = ("model_name_or_path", "template", "dataset_dir", "output_dir")
REMEMBERED_MENUS = ("hub",)  # Board menus that are no config key
REMEMBERED = ("lang", *REMEMBERED_MENUS, *REMEMBERED_FIELDS)


class UserSettings:
    """The remembered settings of one work folder; `update` writes the file when a value changes."""

    def __init__(self, workdir: str | Path) -> None:
        self.path = Path(workdir).expanduser() / SETTINGS_NAME
        self._lock = threading.Lock()
        self._values = self._read()

    def _read(self) -> dict[str, str]:
        if not self.path.is_file():
            return {}
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            _warn(f"{self.path} could not be read ({e}); starting without remembered settings.")
            return {}
        if data is None:
            return {}
        if not isinstance(data, dict):
            _warn(f"{self.path} is not a `key: value` mapping; starting without remembered settings.")
            return {}
        values = {k: str(v) for k, v in data.items() if k in REMEMBERED and isinstance(v, (str, int, float)) and str(v)}
        if values.get("hub") not in (None, *HUBS):  # a hand-edited name the menu lacks: not given back
            _warn(f"{self.path}: hub {values.pop('hub')!r} is none of {', '.join(HUBS)}; not remembered.")
        return values

    def get(self, key: str) -> str | None:
        return self._values.get(key)

    def as_dict(self) -> dict[str, str]:
        return dict(self._values)

    def update(self, **values: Any) -> bool:
        """Remember `values` (keys of REMEMBERED; empty or None forgets one); True when the file was written."""
        unknown = sorted(set(values) - set(REMEMBERED))
        if unknown:
            raise KeyError(f"not a remembered Board setting: {', '.join(unknown)} (known: {', '.join(REMEMBERED)})")
        with self._lock:
            new = dict(self._values)
            for key, value in values.items():
                text = "" if value is None else str(value).strip()
                if text:
                    new[key] = text
                else:
                    new.pop(key, None)
            if new == self._values:
                return False
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(f".{SETTINGS_NAME}.{os.getpid()}.tmp")
                tmp.write_text(yaml.safe_dump(new, sort_keys=False, allow_unicode=True), encoding="utf-8")
                os.replace(tmp, self.path)
            except OSError as e:
                _warn(f"could not write {self.path} ({e}); the Board goes on without remembering this.")
                return False
            self._values = new
            return True


def start_language(forced: str | None, remembered: str | None, accept_language: str | None) -> str:
    """The page's language when it opens: `--lang` if given, else the one last picked in the
    menu, else the browser's (Accept-Language) when the Board speaks it, else English."""
    offered = list(languages())
    for code in (forced, remembered):
        if code in offered:
            return code
    return pick_language(accept_language, offered) or DEFAULT_LANG


def _warn(message: str) -> None:
    print(f"[lathe] Board settings: {message}", file=sys.stderr, flush=True)
