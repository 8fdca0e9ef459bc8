"""Read the rows of one registry entry, from local files or a hub, into a `datasets.Dataset`.

`datasets` does the reading (it parses json/jsonl/csv/parquet/arrow/txt, caches the result as
Arrow and memory-maps it, so a large dataset is not held in Python memory). lathe adds what it
does badly for a user: an error that names the file and the line when a JSON file is broken
(datasets reports only "An error occurred while generating the dataset"), the registry entry
when a file is missing, and a fast, clear failure instead of minutes of retries when a hub
dataset is asked for without a network.

One loader per `load_from` kind, in `LOADERS`. A row is a dict; a .txt file gives one row per
line under the key "text" (row i is line i + 1), as LLaMA-Factory reads it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import datasets

from lathe.data.dataset_info import DatasetAttr
from lathe.errors import LatheError
from lathe.hub import endpoint, hub_of, hub_reachable, offline_requested

# file extension -> the `datasets` builder that reads it
FILE_TYPES = {"arrow": "arrow", "csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet", "txt": "text"}

Rows = "datasets.Dataset | list[dict[str, Any]]"  # what `read_rows` returns; iterate with `iter_rows`
Loader = Callable[..., Rows]  # (attr, dataset_dir, cache_dir, streaming=False, token=None)


def read_rows(
    attr: DatasetAttr, dataset_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, seed: int = 0,
    streaming: bool = False, token: str | None = None,
) -> Rows:
    """The rows of `attr`: a `datasets.Dataset`, or a list of row dicts for local JSON (see `_read_json`).

    Iterate them with `iter_rows` and take some with `select_rows`.
    `cache_dir` is where `datasets` keeps its Arrow cache (default: HF_DATASETS_CACHE).
    `streaming` returns a `datasets.IterableDataset` that reads rows as they are used.
    `token` reaches the ModelScope / Modelers client only (see `entry_token`); Hugging Face
    reads its token from HF_TOKEN.
    When the entry sets `num_samples`, that many rows are drawn with `seed`: every row once
    in random order while there are enough, then rows repeated at random to make up the rest.
    """
    loader = LOADERS.get(attr.load_from)
    if loader is None:
        raise LatheError(f"{_entry(attr)}: lathe cannot load from {attr.load_from!r}; known: {', '.join(LOADERS)}.")
    rows = loader(attr, Path(dataset_dir), None if cache_dir is None else str(cache_dir), streaming=streaming,
                  token=token)
    if attr.num_samples is not None and streaming:
        raise LatheError(f"{_entry(attr)}: `num_samples` draws rows at random and cannot be used with streaming.")
    if attr.num_samples is not None:
        rows = _sample(attr, rows, attr.num_samples, seed)
    return rows


def entry_token(attr: DatasetAttr, model_args: Any) -> str | None:
    """The token `read_rows` needs for `attr`: `ms_hub_token` / `om_hub_token` for those hubs' entries."""
    hub = hub_of(attr.load_from)
    return getattr(model_args, hub.token_key) if hub else None


def iter_rows(rows: Iterable[Mapping[str, Any]], batch_size: int = 1000) -> Iterator[dict[str, Any]]:
    """The row dicts of `rows`; a `datasets.Dataset` is decoded a batch at a time, which is ~15x
    faster than `for row in dataset` (one formatting call per row)."""
    if not isinstance(rows, datasets.Dataset):
        yield from rows
        return
    for batch in rows.iter(batch_size=batch_size):
        yield from (dict(zip(batch, values)) for values in zip(*batch.values()))


def select_rows(rows: Rows, indices: Iterable[int]) -> Rows:
    """The rows at `indices`, in that order (repeats allowed)."""
    if isinstance(rows, datasets.Dataset):
        return rows.select(indices)
    return [rows[i] for i in indices]


def _entry(attr: DatasetAttr) -> str:
    return f"dataset {attr.name!r}" + (f" (entry in {attr.source})" if attr.source else "")


def _sample(attr: DatasetAttr, rows: Rows, count: int, seed: int) -> Rows:
    if len(rows) == 0:
        raise LatheError(f"{_entry(attr)} has no rows to draw num_samples={count} from.")
    rng = random.Random(seed)
    indices = rng.sample(range(len(rows)), min(count, len(rows)))
    indices += [rng.randrange(len(rows)) for _ in range(count - len(indices))]
    return select_rows(rows, indices)


# ----------------------------------------------------------------------------- local files


def _data_files(attr: DatasetAttr, path: Path) -> tuple[str, list[Path]]:
    """The builder name and files for a file or a folder of files of one known type."""
    if not path.exists():
        raise LatheError(
            f"{_entry(attr)}: file not found: {path}. Put the data there, or fix 'file_name' in the entry."
        )
    if path.is_file():
        kind = FILE_TYPES.get(path.suffix.lstrip(".").lower())
        if kind is None:
            raise LatheError(f"{_entry(attr)}: {path} has an unknown file type; lathe reads {_extensions()}.")
        return kind, [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    by_kind: dict[str, list[Path]] = {}
    for file in files:
        kind = FILE_TYPES.get(file.suffix.lstrip(".").lower())
        if kind is not None:
            by_kind.setdefault(kind, []).append(file)
    if not by_kind:
        raise LatheError(f"{_entry(attr)}: the folder {path} has no data files; lathe reads {_extensions()}.")
    if len(by_kind) > 1:
        found = "; ".join(f"{kind}: {', '.join(f.name for f in fs)}" for kind, fs in by_kind.items())
        raise LatheError(f"{_entry(attr)}: the folder {path} mixes file types ({found}); keep one type per folder.")
    ((kind, files),) = by_kind.items()
    return kind, files


def _extensions() -> str:
    return ", ".join(f".{ext}" for ext in FILE_TYPES)


def _load_file(attr: DatasetAttr, dataset_dir: Path, cache_dir: str | None, streaming: bool = False,
        token: str | None = None) -> Rows:
    kind, files = _data_files(attr, dataset_dir / (attr.file_name or ""))
    if kind == "json" and attr.split == "train" and not streaming:
        rows = _read_json(attr, files)
        if rows is not None:
            return rows
    try:
        return datasets.load_dataset(
            kind, data_files=[str(f) for f in files], split=attr.split, cache_dir=cache_dir, streaming=streaming
        )
    except Exception as error:  # the library's errors vary by file type; the message below names the cause
        if kind == "json":
            for file in files:
                problem, _ = _parse_json(file)
                if problem:
                    raise LatheError(f"{_entry(attr)}: {problem}") from error
        if "Unknown split" in str(error):
            raise LatheError(
                f"{_entry(attr)}: split {attr.split!r} does not exist; local files have one split, 'train' "
                "(slices such as 'train[:100]' work)."
            ) from error
        names = ", ".join(str(f) for f in files)
        raise LatheError(f"{_entry(attr)}: could not read {names} as {kind}: {_cause(error)}") from error


def _read_json(attr: DatasetAttr, files: list[Path]) -> list[dict[str, Any]] | None:
    """The rows of local JSON / JSON Lines files, read with the json module; None for a layout only
    `datasets` reads (a lone number or string, a list of lists, ...).

    Why not `datasets`: its JSON builder converts the file to Arrow and writes a copy into its
    cache before lathe reads the rows back into Python; for the sizes people fine-tune on that is
    most of the time spent reading, and lathe keeps its own cache of the tokenized result. The
    rows read the same: a list of objects, one object, or one object per line (in .json or
    .jsonl); a list of strings gives {"text": ...} rows; a key a row lacks is null, as `datasets`
    fills it.
    Values stay as the file has them (`datasets` would unify nested objects' keys).
    """
    rows: list[Any] = []
    for path in files:
        problem, values = _parse_json(path)
        if problem:
            raise LatheError(f"{_entry(attr)}: {problem}")
        if values is None:
            return None
        rows += values
    if rows and all(isinstance(row, str) for row in rows):
        return [{"text": row} for row in rows]
    if not all(isinstance(row, dict) for row in rows):
        return None
    keys = dict.fromkeys(key for row in rows for key in row)
    return [row if len(row) == len(keys) else {key: row.get(key) for key in keys} for row in rows]


def lazy_json_lines(attr: DatasetAttr, dataset_dir: str | os.PathLike) -> tuple[Callable[[], Iterator[dict[str, Any]]], int] | None:
    """(a function that yields the rows one at a time, the files' total bytes) for a local entry in JSON
    Lines, so that a data set larger than memory is never held whole; None for anything else (a JSON
    document, another file type, a hub, `num_samples`, a split slice), which `read_rows` reads.

    The rows are those `read_rows` gives, in the same order (two passes over the files: the first finds
    the keys, as `_read_json` does, so that a key a row lacks is null). A file is JSON Lines when its first non-blank line is a whole
    JSON object and more follows it (a document spread over lines fails that at once).
    """
    if attr.load_from != "file" or attr.num_samples is not None or attr.split != "train":
        return None
    try:
        kind, files = _data_files(attr, Path(dataset_dir) / (attr.file_name or ""))
    except LatheError:
        return None
    if kind != "json" or not all(_is_json_lines(f) for f in files):
        return None

    def parsed() -> Iterator[dict[str, Any]]:
        for path in files:
            with open(path, encoding="utf-8-sig") as f:
                for number, line in enumerate(_lines(f), start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line, strict=False)
                    except json.JSONDecodeError as error:
                        raise LatheError(f"{_entry(attr)}: {path}:{number}:{error.colno}: invalid JSON: {error.msg}") from error
                    if not isinstance(row, dict):
                        raise LatheError(f"{_entry(attr)}: {path}:{number}: a JSON Lines row must be an object")
                    yield row

    def rows() -> Iterator[dict[str, Any]]:
        # A first pass finds every key, so that a key a row lacks reads as null, as `_read_json` fills it.
        keys = dict.fromkeys(key for row in parsed() for key in row)
        for row in parsed():
            yield row if len(row) == len(keys) else {key: row.get(key) for key in keys}

    return rows, sum(f.stat().st_size for f in files)


def _lines(f) -> Iterator[str]:
    """Lines split at "\n" only, as `_parse_json` splits them (a text file's iteration also splits at \r)."""
    rest = ""
    for block in iter(lambda: f.read(2**20), ""):
        parts = (rest + block).split("\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest


def _is_json_lines(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = _lines(f)
            first = next((line for line in lines if line.strip()), None)
            if first is None or not isinstance(json.loads(first, strict=False), dict):
                return False
            return any(line.strip() for line in lines)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def _parse_json(path: Path) -> tuple[str | None, list[Any] | None]:
    """(problem, values) of one file: where it is broken as 'file:line:column: message', else its
    list, its one object, or one value per non-blank line; values None for a lone scalar.

    The suffix does not decide the layout (datasets reads either in .json and .jsonl): a whole
    document is tried first, and JSON Lines fail that at once with "Extra data" after line 1.
    Lines are split at "\n" only (`str.splitlines` would also split strings at U+2028, U+2029
    or U+0085, which `json.dumps(ensure_ascii=False)` writes as they are), and control
    characters inside strings are accepted, as pyarrow's reader accepts them.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        return f"{path} is not UTF-8 text ({error})", None
    if not text.strip():
        return None, []
    try:
        document = json.loads(text, strict=False)
    except json.JSONDecodeError as error:
        if error.msg != "Extra data":
            return f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}", None
        values = []
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    values.append(json.loads(line, strict=False))
                except json.JSONDecodeError as error:
                    return f"{path}:{number}:{error.colno}: invalid JSON: {error.msg}", None
        return None, values
    if isinstance(document, dict):  # one object, on one line or several: one row, as pyarrow reads it
        return None, [document]
    return None, document if isinstance(document, list) else None


def _cause(error: BaseException) -> str:
    """The innermost message: datasets wraps the useful one ("JSON parse error ...")."""
    seen = {id(error)}
    while (inner := error.__cause__ or error.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        error = inner
    return f"{type(error).__name__}: {error}"


# ----------------------------------------------------------------------------- hubs


def _load_hf_hub(attr: DatasetAttr, dataset_dir: Path, cache_dir: str | None, streaming: bool = False,
        token: str | None = None) -> datasets.Dataset:
    """A Hugging Face Hub dataset; fails in seconds, not after minutes of retries, when offline."""
    repo = attr.hf_hub_url or ""
    needs_network = f"{_entry(attr)} is the Hugging Face Hub dataset {repo!r} and needs the network"
    local_copy = "download it on a machine with network and point 'file_name' at the local copy"
    if datasets.config.HF_HUB_OFFLINE:
        pass  # datasets itself is offline: it looks in its cache and fails fast when the data is not there
    elif offline_requested():
        raise LatheError(f"{needs_network}, but HF_HUB_OFFLINE is set. Unset it, or {local_copy}.")
    elif not hub_reachable():
        raise LatheError(
            f"{needs_network}, but {endpoint()} cannot be reached. Connect this machine, set "
            f"HF_HUB_OFFLINE=1 to use a copy already in the datasets cache, or {local_copy}."
        )
    try:
        return datasets.load_dataset(
            repo, name=attr.subset, split=attr.split, data_dir=attr.folder, revision=attr.revision, cache_dir=cache_dir,
            streaming=streaming,
        )
    except Exception as error:  # not found, gated, offline without a cache, bad subset or split
        offline = " (offline mode: no cached copy was found)" if datasets.config.HF_HUB_OFFLINE else ""
        raise LatheError(
            f"{_entry(attr)}: could not load {repo!r}{offline}: {error}. Check the repository id, "
            f"subset and split, or {local_copy}.") from error


def _load_other_hub(attr: DatasetAttr, dataset_dir: Path, cache_dir: str | None, streaming: bool = False,
        token: str | None = None) -> Rows:
    """A ModelScope / Modelers dataset through its client's dataset class, as LLaMA-Factory loads it.

    The clients retry for minutes without a network and have no cache-only switch, so an
    unreachable hub is reported after a few seconds' probe instead.
    """
    hub = hub_of(attr.load_from)
    assert hub is not None  # LOADERS maps only these hubs' load_from here
    repo = getattr(attr, hub.url_key) or ""
    loader = hub.dataset_loader()
    local_copy = "download it on a machine with network and point 'file_name' at the local copy"
    if not hub_reachable(hub.endpoint()):
        raise LatheError(
            f"{_entry(attr)} is the {hub.name} dataset {repo!r} and needs the network, but {hub.endpoint()} "
            f"cannot be reached. Connect this machine, or {local_copy}."
        )
    where = {"cache_dir": cache_dir} if cache_dir else {}  # the client's own cache otherwise
    try:
        rows = _HUB_CALLS[hub.load_from](loader, repo, attr, token=token, streaming=streaming, **where)
    except Exception as error:  # the clients raise their own error types (HTTP, not found, bad subset)
        raise LatheError(
            f"{_entry(attr)}: could not load {repo!r} from {hub.name}: {_cause(error)}. Check the id, subset and "
            f"split, `{hub.token_key}` for a private dataset, or {local_copy}.") from error
    return rows.to_hf_dataset() if isinstance(rows, loader) else rows  # ModelScope wraps a datasets.Dataset


def _modelscope_call(loader: Any, repo: str, attr: DatasetAttr, **kwargs: Any) -> Any:
    version = {"version": attr.revision} if attr.revision else {}  # ModelScope's name for the revision
    streaming = kwargs.pop("streaming")
    return loader.load(dataset_name=repo, subset_name=attr.subset, data_dir=attr.folder, split=attr.split,
                       use_streaming=streaming, **version, **kwargs)


def _openmind_call(loader: Any, repo: str, attr: DatasetAttr, **kwargs: Any) -> Any:
    revision = {"revision": attr.revision} if attr.revision else {}
    return loader.load_dataset(path=repo, name=attr.subset, data_dir=attr.folder, split=attr.split, **revision, **kwargs)


# load_from -> how that hub's dataset class is called (its argument names differ)
_HUB_CALLS: dict[str, Callable[..., Any]] = {"ms_hub": _modelscope_call, "om_hub": _openmind_call}


def _load_script(attr: DatasetAttr, dataset_dir: Path, cache_dir: str | None, streaming: bool = False,
        token: str | None = None) -> datasets.Dataset:
    """A local folder (script_url) read by `datasets.load_dataset`; loading scripts no longer run in datasets>=4."""
    path = dataset_dir / (attr.script_url or "")
    if not path.exists():
        raise LatheError(f"{_entry(attr)}: not found: {path}. Fix 'script_url' in the entry.")
    try:
        return datasets.load_dataset(
            str(path), name=attr.subset, split=attr.split, data_dir=attr.folder, cache_dir=cache_dir, streaming=streaming
        )
    except Exception as error:
        raise LatheError(f"{_entry(attr)}: could not load {path}: {_cause(error)}") from error


def _unsupported(what: str) -> Loader:
    def load(attr: DatasetAttr, dataset_dir: Path, cache_dir: str | None, streaming: bool = False,
        token: str | None = None) -> datasets.Dataset:
        raise LatheError(
            f"{_entry(attr)} is on {what}, which lathe cannot read yet. Add an 'hf_hub_url' if the data is "
            "also on the Hugging Face Hub, or download it and point 'file_name' at the local copy."
        )

    return load


LOADERS: dict[str, Loader] = {
    "file": _load_file,
    "hf_hub": _load_hf_hub,
    "script": _load_script,
    "ms_hub": _load_other_hub,
    "om_hub": _load_other_hub,
    "cloud_file": _unsupported("cloud storage (cloud_file_name)"),
}
