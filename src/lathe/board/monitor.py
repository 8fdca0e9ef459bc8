"""Live view of a run: progress, ETA and the loss curve, read from `output_dir/trainer_log.jsonl`.

The training process writes one JSON line per logging step (`train/callbacks.py`); the Board
only reads that file, so it shows the same numbers for a run it started and for one started
from a shell in the same folder. GRPO / RLOO runs also log their rewards there and a few
sampled completions per logging step in `completions.jsonl`, read by `reward_frame` and
`latest_completions` for the Train tab's watch (watch.py).
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..train.callbacks import LOG_FILE

COMPLETIONS_FILE = "completions.jsonl"  # train/grpo.py's COMPLETIONS_FILE (not imported: that module pulls in trl)
PROMPT_CHARS = 400  # the end of a long prompt is shown (the question sits there, after the template's preamble)


def read_jsonl(path: str | Path, since: float | None = None) -> list[dict[str, Any]]:
    """The JSON records of a file one writer appends to, a line each; [] when there is no such file.

    A line that does not parse (the half-written last one, while the writer is at it) is skipped,
    not an error, and so is a line that is not an object. `since` (a time.time()): a file last
    modified before it is an earlier run's, not this one's, and gives [].
    """
    path = Path(path)
    try:
        if since is not None and path.stat().st_mtime < since:
            return []
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return json_objects(lines)


def json_objects(lines: Iterable[str | bytes]) -> list[dict[str, Any]]:
    """The lines that parse as JSON objects; the rest (a half-written last line, a stray value) skipped."""
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_log(output_dir: str | Path) -> list[dict[str, Any]]:
    """The records of `output_dir/trainer_log.jsonl` written so far (see `read_jsonl`)."""
    return read_jsonl(Path(output_dir) / LOG_FILE)


def loss_points(records: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(r["current_steps"], r["loss"]) for r in records if "loss" in r and "current_steps" in r]


def loss_frame(records: list[dict[str, Any]]):
    import pandas as pd

    points = loss_points(records)
    return pd.DataFrame({"step": [p[0] for p in points], "loss": [p[1] for p in points]})


def progress_html(records: list[dict[str, Any]], state: str, label: str | None = None, lang: str = "en",
                  dom_id: str = "lathe-progress") -> str:
    """A progress bar with steps, percentage, elapsed time and ETA, its words in `lang`.

    `state` (idle/running/finished/failed/aborted) and the number of loss points are also
    kept as data attributes, for scripts and the browser test; `label` is the state in words;
    `dom_id` tells the bars of one page apart (the Train tab's and each job's).
    """
    from .locales import t

    last = records[-1] if records else {}
    pct = float(last.get("percentage", 100.0 if state == "finished" and records else 0.0))
    steps = f"{last.get('current_steps', 0)}/{last.get('total_steps', '?')}"
    parts = [f"{steps} {t('prog_steps', lang)}", f"{pct:.0f}%"]
    if "elapsed_time" in last:
        parts.append(f"{t('prog_elapsed', lang)} {last['elapsed_time']}")
    if last.get("remaining_time") and state == "running":
        parts.append(f"{t('prog_eta', lang)} {last['remaining_time']}")
    if "loss" in last:
        parts.append(f"{t('prog_loss', lang)} {last['loss']:.4f}")
    text = html.escape(" · ".join(parts))
    return (
        f'<div id="{html.escape(dom_id)}" data-state="{html.escape(state)}" data-points="{len(loss_points(records))}">'
        f'<div style="background:#e5e7eb;border-radius:4px;height:14px">'
        f'<div style="background:#2563eb;width:{min(max(pct, 0), 100):.1f}%;height:14px;border-radius:4px"></div></div>'
        f"<div><b>{html.escape(label or state)}</b> · {text}</div></div>"
    )


def checkpoints(output_dir: str | Path) -> list[str]:
    """checkpoint-N folders of output_dir, newest first."""
    out = Path(output_dir).expanduser()
    if not out.is_dir():
        return []
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return [str(p) for p in sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True)]


def read_metrics(folder: str | Path, name: str) -> dict[str, Any]:
    """`predict_results.json`, `all_results.json` or `results.json` of a finished run."""
    path = Path(folder) / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


# ---------------------------------------------------------------- runs started elsewhere; GRPO / RLOO


def log_is_live(output_dir: str | Path, within_s: float = 30.0) -> bool:
    """Whether a run is writing `output_dir/trainer_log.jsonl` now: written to in the last `within_s`
    seconds, and its last record short of 100%. Only the file's end is read (`last_record`)."""
    path = Path(output_dir).expanduser() / LOG_FILE
    try:
        if time.time() - path.stat().st_mtime > within_s:
            return False
    except OSError:
        return False
    last = last_record(path)
    return last is not None and _number(last.get("percentage")) < 100.0


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def last_record(path: str | Path, chunk: int = 8192) -> dict[str, Any] | None:
    """The last whole JSON object of a .jsonl file, read from its end (a half-written last line is
    passed over for the one before); None when the file holds none or cannot be read."""
    path = Path(path)
    while True:
        try:
            lines, whole = _tail_lines(path, chunk)
        except OSError:
            return None
        records = json_objects(lines)
        if records:
            return records[-1]
        if whole:
            return None
        chunk *= 8


def throughput_text(records: list[dict[str, Any]]) -> str:
    """The newest tokens/s the log holds ("1,234.5"), or "—" (none yet, or a stage that does not count tokens)."""
    for record in reversed(records):
        value = record.get("throughput")
        if isinstance(value, (int, float)):
            return f"{value:,.1f}"
    return "—"


def reward_frame(records: list[dict[str, Any]]):
    """step, reward, series: the mean reward ("reward") and each reward function's mean, in long
    format for one LinePlot coloured by series."""
    import pandas as pd

    rows = []
    for r in records:
        if "current_steps" not in r or "reward" not in r:
            continue
        rows.append((r["current_steps"], float(r["reward"]), "reward"))
        for key, value in r.items():
            if key.startswith("rewards/") and key.endswith("/mean") and isinstance(value, (int, float)):
                rows.append((r["current_steps"], float(value), key[len("rewards/"):-len("/mean")]))
    return pd.DataFrame(rows, columns=["step", "reward", "series"])


def _tail_lines(path: Path, chunk: int) -> tuple[list[bytes], bool]:
    """The last complete lines held in the file's last `chunk` bytes, and whether that reached its start."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        fh.seek(max(0, end - chunk))
        data = fh.read()
    lines = data.split(b"\n")
    whole = end <= chunk
    if not whole:
        lines = lines[1:]  # the first one is cut
    return [line for line in lines if line.strip()], whole


def latest_completions(output_dir: str | Path, n: int = 4) -> list[dict[str, Any]]:
    """The last logging step's sampled completions (at most `n`) from `completions.jsonl`.

    Only the file's end is read (it grows every logging step); a half-written last line is skipped.
    """
    path = Path(output_dir).expanduser() / COMPLETIONS_FILE
    chunk = 64 * 1024
    while True:
        try:
            lines, whole = _tail_lines(path, chunk)
        except OSError:
            return []
        rows = [row for row in json_objects(lines) if "step" in row]
        if rows:
            last = rows[-1]["step"]
            group = [r for r in rows if r["step"] == last]
            if whole or len(group) < len(rows):  # the step before shows too: the group is complete
                return group[:n]
        elif whole:
            return []
        chunk *= 4


def completions_frame(rows: list[dict[str, Any]]):
    """The samples as a table: step, reward, each reward function's score, prompt (its end), completion."""
    import pandas as pd

    fixed = ("step", "reward", "prompt", "completion")
    funcs = list(dict.fromkeys(k for row in rows for k in row if k not in fixed))
    columns = ["step", "reward", *funcs, "prompt", "completion"]
    table = []
    for row in rows:
        prompt = str(row.get("prompt", ""))
        if len(prompt) > PROMPT_CHARS:
            prompt = "…" + prompt[-PROMPT_CHARS:]
        table.append([row.get("step"), row.get("reward"), *[row.get(f) for f in funcs], prompt,
                      str(row.get("completion", ""))])
    return pd.DataFrame(table, columns=columns)
