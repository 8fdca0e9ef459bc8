"""The one error type a user sees.

Every problem a user can fix (a bad key, a missing file, a malformed row) is raised as
`LatheError` with a message that names the file, row or key and says what to do. The CLI
prints these messages without a traceback; anything else is a bug in lathe and keeps its
traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class LatheError(Exception):
    """An error caused by the user's input, with a message they can act on."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean `a`, `b`?' for the closest names, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + ", ".join(f"`{c}`" for c in close) + "?"
