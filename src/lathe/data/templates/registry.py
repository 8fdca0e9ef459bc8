"""The one registry of chat templates: the entries of templates.yaml, by name.

`resolve_template` is what the data and inference code call: a name picks a registered template;
no name uses the tokenizer's own chat template, so a model that ships one is trained in the exact
format it is served with.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from lathe.errors import LatheError, did_you_mean

from .base import Template
from .slots import Slots, SlotTemplate
from .tokenizer_template import TokenizerTemplate

logger = logging.getLogger(__name__)

TEMPLATES_FILE = Path(__file__).with_name("templates.yaml")
_SLOT_KEYS = {f.name for f in fields(Slots)} - {"name"}


def _load_entries(path: Path) -> dict[str, dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        entries = yaml.safe_load(handle) or {}
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise LatheError(f"{path}: expected a mapping of template name -> slots.")
    return entries


def _resolve_entry(name: str, entries: dict[str, dict[str, Any]], path: Path, seen: tuple[str, ...] = ()) -> dict:
    """Return the slots of `name` with its `base` chain applied (base first, then the entry's own)."""
    entry = dict(entries[name])
    unknown = set(entry) - _SLOT_KEYS - {"base"}
    if unknown:
        key = sorted(unknown)[0]
        raise LatheError(f"{path}: template `{name}` has unknown key `{key}`.{did_you_mean(key, _SLOT_KEYS)}")
    base = entry.pop("base", None)
    if base is None:
        return entry
    if base not in entries:
        raise LatheError(f"{path}: template `{name}` has base `{base}`, which is not defined.")
    if base in seen:
        raise LatheError(f"{path}: templates {' -> '.join(seen + (name, base))} inherit in a circle.")
    return {**_resolve_entry(base, entries, path, seen + (name,)), **entry}


@functools.cache
def _registry() -> dict[str, SlotTemplate]:
    entries = _load_entries(TEMPLATES_FILE)
    registry = {}
    for name in entries:
        slots = _resolve_entry(name, entries, TEMPLATES_FILE)
        for key in ("stop_words", "special_tokens"):
            if key in slots:
                slots[key] = tuple(slots[key])
        registry[name] = SlotTemplate(Slots(name=name, **slots))
    return registry


def list_templates() -> list[str]:
    """Names of the registered templates, sorted."""
    return sorted(_registry())


def get_template(name: str) -> SlotTemplate:
    """The registered template called `name`; an unknown name raises LatheError with close names."""
    registry = _registry()
    if name not in registry:
        raise LatheError(
            f"Unknown template `{name}`.{did_you_mean(name, registry)} Registered templates: "
            f"{', '.join(sorted(registry))} (defined in {TEMPLATES_FILE}). "
            "Leave `template` out to use the tokenizer's own chat template."
        )
    return registry[name]


def resolve_template(name: str | None, tokenizer: Any) -> Template:
    """The template a run uses: `name` when given, else the tokenizer's own chat template.

    A tokenizer without a chat template falls back to `empty` (text in, answer + eos out) with a
    warning, since a base model has no format to match.
    """
    if name:
        return get_template(name)
    if getattr(tokenizer, "chat_template", None):
        return TokenizerTemplate(tokenizer)
    logger.warning(
        "Tokenizer `%s` has no chat template and no `template` was given; using the `empty` template "
        "(prompt text, then answer + eos). Set `template` (one of: %s) to train a chat format.",
        getattr(tokenizer, "name_or_path", ""),
        ", ".join(list_templates()),
    )
    return get_template("empty")
