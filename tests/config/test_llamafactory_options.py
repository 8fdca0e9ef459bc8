"""LLaMA-Factory's whole option inventory (../shared/notes/llamafactory-options.tsv, from its option
dataclasses): no key is unknown to lathe, every key at its default loads (LLaMA Board saves every key),
and a key lathe does not run, set away from its default, is refused by name with the feature it belongs to."""

from __future__ import annotations

import json

import pytest

from lathe.config import build_config
from lathe.config.load import all_option_names
from lathe.config.pending import PENDING
from lathe.errors import LatheError
from tests.conftest import SHARED

INVENTORY = SHARED / "notes" / "llamafactory-options.tsv"
ROWS = [line.rstrip("\n").split("\t") for line in INVENTORY.read_text().splitlines()
        if line and not line.startswith("#")] if INVENTORY.exists() else []
LITERAL = [(key, json.loads(default)) for key, _, _, default in ROWS if default != "-" and key != "model_name_or_path"]
BASE = {"model_name_or_path": "m", "output_dir": "o"}
needs_inventory = pytest.mark.skipif(not ROWS, reason=f"{INVENTORY} is absent (lathe workplace only)")


@needs_inventory
def test_no_key_is_unknown():
    known = all_option_names() | set(PENDING)
    assert [key for key, *_ in ROWS if key not in known] == []


@needs_inventory
@pytest.mark.parametrize("key, default", LITERAL, ids=[key for key, _ in LITERAL])
def test_every_key_at_its_default_loads(key, default):
    build_config({**BASE, key: default}, "LLaMA Board's config")


def _away_from(default):
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + 1
    return "something-else" if default is not None else "x"


@needs_inventory
@pytest.mark.parametrize("key", sorted(PENDING))
def test_a_pending_key_away_from_its_default_is_refused_by_name(key):
    default, feature = PENDING[key]
    with pytest.raises(LatheError, match=f"`{key}` is a LLaMA-Factory option that lathe does not run: ") as info:
        build_config({**BASE, key: _away_from(default)}, "config")
    assert feature in str(info.value)


@needs_inventory
def test_pending_defaults_are_llamafactorys():
    """A default copied wrong would refuse a key LLaMA Board wrote at its default."""
    inventory = dict(LITERAL)
    wrong = {key: (default, inventory[key]) for key, (default, _) in PENDING.items()
             if key in inventory and default != inventory[key]}
    assert wrong == {}


@needs_inventory
def test_every_key_lathe_runs_is_named_by_a_test_of_its_effect():
    """A key lathe runs (not in PENDING) must be set by some test besides the inventory's own:
    the guard against an option that is parsed and then ignored."""
    from pathlib import Path

    tests = Path(__file__).parents[1]
    texts = [p.read_text(encoding="utf-8") for p in tests.rglob("*.py") if p.name != Path(__file__).name]
    runs = sorted({key for key, *_ in ROWS} - set(PENDING))
    assert [key for key in runs if not any(key in text for text in texts)] == []
