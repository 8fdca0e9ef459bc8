"""What the Board's tabs share: the runner, the chat session, the widgets, the top bar and the run folders.

The top bar (model, adapter, method, template, quantization, RoPE, attention) belongs to every
tab: training reads it, and chat / evaluate / export load the model it names.

Run folders follow LLaMA Board's layout, `<save root>/<model>/<method>/<run>` (save root `saves`,
relative to where the Board runs): a new run is `train_<timestamp>`, and the folders already there
are the model's past runs (offered as output folders to go on with) and, where they hold an
adapter, the adapters to load. `<model>` is the last part of the model's path or hub id
(`Qwen/Qwen2.5-0.5B` -> `Qwen2.5-0.5B`), so a hub id and its downloaded folder share their runs.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.options import FinetuningArguments
from ..errors import LatheError
from .chat import ChatSession
from .form import FormField, values_to_raw
from .runner import Run, Runner
from .widgets import Widgets

SAVE_ROOT = "saves"
RUN_MARKERS = ("trainer_log.jsonl", "adapter_config.json", "config.json")  # files a run folder holds
ADAPTER_FILE = "adapter_config.json"


DEFAULT_METHOD = FinetuningArguments.finetuning_type  # the config's default method, for a form without one


def model_folder_name(model: str | None) -> str:
    """The folder name of a model under the save root: the last part of its path or hub id, made safe."""
    name = Path(str(model or "").strip().rstrip("/\\")).name
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "model"


def save_dir(model: str | None, method: str | None, root: str | Path = SAVE_ROOT) -> Path:
    """`<root>/<model>/<method>`: where the runs of one model and finetuning method go."""
    return Path(root) / model_folder_name(model) / (str(method or "").strip() or DEFAULT_METHOD)


def new_run_dir(model: str | None, method: str | None, root: str | Path = SAVE_ROOT, kind: str = "train") -> str:
    """A fresh output folder, `<root>/<model>/<method>/<kind>_<timestamp>` (kind: train, predict or eval)."""
    return str(save_dir(model, method, root) / f"{kind}_{time.strftime('%Y-%m-%d-%H-%M-%S')}")


def follows_model(folder: str | None, kind: str) -> bool:
    """Whether an output folder is still one the Board named (empty, or `<kind>_<timestamp>`), so a new
    model or method may rename it; a folder the user typed is left alone."""
    name = Path(str(folder or "").strip()).name
    return not name or re.fullmatch(rf"{kind}_\d{{4}}(-\d\d){{5}}", name) is not None


def is_run(folder: Path) -> bool:
    """Whether a folder is a run's output: a training log, an adapter, a model, or checkpoints."""
    if any((folder / name).is_file() for name in RUN_MARKERS):
        return True
    return any(p.is_dir() and p.name.split("-")[-1].isdigit() for p in folder.glob("checkpoint-*"))


def past_runs(model: str | None, method: str | None, root: str | Path = SAVE_ROOT) -> list[str]:
    """The run folders of this model and method (a training log, an adapter, a model or checkpoints), newest first."""
    base = save_dir(model, method, root)
    if not base.is_dir():
        return []
    found = [p for p in base.iterdir() if p.is_dir() and is_run(p)]
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def adapter_runs(model: str | None, method: str | None, root: str | Path = SAVE_ROOT) -> list[str]:
    """The past runs of this model and method that hold an adapter (`adapter_config.json`), newest first."""
    return [run for run in past_runs(model, method, root) if (Path(run) / ADAPTER_FILE).is_file()]


def output_choices(model: str | None, method: str | None, current: str | None,
                   root: str | Path = SAVE_ROOT) -> tuple[list[str], str]:
    """(choices, value) of the output-folder menu: a fresh run name, then the past runs.

    The current value stays when it is already a folder of this model and method (a remembered
    or a picked run); otherwise the fresh name replaces it, as a new model or method starts a new run.
    """
    fresh = new_run_dir(model, method, root)
    runs = past_runs(model, method, root)
    current = (current or "").strip()
    base = save_dir(model, method, root)
    keep = bool(current) and Path(current).parent == base
    value = current if keep else fresh
    choices = [value, *[r for r in runs if r != value]]
    if keep and value not in runs:  # a fresh name kept: no second fresh one next to it
        return choices, value
    return ([fresh] if fresh != value else []) + choices, value


def error_md(lang: str, error: Exception) -> str:
    from .locales import t

    return f"**{t('msg_error', lang)}:** {error}"


@dataclass
class BoardContext:
    runner: Runner
    session: ChatSession
    w: Widgets
    top: list[FormField] = field(default_factory=list)
    # The language menu: handlers take its value as their last input, so that the messages they
    # return speak the language the page shows now (each page has its own), not the one it was built in.
    lang_pick: Any = None
    hub: Any = None  # the hub menu (launch.HUBS): runs get its USE_*_HUB variables
    save_root: str = SAVE_ROOT  # where run folders go: <save_root>/<model>/<method>/<run>

    @property
    def top_components(self) -> list[Any]:
        return [self.w.components[f.name] for f in self.top]

    def top_raw(self, values: list[Any]) -> dict[str, Any]:
        """The top bar's options as config keys (non-defaults only, model always)."""
        raw = values_to_raw(self.top, dict(zip([f.name for f in self.top], values)))
        return raw

    def state_of(self, run: Run | None) -> str:
        if run is None:
            return "idle"
        code = run.returncode()
        if code is None:
            return "running"
        if run.aborted:
            return "aborted"
        return "finished" if code == 0 else "failed"


def split_args(args: tuple[Any, ...], *sizes: int) -> list[list[Any]]:
    """Cut a handler's positional values into the groups they were wired as."""
    out, i = [], 0
    for size in sizes:
        out.append(list(args[i:i + size]))
        i += size
    if i != len(args):
        raise LatheError(f"internal: expected {i} values, got {len(args)}")
    return out
