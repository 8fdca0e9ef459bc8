"""A small on-disk cache for built artifacts (tokenized datasets, tiny models, the demo tokenizer).

Why not just `save_pretrained` into a fixed folder: a build that is interrupted (Ctrl-C,
a killed CI job, two test workers racing) would leave a folder that looks like a model but
is missing its weights, and the next run would load it and fail in a confusing way. So a
build is written into a private temporary folder, a manifest listing every file and its size
is written last, and only then is the folder renamed into place. A folder is reused only
when its manifest is present and every file it lists has the recorded size; anything else
is deleted and built again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

MANIFEST = ".lathe-build.json"


def default_cache_root() -> Path:
    """`$XDG_CACHE_HOME/lathe`, or `~/.cache/lathe` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lathe"


def short_hash(payload: Any, n: int = 12) -> str:
    """A short, stable hash of any JSON-serialisable value (keys sorted)."""
    text = json.dumps(payload, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def hash_files(paths: Iterable[Path], root: Path | None = None) -> str:
    """Hash the names and bytes of files, so renaming or editing any of them changes the key."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        name = str(path.relative_to(root)) if root is not None else path.name
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def is_complete(folder: Path) -> bool:
    """True when `folder` holds a manifest and every file it lists, at the recorded size."""
    manifest = folder / MANIFEST
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return bool(files)


def build_once(target: Path, build: Callable[[Path], None], info: dict[str, Any] | None = None) -> Path:
    """Return `target`, first running `build(tmp_folder)` and moving the result there if needed.

    `info` is stored in the manifest so a cached folder says what it was built from.
    """
    target = Path(target)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache should be readable
    try:
        build(tmp)
        for path in tmp.rglob("*"):
            if path.is_file():
                os.chmod(path, 0o644)  # some writers (safetensors) leave files private
        files = {
            str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        manifest = {"files": files, "info": info or {}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str), encoding="utf-8")
        if target.exists() and not is_complete(target):
            # Left by an interrupted build or a manual copy: never reuse it.
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same build first; keep theirs.
            if not is_complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
