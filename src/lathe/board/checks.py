"""What the Board checks before it launches anything: paths typed into it, then the real config.

The config itself is validated by `build_config`, the same function `lathe train` runs, so a
bad value fails in the Board with the message the shell would print. Paths get a check of
their own first because in a browser form a typo in a folder name is the most common mistake
and the later error ("model not found on the hub") would point the wrong way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..config.load import RunConfig, build_config
from ..data.dataset_info import ONLINE, REGISTRY_FILE
from ..errors import LatheError

# A Hugging Face hub id: "name" or "org/name".
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

# Options that name a model folder or a hub id / an existing folder / an existing file.
MODEL_KEYS = ("model_name_or_path", "ref_model")
FOLDER_KEYS = ("adapter_name_or_path", "resume_from_checkpoint", "task_dir")
FILE_KEYS = ("export_quantization_dataset",)


def looks_local(value: str) -> bool:
    """A path a user meant as a local one (absolute, ./, ../, ~, or more than one slash)."""
    return value.startswith(("/", ".", "~", "\\")) or value.count("/") > 1 or bool(re.match(r"^[A-Za-z]:", value))


def check_paths(raw: dict[str, Any]) -> None:
    """Refuse paths that do not exist before anything runs; names the key and the path."""
    for key in MODEL_KEYS:
        value = raw.get(key)
        if not value or not isinstance(value, str):
            continue
        if Path(value).expanduser().exists():
            continue
        if looks_local(value) or not HUB_ID.match(value):
            raise LatheError(f"`{key}`: {value} is not an existing folder (nor a hub id like Qwen/Qwen2.5-0.5B).")
    for key in FOLDER_KEYS:
        value = raw.get(key)
        if not value or not isinstance(value, str) or value in ("true", "True"):
            continue
        for part in value.split(",") if key == "adapter_name_or_path" else [value]:
            if not Path(part.strip()).expanduser().is_dir():
                raise LatheError(f"`{key}`: folder not found: {part.strip()}.")
    for key in FILE_KEYS:
        value = raw.get(key)
        if value and isinstance(value, str) and not Path(value).expanduser().is_file():
            raise LatheError(f"`{key}`: file not found: {value}.")
    dataset_dir = raw.get("dataset_dir", "data")
    if (raw.get("dataset") or raw.get("eval_dataset")) and dataset_dir != ONLINE:
        registry = Path(str(dataset_dir)).expanduser() / REGISTRY_FILE
        if not registry.is_file():
            raise LatheError(f"`dataset_dir`: {dataset_dir} holds no {REGISTRY_FILE}; give the folder that has it.")
    out = raw.get("output_dir")
    if out and isinstance(out, str) and Path(out).expanduser().is_file():
        raise LatheError(f"`output_dir`: {out} is a file; give a folder.")
    for key in ("export_dir", "save_dir"):
        value = raw.get(key)
        if value and isinstance(value, str) and Path(value).expanduser().is_file():
            raise LatheError(f"`{key}`: {value} is a file; give a folder.")


def check_config(raw: dict[str, Any], purpose: str = "train", source: str = "Board") -> RunConfig:
    """Paths, then the full validation of `lathe train` / `lathe chat`; raises LatheError."""
    if not raw.get("model_name_or_path"):
        raise LatheError("`model_name_or_path` is required: choose a model or type a local folder / hub id.")
    if purpose == "train" and raw.get("do_train", True) and not raw.get("dataset"):
        raise LatheError("`dataset` is required: pick at least one dataset from the list.")
    check_paths(raw)
    return build_config(raw, source=source, purpose=purpose)
