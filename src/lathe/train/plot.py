"""The loss curve PNG written at the end of a run (`plot_loss: true`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .callbacks import LOG_FILE


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Exponential moving average; the weight grows with the number of points so short runs stay readable."""
    if not values:
        return []
    if weight is None:
        weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    out, last = [], values[0]
    for v in values:
        last = last * weight + (1 - weight) * v
        out.append(last)
    return out


def read_log(output_dir: str | Path, key: str = "loss") -> tuple[list[int], list[float]]:
    steps, values = [], []
    path = Path(output_dir) / LOG_FILE
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if key in record:
                steps.append(record["current_steps"])
                values.append(record[key])
    return steps, values


def plot_loss(output_dir: str | Path, keys: tuple[str, ...] = ("loss", "eval_loss")) -> list[Path]:
    """Write `training_<key>.png` for each logged key; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key in keys:
        steps, values = read_log(output_dir, key)
        if not steps:
            continue
        fig = plt.figure(figsize=(6.4, 4.0))
        plt.plot(steps, values, color="#1f77b4", alpha=0.4, label="original")
        if len(values) > 1:
            plt.plot(steps, smooth(values), color="#1f77b4", label="smoothed")
        plt.title(f"{key} of {Path(output_dir).name}")
        plt.xlabel("step")
        plt.ylabel(key)
        plt.legend()
        path = Path(output_dir) / f"training_{key}.png"
        plt.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
