"""Where the time from the command to the first training step goes: one log line per run.

A user waiting for the first step cannot tell importing torch from tokenizing or loading weights; the line
`start-up: 6.1 s to the first step: python 0.1, torch + transformers 2.0, config 1.9, ...` says it. Phases are
marked in order by the code that does them (`mark`); each phase is the time since the previous mark, the first
since the process started (read from /proc, so the interpreter's own start and lathe's imports count too).
"""

from __future__ import annotations

import os
import time

_marks: list[tuple[str, float]] = []
_reported = False


def process_start() -> float:
    """The wall-clock time this process started (Linux: /proc), else the first mark's time."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _marks[0][1] if _marks else time.time()


def mark(phase: str) -> None:
    """`phase` ended now (ignored once the line was given: later runs in the process start with `reset`)."""
    if not _reported:
        _marks.append((phase, time.time()))


def summary() -> str | None:
    """The start-up line, once per process (None after it was given, or when nothing was marked)."""
    global _reported
    if _reported or not _marks:
        return None
    _reported = True
    start = min(process_start(), _marks[0][1])
    parts, before = [], start
    for phase, at in _marks:
        parts.append(f"{phase} {at - before:.1f}")
        before = at
    return f"start-up: {_marks[-1][1] - start:.1f} s to the first step: " + ", ".join(parts) + " (s)"


def reported() -> bool:
    return _reported


def reset() -> None:
    """Forget the marks (a second run in the same process, e.g. the Board or a test)."""
    global _reported
    _marks.clear()
    _reported = False
