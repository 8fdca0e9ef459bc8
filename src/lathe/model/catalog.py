"""The model catalog: known model names, their hub ids, default chat template, size and modality.

Data, not code: `catalog.yaml` next to this file, written by `scripts/build_model_catalog.py` from
LLaMA-Factory's model list (so a name from its docs means the same model here), and
`catalog_extra.yaml`, hand-written, for releases that list lacks. `lathe models`
searches it, the Board's model picker offers it, and a run with no `template` whose tokenizer has
no chat template of its own takes the catalog's default for its model id (`data/loader.run_template`).

It lives in `model/` (below `data/`) because it is knowledge about models; it names templates
only as strings, and the template registry (in `data/`) is what says whether a name exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from lathe.errors import LatheError

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")
EXTRA_FILE = Path(__file__).with_name("catalog_extra.yaml")
ID_KEYS = ("hf", "ms", "om")  # Hugging Face, ModelScope, Modelers (openMind)
_SIZE = re.compile(r"^(?:(\d+)x)?(\d+(?:\.\d+)?)([KMBT])$")
_UNITS = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
_ENTRY_KEYS = {*ID_KEYS, "template", "template_missing", "multimodal", "size"}


def parse_size(label: str) -> float:
    """Parameters a size label stands for: "7B" -> 7e9, "0.5B" -> 5e8, "560M" -> 5.6e8, "8x7B" -> 5.6e10.

    "8x7B" is read as the name writes it (experts x size); the model's true count is smaller,
    since experts share their attention layers.
    """
    m = _SIZE.match(label)
    if not m:
        raise LatheError(f"{label!r} is not a size label like 7B, 0.5B, 560M or 8x7B.")
    experts, number, unit = m.groups()
    return int(experts or 1) * float(number) * _UNITS[unit]


@dataclass(frozen=True)
class CatalogModel:
    """One catalog entry. `size` is the label the name carries ("7B"; None when the name says none)."""

    name: str
    family: str
    hf: str
    template: str | None = None
    ms: str | None = None
    om: str | None = None
    size: str | None = None
    multimodal: bool = False
    template_missing: bool = False  # lathe has no template of that name yet

    @property
    def path(self) -> str:
        """What `model_name_or_path` takes for this model: its Hugging Face id."""
        return self.hf

    @property
    def params(self) -> float | None:
        return parse_size(self.size) if self.size else None

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(i for i in (self.hf, self.ms, self.om) if i)


@cache
def load_catalog() -> dict[str, CatalogModel]:
    """Every entry by display name, in the files' order (family by family; the extra file's last)."""
    out: dict[str, CatalogModel] = {}
    for path in (CATALOG_FILE, EXTRA_FILE):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for family, models in data.items():
            for name, entry in (models or {}).items():
                unknown = set(entry) - _ENTRY_KEYS
                if unknown or "hf" not in entry:
                    raise LatheError(f"{path}: model `{name}` needs `hf` and knows only {sorted(_ENTRY_KEYS)}; "
                                     f"got {sorted(entry)}.")
                if name in out:
                    raise LatheError(f"{path}: model `{name}` is already in {CATALOG_FILE.name}; keep one entry.")
                out[name] = CatalogModel(name=name, family=family, **entry)
    return out


def model_names() -> list[str]:
    return list(load_catalog())


def lookup(name: str) -> CatalogModel | None:
    """The entry with this display name, or None."""
    return load_catalog().get(name)


@cache
def _by_id() -> dict[str, CatalogModel]:
    out: dict[str, CatalogModel] = {}
    for model in load_catalog().values():
        for model_id in model.ids:
            out.setdefault(model_id.lower(), model)  # hub ids are case-insensitive
    return out


def for_model_id(model_id: str | None) -> CatalogModel | None:
    """The entry whose Hugging Face, ModelScope or Modelers id is `model_id` (any case), or None.

    Only ids match: a local folder is unknown here, whatever model it holds.
    """
    if not model_id:
        return None
    return _by_id().get(str(model_id).strip().strip("/").lower())


def search(query: str | None = None) -> list[CatalogModel]:
    """Entries whose name, family or any id contains `query` (case-insensitive); all of them without one."""
    models = list(load_catalog().values())
    if not query:
        return models
    q = query.lower()
    return [m for m in models if any(q in text.lower() for text in (m.name, m.family, *m.ids))]


def format_table(models: list[CatalogModel]) -> str:
    """The rows of `lathe models`: name, family, size, template (`*` where lathe lacks it), hub ids."""
    header = ("NAME", "FAMILY", "SIZE", "TEMPLATE", "HUGGING FACE", "MODELSCOPE")
    rows = [header]
    for m in models:
        template = (m.template or "-") + ("*" if m.template_missing else "") + (" (mm)" if m.multimodal else "")
        rows.append((m.name, m.family, m.size or "-", template, m.hf, m.ms or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip() for row in rows]
    return "\n".join(lines)
