"""Every shipped example config loads and validates (no model is loaded)."""

from __future__ import annotations

import pytest

from lathe.config import load_config
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def test_examples_exist():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_example_loads(path):
    overrides = ["model_name_or_path=/some/model"] if "demo" in path.parts else []
    cfg = load_config(path, overrides)
    assert cfg.training.output_dir
    assert cfg.data.dataset
