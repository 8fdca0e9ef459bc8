"""The tokenized-data cache: a second run with the same inputs skips preprocessing.

The key covers everything that decides the token ids: the data files' bytes (or, for very
large files, their size, time and first/last megabyte), the registry entries, the
tokenizer, the template and its options, and the data options (cutoff, masking, packing,
mixing, samples). Any change gives a new key, so a stale cache is never read. Entries are
written atomically (`lathe.build_cache.build_once`), so a preprocessing run killed halfway leaves
nothing that a later run could mistake for a result.

Large data is built in shards (`ShardStore`, in `<key>.shards` beside the entry): the samples and
every finished shard are kept when a run is killed, so the next run with the same key resumes
instead of starting over; the finished shards become the entry's files by renaming.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .. import __version__
from ..build_cache import build_once, default_cache_root, is_complete, short_hash
from . import dedup

if TYPE_CHECKING:
    from ..config import RunConfig

PROCESSOR_VERSION = 2  # bump when tokenization or packing changes its output
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


def dataset_key(names: str, attrs: list, cfg: "RunConfig", tokenizer, template, stage: str, media=None) -> str:
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
    if media is not None:  # what decides each item's tokens: the plugin, the media options, the processor's settings
        payload["media"] = {"plugin": media.plugin.name, "options": dataclasses.asdict(media.opts),
                            "processor": media.processor.to_json_string()}
    method = dedup.dedup_method(cfg)
    if method:  # only when set: keys made before `dedup` existed stay valid
        payload["dedup"] = method
    return short_hash(payload, n=20)


def save_tokenized(folder: Path, dataset, report) -> None:
    dataset.save_to_disk(str(folder / "data"))
    (folder / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")


def load_tokenized(folder: Path):
    """(dataset, report dict) from a folder written by `save_tokenized`, memory-mapped."""
    from datasets import load_from_disk

    report = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
    return load_from_disk(str(folder / "data")), report


def cached(key: str, build: Callable[[Path], Any], overwrite: bool):
    """Return (dataset, report dict, hit) for `key`; on a miss `build(folder)` writes the entry into a
    temporary folder (`save_tokenized`, or `ShardStore.move_into`) that becomes the entry once complete.

    `overwrite` also clears the shards a killed run left (see `ShardStore`)."""
    folder = cache_dir() / key
    if overwrite:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(shards_dir(key), ignore_errors=True)
    hit = is_complete(folder)
    if not hit:
        build_once(folder, build, {"key": key})
        shutil.rmtree(shards_dir(key), ignore_errors=True)
    dataset, report = load_tokenized(folder)
    return dataset, report, hit

SHARDS_SUFFIX = ".shards"
PLAN_FILE = "plan.json"


def shards_dir(key: str) -> Path:
    """Where the finished shards of an entry under `key` wait until every shard is done."""
    return cache_dir() / f"{key}{SHARDS_SUFFIX}"


class ShardStore:
    """The samples and tokenized shards of one cache entry while it is built, each file written atomically and
    kept across runs.

    Why: tokenizing millions of rows takes long enough for a run to be killed (kill -9, out of memory, a
    pre-empted machine). The canonical samples are first written once, as an Arrow file of record batches
    of `shard_rows` samples (`write_samples`), so neither this process nor a worker holds them all in
    memory; shard i is batch i. Each tokenized shard is written under a temporary name and renamed into
    place, then a small JSON file with its counts beside it: a shard is done when both are there. A rerun
    with the same cache key (the same data and options) reads the samples file and the report of the
    reading back and tokenizes only the shards that are not done. `plan.json` records the shard size, the
    sample count and that report; a folder made with another shard size is cleared.
    """

    def __init__(self, key: str, shard_rows: int):
        self.folder = shards_dir(key)
        self.shard_rows = shard_rows
        try:
            self.plan = json.loads((self.folder / PLAN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.plan = {}
        if self.plan.get("key") != key or self.plan.get("shard_rows") != shard_rows or not self.samples_path.is_file():
            shutil.rmtree(self.folder, ignore_errors=True)
            self.plan = {"key": key, "shard_rows": shard_rows}

    @property
    def samples_path(self) -> Path:
        return self.folder / "samples.arrow"

    @property
    def has_samples(self) -> bool:
        return "samples" in self.plan

    @property
    def samples(self) -> int:
        return self.plan["samples"]

    @property
    def reading_report(self) -> dict[str, Any]:
        """The report of reading and converting the rows, as it was when the samples were written."""
        return self.plan["report"]

    def write_samples(self, chunks: Iterable[list[dict[str, Any]]], report) -> int:
        """Store the canonical samples of `chunks` (lists of `sample_row` dicts) as record batches of
        `shard_rows`, then the plan with their count and `report` (the reading's counts, final once the
        chunks are exhausted). Returns the count."""
        import pyarrow as pa

        from .processors import sample_features

        schema = sample_features().arrow_schema
        self.folder.mkdir(parents=True, exist_ok=True)
        count = 0

        def arrow(f) -> None:
            nonlocal count
            pending: list[dict[str, Any]] = []
            with pa.ipc.new_file(f, schema) as writer:
                for chunk in chunks:
                    pending += chunk
                    while len(pending) >= self.shard_rows:
                        writer.write_batch(pa.RecordBatch.from_pylist(pending[:self.shard_rows], schema=schema))
                        count += self.shard_rows
                        del pending[:self.shard_rows]
                if pending:
                    writer.write_batch(pa.RecordBatch.from_pylist(pending, schema=schema))
                    count += len(pending)

        _write_atomically(self.samples_path, arrow)
        self.plan.update(samples=count, report=report.to_dict())
        _write_atomically(self.folder / PLAN_FILE, lambda f: f.write(json.dumps(self.plan).encode("utf-8")))
        return count

    def sample_columns(self, index: int) -> dict[str, list]:
        """Shard `index`'s samples as a dict of columns (what a processor takes), read (not memory-mapped)
        so that the memory goes back once the shard is done."""
        import pyarrow as pa

        with pa.OSFile(str(self.samples_path)) as f:
            batch = pa.ipc.open_file(f).get_batch(index)
        return batch.to_pydict()

    @property
    def count(self) -> int:
        return -(-self.samples // self.shard_rows)

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.shard_rows
        return start, min(start + self.shard_rows, self.samples)

    def data_path(self, index: int) -> Path:
        return shard_data_path(self.folder, index)

    def counts_path(self, index: int) -> Path:
        return shard_counts_path(self.folder, index)

    def done(self, index: int) -> bool:
        return shard_done(self.folder, index)

    def write(self, index: int, table, counts: dict[str, Any]) -> None:
        """Store shard `index` (a pyarrow Table) and its report counts; safe against a kill at any point."""
        import pyarrow as pa

        def arrow(f) -> None:
            with pa.ipc.new_stream(f, table.schema) as writer:  # datasets' own file format (Dataset.from_file)
                writer.write_table(table)

        _write_atomically(self.data_path(index), arrow)
        _write_atomically(self.counts_path(index), lambda f: f.write(json.dumps(counts).encode("utf-8")))

    def counts(self, index: int) -> dict[str, Any]:
        return json.loads(self.counts_path(index).read_text(encoding="utf-8"))

    def dataset(self):
        """Every shard, memory-mapped and concatenated (no copy), once all are done."""
        from datasets import Dataset, concatenate_datasets

        return concatenate_datasets([Dataset.from_file(str(self.data_path(i))) for i in range(self.count)])

    def move_into(self, folder: Path, report) -> None:
        """Make `folder` a `save_tokenized` folder from the shards by renaming them: nothing is copied or read
        back, so finishing a data set of any size costs no memory. `load_tokenized` (datasets'
        `load_from_disk`) reads it."""
        self._finish_into(folder, report, os.replace)

    def link_into(self, folder: Path, report) -> None:
        """`move_into`, keeping the shards where they are too (a hard link, or a copy on another file system),
        for a reader that may still open them there (`data/background.py`); then the store goes."""
        def link(source: Path, target: Path) -> None:
            try:
                os.link(source, target)
            except OSError:  # another file system (or one without links)
                shutil.copyfile(source, target)

        self._finish_into(folder, report, link)
        self.remove()

    def _finish_into(self, folder: Path, report, place: Callable[[Path, Path], Any]) -> None:
        from datasets import Dataset
        from datasets.fingerprint import generate_random_fingerprint

        data = folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        names = [linked_shard(folder, i, self.count).name for i in range(self.count)]
        info = Dataset.from_file(str(self.data_path(0))).info
        for index, name in enumerate(names):
            place(self.data_path(index), data / name)
        state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": generate_random_fingerprint(),
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
                 "_split": None}
        (data / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
        (data / "dataset_info.json").write_text(json.dumps(dataclasses.asdict(info), indent=1, default=str), encoding="utf-8")
        (folder / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def shard_data_path(folder: Path, index: int) -> Path:
    """Shard `index`'s Arrow file in a `ShardStore` folder."""
    return folder / f"shard-{index:06d}.arrow"


def shard_counts_path(folder: Path, index: int) -> Path:
    """Shard `index`'s report counts beside its Arrow file, written after it: the shard is done once both are there."""
    return folder / f"shard-{index:06d}.json"


def shard_done(folder: Path, index: int) -> bool:
    return shard_counts_path(folder, index).is_file() and shard_data_path(folder, index).is_file()


def linked_shard(folder: Path, index: int, count: int) -> Path:
    """Shard `index` (of `count`) once it is part of a finished `tokenized_path` / cache folder."""
    return folder / "data" / f"data-{index:05d}-of-{count:05d}.arrow"


def _write_atomically(path: Path, write: Callable[[Any], Any]) -> None:
    """`write(file)` into a temporary file beside `path`, flushed to disk, then renamed over `path`: a reader
    (or a rerun after a kill) sees the whole file or none."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
