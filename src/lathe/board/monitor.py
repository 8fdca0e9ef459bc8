"""Live view of a run: progress, ETA and the loss curve, read from `output_dir/trainer_log.jsonl`.

The training process writes one JSON line per logging step (`train/callbacks.py`); the Board
only reads that file, so it shows the same numbers for a run it started and for one started
from a shell in the same folder.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ..train.callbacks import LOG_FILE


def read_log(output_dir: str | Path) -> list[dict[str, Any]]:
    """The records written so far; a half-written last line is skipped, not an error."""
    path = Path(output_dir) / LOG_FILE
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def loss_points(records: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(r["current_steps"], r["loss"]) for r in records if "loss" in r and "current_steps" in r]


def loss_frame(records: list[dict[str, Any]]):
    import pandas as pd

    points = loss_points(records)
    return pd.DataFrame({"step": [p[0] for p in points], "loss": [p[1] for p in points]})


def progress_html(records: list[dict[str, Any]], state: str, label: str | None = None, lang: str = "en") -> str:
    """A progress bar with steps, percentage, elapsed time and ETA, its words in `lang`.

    `state` (idle/running/finished/failed/aborted) and the number of loss points are also
    kept as data attributes, for scripts and the browser test; `label` is the state in words.
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
        f'<div id="lathe-progress" data-state="{html.escape(state)}" data-points="{len(loss_points(records))}">'
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
