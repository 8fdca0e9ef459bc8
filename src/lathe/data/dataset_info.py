"""The dataset registry: LLaMA-Factory's `dataset_info.json`, read unchanged.

Each entry of `dataset_info.json` names a dataset and says where it lives (a local file or
folder, a hub repository), how its rows are shaped (`formatting`, `columns`, `tags`) and
what it is for (`ranking`). `load_registry` turns the file into `DatasetAttr` objects and
rejects what it does not understand (an unknown key, a wrong type) with the file, entry and
key in the message, because a typo here otherwise surfaces as "no valid samples" much later.

Semantics match LLaMA-Factory's parser so its files mean the same thing here:
- the source is the first of hf_hub_url, ms_hub_url, om_hub_url, script_url,
  cloud_file_name, file_name that the entry has, except that among the hub URLs the one of the
  hub switched on now wins: ms_hub_url under USE_MODELSCOPE_HUB=1, om_hub_url under
  USE_OPENMIND_HUB=1, and an entry with no hf_hub_url uses the other hub it names;
- a `columns` block replaces the format's default columns: a column it does not name is
  unset (so `{"prompt": "text"}` means "text only, no response", as for pretraining data);
- a `tags` block overrides the format's default tags one by one; a tag it does not name
  keeps the default (LLaMA-Factory unsets it, which only ever turns valid rows into errors).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from lathe.data.formats import get_format
from lathe.errors import LatheError, did_you_mean, read_json_file
from lathe.hub import OTHER_HUBS, other_hub

REGISTRY_FILE = "dataset_info.json"
ONLINE = "ONLINE"  # a dataset_dir meaning "the names are Hugging Face Hub ids", as in LLaMA-Factory


@dataclass
class Columns:
    """Which column of the data holds each part of a sample (None: the data has no such part)."""

    prompt: str | None = None  # alpaca: the instruction
    query: str | None = None  # alpaca: the input, appended to the instruction
    response: str | None = None  # alpaca: the answer
    history: str | None = None  # alpaca: earlier [question, answer] pairs
    messages: str | None = None  # sharegpt / openai: the conversation
    system: str | None = None
    tools: str | None = None  # JSON (text) of the tool schemas
    images: str | None = None  # media columns are kept for later, not used yet
    videos: str | None = None
    audios: str | None = None
    chosen: str | None = None  # ranking: the preferred answer
    rejected: str | None = None  # ranking: the worse answer
    kto_tag: str | None = None  # KTO: a boolean, true when the answer is desirable
    reference: str | None = None  # grpo/rloo: what the rewards compare with (default: the last answer)


@dataclass
class Tags:
    """How a sharegpt / openai message names its role and content, and the role values."""

    role_tag: str | None = None
    content_tag: str | None = None
    user_tag: str | None = None
    assistant_tag: str | None = None
    observation_tag: str | None = None
    function_tag: str | None = None
    system_tag: str | None = None


@dataclass
class DatasetAttr:
    """Everything one `dataset_info.json` entry says about a dataset."""

    name: str  # the registry name ("alpaca_en_demo")
    load_from: str  # "file" | "hf_hub" | "ms_hub" | "om_hub" | "script" | "cloud_file"
    file_name: str | None = None  # a file or folder inside dataset_dir
    hf_hub_url: str | None = None
    ms_hub_url: str | None = None
    om_hub_url: str | None = None
    script_url: str | None = None  # a folder (or loading script) inside dataset_dir
    cloud_file_name: str | None = None  # s3:// or gs:// JSON, not read by lathe yet
    subset: str | None = None  # the hub dataset's config name
    split: str = "train"
    folder: str | None = None  # a folder inside the hub repository
    revision: str | None = None  # a hub revision (branch, tag or commit)
    num_samples: int | None = None  # draw this many rows (repeating rows if there are fewer)
    formatting: str = "alpaca"
    ranking: bool = False  # preference data: chosen / rejected answers
    media_dir: str | None = None  # the folder the media paths are relative to (get_dataset_attrs fills it)
    columns: Columns = field(default_factory=Columns)
    tags: Tags = field(default_factory=Tags)
    source: str = ""  # the dataset_info.json this entry came from, for messages

    @classmethod
    def from_entry(cls, name: str, entry: Any, source: str = "") -> "DatasetAttr":
        """Build from one entry of dataset_info.json, validating keys and types."""
        where = f"{source or REGISTRY_FILE}: entry {name!r}"
        if not isinstance(entry, Mapping):
            raise LatheError(f"{where} must be a JSON object, got {type(entry).__name__}.")
        _check_keys(entry, _ENTRY_KEYS, where)
        load_from = _hub_source(entry) or next((kind for key, kind in _SOURCES if entry.get(key) is not None), None)
        if load_from is None:
            keys = ", ".join(key for key, _ in _SOURCES)
            raise LatheError(f"{where} says nowhere to load the data from; give one of: {keys}.")
        values = {key: _typed(entry, key, kind, where) for key, kind in _ENTRY_KEYS.items() if key in entry}
        values = {key: value for key, value in values.items() if value is not None}  # null: the default
        formatting = values.get("formatting", "alpaca")
        try:
            fmt = get_format(formatting)
        except LatheError as error:
            raise LatheError(f"{where}: {error}") from None
        columns = _block(entry, "columns", Columns, where) if "columns" in entry else dict(fmt.default_columns)
        tags = {**fmt.default_tags, **_block(entry, "tags", Tags, where)}
        values.pop("columns", None)
        values.pop("tags", None)
        return cls(name=name, load_from=load_from, columns=Columns(**columns), tags=Tags(**tags),
                   source=source, **values)


# key -> the load_from it selects, in LLaMA-Factory's order of priority
_SOURCES = (
    ("hf_hub_url", "hf_hub"),
    ("ms_hub_url", "ms_hub"),
    ("om_hub_url", "om_hub"),
    ("script_url", "script"),
    ("cloud_file_name", "cloud_file"),
    ("file_name", "file"),
)


def _hub_source(entry: Mapping[str, Any]) -> str | None:
    """The other hub whose URL the entry has, when that hub is switched on or no hf_hub_url is given.

    Read when the registry is read, so USE_MODELSCOPE_HUB / USE_OPENMIND_HUB act as they do for
    models; ModelScope is asked first, as in LLaMA-Factory.
    """
    has_hf = entry.get("hf_hub_url") is not None
    return next((hub.load_from for hub in OTHER_HUBS
                 if entry.get(hub.url_key) is not None and (hub.active() or not has_hf)), None)


# key -> the JSON type its value must have
_ENTRY_KEYS: dict[str, type] = {
    **{key: str for key, _ in _SOURCES},
    "formatting": str,
    "ranking": bool,
    "subset": str,
    "split": str,
    "folder": str,
    "revision": str,
    "num_samples": int,
    "media_dir": str,
    "columns": dict,
    "tags": dict,
}


def _check_keys(obj: Mapping[str, Any], known: Any, where: str) -> None:
    for key in obj:
        if key not in known:
            raise LatheError(
                f"{where} has unknown key {key!r}.{did_you_mean(key, known)} Known keys: {', '.join(known)}."
            )


def _typed(entry: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = entry[key]
    if value is None:  # LLaMA-Factory reads an explicit null as "not set"
        return None
    # bool is a subclass of int, so `"num_samples": true` must be caught by hand
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise LatheError(f"{where}: {key!r} must be a JSON {_JSON_NAMES[kind]}, got {value!r}.")
    if key == "num_samples" and value < 1:
        raise LatheError(f"{where}: 'num_samples' must be at least 1, got {value}.")
    return value


_JSON_NAMES = {str: "string", bool: "boolean (true/false)", int: "integer", dict: "object"}


def _block(entry: Mapping[str, Any], key: str, cls: type, where: str) -> dict[str, str | None]:
    """A `columns` / `tags` block: known names only, each a string (or null)."""
    block = entry.get(key) or {}
    names = [f.name for f in fields(cls)]
    _check_keys(block, names, f"{where}: {key!r}")
    for name, value in block.items():
        if value is not None and not isinstance(value, str):
            raise LatheError(f"{where}: {key}.{name} must be a string (a column or tag name), got {value!r}.")
    return dict(block)


def registry_path(dataset_dir: str | Path) -> Path:
    """Where the registry of `dataset_dir` is."""
    return Path(dataset_dir) / REGISTRY_FILE


def load_registry(dataset_dir: str | Path) -> dict[str, DatasetAttr]:
    """Read `<dataset_dir>/dataset_info.json` into name -> DatasetAttr, validating every entry."""
    path = registry_path(dataset_dir)
    if str(dataset_dir).startswith("REMOTE:"):
        raise LatheError(
            f"dataset_dir {str(dataset_dir)!r}: reading dataset_info.json from a hub repository is not "
            "supported yet. Download that file into a folder and set dataset_dir to the folder."
        )
    if not path.is_file():
        hint = "" if Path(dataset_dir).is_dir() else f" (the folder {str(dataset_dir)!r} does not exist)"
        raise LatheError(
            f"No {REGISTRY_FILE} found: looked for {path}{hint}. Set dataset_dir to the folder that holds "
            f"{REGISTRY_FILE}, or to {ONLINE!r} to use Hugging Face Hub ids as dataset names."
        )
    info = read_json_file(path)
    if not isinstance(info, dict):
        raise LatheError(f"{path} must hold a JSON object of name -> entry, got {type(info).__name__}.")
    attrs = {name: DatasetAttr.from_entry(name, entry, source=str(path)) for name, entry in info.items()}
    for attr in attrs.values():  # an entry's own media folder is relative to dataset_dir
        if attr.media_dir and not Path(attr.media_dir).expanduser().is_absolute():
            attr.media_dir = str(Path(dataset_dir) / attr.media_dir)
    return attrs


def split_names(names: str | list[str]) -> list[str]:
    """'a, b,c' or ['a', 'b'] -> ['a', 'b', 'c'] (empty names dropped)."""
    items = names.split(",") if isinstance(names, str) else [part for name in names for part in name.split(",")]
    return [name.strip() for name in items if name.strip()]


def get_dataset_attrs(names: str | list[str], dataset_dir: str | Path, media_dir: str | None = None) -> list[DatasetAttr]:
    """The entries for `names` (a comma list or a list), in that order.

    Each entry's `media_dir` becomes a folder: its own (relative to dataset_dir), else the run's `media_dir`,
    else dataset_dir, as in LLaMA-Factory.

    With dataset_dir "ONLINE" every name is a hub id read as alpaca data, as in LLaMA-Factory:
    a ModelScope / Modelers id when USE_MODELSCOPE_HUB / USE_OPENMIND_HUB is on, else a Hugging
    Face Hub id.
    """
    wanted = split_names(names)
    if not wanted:
        raise LatheError("No dataset names given: set `dataset` to one or more names from dataset_info.json.")
    if str(dataset_dir) == ONLINE:
        hub = other_hub()
        key = hub.url_key if hub else "hf_hub_url"
        return [DatasetAttr.from_entry(name, {key: name}, source=ONLINE) for name in wanted]
    registry = load_registry(dataset_dir)
    missing = [name for name in wanted if name not in registry]
    if missing:
        name = missing[0]
        hint = did_you_mean(name, registry) or f" It has {len(registry)} entries, e.g. {', '.join(list(registry)[:8])}."
        raise LatheError(
            f"Dataset {name!r} is not in {registry_path(dataset_dir)}.{hint} "
            f"Add an entry for it there, or fix the name."
        )
    return [_with_media_dir(registry[name], dataset_dir, media_dir) for name in wanted]


def _with_media_dir(attr: DatasetAttr, dataset_dir: str | Path, media_dir: str | None) -> DatasetAttr:
    from dataclasses import replace

    return attr if attr.media_dir else replace(attr, media_dir=str(media_dir or dataset_dir))
