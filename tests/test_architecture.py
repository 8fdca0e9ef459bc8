"""The shape docs/architecture.md promises, checked on the source: imports run downward, every
stage / method / preference-loss name is declared once, every registry answers a miss the same way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lathe.errors import LatheError
from lathe.registry import INFER_BACKENDS, METHODS, OPTIMIZERS, PREFERENCE_LOSSES, REWARD_MODELS, STAGES

SRC = Path(__file__).resolve().parents[1] / "src" / "lathe"

# Each top-level package (or module) of lathe and its rank: a module may import from its own
# rank or below, never above. TYPE_CHECKING-only imports (annotations) are not counted.
RANKS = {
    "(root)": 0, "errors": 0, "registry": 0, "hub": 0, "build_cache": 0, "heap": 0, "process": 0, "logs": 0,
    "env": 0, "testing": 0, "threads": 0, "startup": 0, "sysmem": 0,
    "config": 1,
    "model": 2, "distributed": 2,
    "data": 3,
    "train": 4,
    "infer": 5,
    "evaluate": 6, "export": 6,
    "efficiency": 7,
    "board": 8,
    "cli": 9, "__main__": 10,
}


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    package = parts[-1] == "__init__"
    if package:
        parts = parts[:-1]
    return ".".join(["lathe", *parts]), package


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            lines.update(n.lineno for n in ast.walk(node) if hasattr(n, "lineno"))
    return lines


def imports() -> list[tuple[str, str, list[str], str]]:
    """(importing module, imported module, imported names, where) for every import of lathe inside lathe."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        module, package = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        annotations = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.lineno not in annotations:
                if node.level:
                    base = module.split(".")[: None if package else -1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] == "lathe":
                    names = [alias.name for alias in node.names]
                    found.append((module, target, names, f"{path.relative_to(SRC)}:{node.lineno}"))
            elif isinstance(node, ast.Import) and node.lineno not in annotations:
                for alias in node.names:
                    if alias.name.split(".")[0] == "lathe":
                        found.append((module, alias.name, [], f"{path.relative_to(SRC)}:{node.lineno}"))
    return found


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def test_every_package_has_a_rank():
    tops = {_top(_module_name(p)[0]) for p in SRC.rglob("*.py")}
    assert tops <= set(RANKS), f"give these a rank in RANKS: {sorted(tops - set(RANKS))}"


def test_imports_run_downward():
    upward = [f"{where}: {_top(src)} (rank {RANKS[_top(src)]}) imports {dst} (rank {RANKS[_top(dst)]})"
              for src, dst, _, where in imports() if RANKS[_top(dst)] > RANKS[_top(src)]]
    assert not upward, "\n".join(upward)


def test_no_two_packages_import_each_other():
    edges = {(_top(src), _top(dst)) for src, dst, _, _ in imports() if _top(src) != _top(dst)}
    assert not [(a, b) for a, b in edges if (b, a) in edges]


def test_no_private_name_is_imported_from_another_package():
    private = [f"{where}: {name} from {dst}" for src, dst, names, where in imports()
               for name in names if name.startswith("_") and not name.endswith("__") and _top(src) != _top(dst)]
    assert not private, "\n".join(private)


# ---------------------------------------------------------------------------- names declared once

# Literals equal to a member's name that mean something else, with the reason.
OTHER_MEANINGS = {
    ("config/options.py", "full"): "galore_proj_type's choice: a GaLore projection side, not the method",
    ("infer/engine.py", "pt"): "return_tensors='pt': PyTorch tensors, not the stage",
    ("data/media/plugins.py", "pt"): "return_tensors='pt': PyTorch tensors, not the stage",
    ("testing/tiny_vlm_more.py", "full"): "LLaVA-OneVision's vision_feature_select_strategy, not the method",
}


def _literals(path: Path):
    """Every string literal of a module that is neither a docstring, a `name=` declaration nor an option's default."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            skipped.add(id(body[0].value))  # a docstring: prose
        if isinstance(node, ast.keyword) and node.arg == "name":
            skipped.add(id(node.value))  # a descriptor's declaration
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "opt" and node.args:
            skipped.add(id(node.args[0]))  # an option's default names the member it picks
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped:
            yield node


@pytest.mark.parametrize("registry", [STAGES, METHODS, PREFERENCE_LOSSES], ids=lambda r: r.key)
def test_each_name_is_declared_once(registry):
    """A stage, method or preference loss is named in its descriptor; the rest of the code asks the registry."""
    names = set(registry)
    kinds = {type(member).__name__ for member in registry.values()}  # Stage, Method, PreferenceLoss
    declared: dict[str, list[str]] = {}
    stray = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in kinds:
                for keyword in node.keywords:
                    if keyword.arg == "name" and getattr(keyword.value, "value", None) in names:
                        declared.setdefault(keyword.value.value, []).append(f"{rel}:{node.lineno}")
        stray += [f"{rel}:{node.lineno}: {node.value!r}" for node in _literals(path)
                  if node.value in names and (rel, node.value) not in OTHER_MEANINGS]
    assert not stray, "use the registry or the descriptor instead of the name:\n" + "\n".join(stray)
    assert {name: len(where) for name, where in declared.items()} == dict.fromkeys(names, 1), declared


@pytest.mark.parametrize("registry", [STAGES, METHODS, PREFERENCE_LOSSES, OPTIMIZERS, REWARD_MODELS, INFER_BACKENDS],
                         ids=lambda r: r.key)
def test_a_miss_names_the_registered_members(registry):
    with pytest.raises(LatheError) as info:
        registry["no-such-member"]
    message = str(info.value)
    assert f"Unknown {registry.what}" in message and ", ".join(sorted(registry)) in message
