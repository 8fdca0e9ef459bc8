"""The tokenized-data cache: a second run with the same inputs skips preprocessing.

The key covers everything that decides the token ids: the data files' bytes (or, for very
large files, their size, time and first/last megabyte), the registry entries, the
tokenizer, the template and its options, and the data options (cutoff, masking, packing,
mixing, samples). Any change gives a new key, so a stale cache is never read. Entries are
written atomically (`lathe.build_cache.build_once`), so a preprocessing run killed halfway leaves
nothing that a later run could mistake for a result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .. import __version__
from ..build_cache import build_once, default_cache_root, is_complete, short_hash

if TYPE_CHECKING:
    from ..config import RunConfig

PROCESSOR_VERSION = 1  # bump when tokenization or packing changes its output
FULL_HASH_LIMIT = 256 * 2**20
EDGE = 2**20
REPORT_FILE = "report.json"


def cache_dir() -> Path:
    return default_cache_root() / "datasets"


def fingerprint_file(path: Path) -> str:
    """Hash of a file's bytes; for huge files, of its size, mtime and first and last megabyte."""
    stat = path.stat()
    digest = hashlib.sha256(f"{path.name}:{stat.st_size}".encode())
    with open(path, "rb") as f:
        if stat.st_size <= FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
        else:
            digest.update(str(stat.st_mtime_ns).encode())
            digest.update(f.read(EDGE))
            f.seek(-EDGE, 2)
            digest.update(f.read(EDGE))
    return digest.hexdigest()


def _attr_files(attr, dataset_dir: str) -> list[Path]:
    if not attr.file_name:
        return []
    path = Path(dataset_dir) / attr.file_name
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.exists() else []


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [backend.to_str() if backend is not None else str(sorted(tokenizer.get_vocab().items()))]
    parts.append(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str))
    parts.append(str(getattr(tokenizer, "chat_template", "") or ""))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def template_fingerprint(template) -> str:
    from datasets.fingerprint import Hasher

    return Hasher.hash(template)


# preprocessing_batch_size is here since packing while tokenizing (pt) packs within each batch:
# the batch size decides where the short blocks fall.
DATA_KEYS = (
    "cutoff_len", "max_samples", "train_on_prompt", "mask_history", "default_system", "mix_strategy",
    "interleave_probs", "packing", "neat_packing", "enable_thinking", "tool_format",
    "preserve_thinking", "preprocessing_batch_size",
)


def dataset_key(names: str, attrs: list, cfg: "RunConfig", tokenizer, template, stage: str) -> str:
    d = cfg.data
    payload: dict[str, Any] = {
        "lathe": __version__,
        "processor": PROCESSOR_VERSION,
        "stage": stage,
        "names": names,
        "attrs": [dataclasses.asdict(a) for a in attrs],
        "files": {a.name: [fingerprint_file(p) for p in _attr_files(a, d.dataset_dir)] for a in attrs},
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": template_fingerprint(template),
        "data": {k: getattr(d, k) for k in DATA_KEYS},
        "seed": cfg.training.seed,
    }
    return short_hash(payload, n=20)


def save_tokenized(folder: Path, dataset, report) -> None:
    dataset.save_to_disk(str(folder / "data"))
    (folder / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")


def load_tokenized(folder: Path):
    """(dataset, report dict) from a folder written by `save_tokenized`, memory-mapped."""
    from datasets import load_from_disk

    report = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
    return load_from_disk(str(folder / "data")), report


def cached(key: str, build: Callable[[], tuple[Any, Any]], overwrite: bool):
    """Return (dataset, report dict, hit) for `key`, building and storing it on a miss."""
    folder = cache_dir() / key
    if overwrite and folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    hit = is_complete(folder)
    if not hit:
        built: dict[str, Any] = {}

        def write(tmp: Path) -> None:
            dataset, report = build()
            save_tokenized(tmp, dataset, report)
            built["report"] = report

        build_once(folder, write, {"key": key})
    dataset, report = load_tokenized(folder)
    return dataset, report, hit
