"""The model catalog of the Board: known model names per family, each with its chat template.

Data, not code: `catalog.yaml` next to this file. Choosing a name fills `model_name_or_path`
with the hub id and `template` with the template that model was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")


@dataclass(frozen=True)
class CatalogModel:
    name: str
    family: str
    path: str
    template: str


@lru_cache(maxsize=1)
def load_catalog() -> dict[str, CatalogModel]:
    data = yaml.safe_load(CATALOG_FILE.read_text(encoding="utf-8"))
    out = {}
    for family, models in data.items():
        for name, entry in models.items():
            out[name] = CatalogModel(name, family, entry["path"], entry["template"])
    return out


def model_names() -> list[str]:
    return list(load_catalog())


def lookup(name: str) -> CatalogModel | None:
    return load_catalog().get(name)
