"""The one error type a user sees.

Every problem a user can fix (a bad key, a missing file, a malformed row) is raised as
`LatheError` with a message that names the file, row or key and says what to do. The CLI
prints these messages without a traceback; anything else is a bug in lathe and keeps its
traceback.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")


class LatheError(Exception):
    """An error caused by the user's input, with a message they can act on."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean `a`, `b`?' for the closest names, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + ", ".join(f"`{c}`" for c in close) + "?"


def lookup(registry: Mapping[str, T], name: str, what: str, plural: str | None = None, hint: str = "") -> T:
    """`registry[name]`, or a LatheError with the close names and every registered one (sorted).

    The registries of formats, templates, tool formats and test models all answer an unknown
    name this way.
    """
    if name not in registry:
        raise LatheError(
            f"Unknown {what} `{name}`.{did_you_mean(name, registry)} Registered {plural or what + 's'}: "
            f"{', '.join(sorted(registry))}." + (f" {hint}" if hint else "")
        )
    return registry[name]


def read_json_file(path: str | Path, what: str = "") -> Any:
    """Parse a JSON file; a syntax error names `path:line:column` (and `what` the file is for)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise LatheError(
            f"{path}:{error.lineno}:{error.colno}: invalid JSON{what and ' in ' + what}: {error.msg}. "
            "Fix the file at that line."
        ) from None
    except UnicodeDecodeError as error:
        raise LatheError(f"{path} is not UTF-8 text ({error}).") from None
