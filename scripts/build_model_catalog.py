"""Write lathe's model catalog (src/lathe/model/catalog.yaml) from LLaMA-Factory's model list.

Usage: python scripts/build_model_catalog.py PATH/TO/llamafactory/extras/constants.py [--out FILE]

It reads LLaMA-Factory's `src/llamafactory/extras/constants.py`, given as the argument, without
importing it (the file is parsed as Python source and only its `register_model_group(...)` calls
are read), so the catalog can be refreshed whenever LLaMA-Factory adds models:

    git --git-dir=<LLaMA-Factory>/.git show HEAD:src/llamafactory/extras/constants.py > /tmp/constants.py
    python scripts/build_model_catalog.py /tmp/constants.py

Each model keeps its display name, its Hugging Face / ModelScope / Modelers (openMind) ids, its
group's template and multimodal flag. lathe adds what LLaMA-Factory only implies: the family
(the name before its size), the size in parameters as the name writes it ("7B", "0.5B", "8x7B"),
and `template_missing: true` where lathe's template registry lacks the template today (run this
again after adding templates: tests/test_catalog.py fails while a mark is stale).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "lathe" / "model" / "catalog.yaml"
SOURCES = {"DEFAULT": "hf", "MODELSCOPE": "ms", "OPENMIND": "om"}  # LLaMA-Factory's DownloadSource -> our key

# A size as a model name writes it: 7B, 0.5B, 560M, 8x7B, and BLOOM's 7B1 (= 7.1B).
SIZE = re.compile(r"^(?:(\d+)x)?(\d+(?:\.\d+)?)([KMBT])(\d*)$", re.IGNORECASE)
# Name parts that name a variant, not the family, when a name has no size.
VARIANT = re.compile(r"^(base|instruct|chat|thinking|flash|air|preview|small|medium|large|xl|mini|tiny|pro|max|"
                     r"\d{4})$", re.IGNORECASE)
DATE = re.compile(r"^\d{4}$")
# An effective or active size (Gemma-3n-E4B, Qwen3-30B-A3B): ends the family, but is not the size.
OTHER_SIZE = re.compile(r"^[EA]\d+(?:\.\d+)?B$", re.IGNORECASE)

# Models lathe knows that LLaMA-Factory's list lacks (family -> name -> facts), added after its groups.
EXTRAS = {
    "OLMo-2": {"OLMo-2-7B-Instruct": {"hf": "allenai/OLMo-2-1124-7B-Instruct", "template": "olmo"}},
    "EXAONE-3.5": {"EXAONE-3.5-2.4B-Instruct": {"hf": "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct", "template": "exaone"}},
}

HEADER = """\
# lathe's model catalog: family -> display name -> facts. Data, not code; read by lathe/model/catalog.py.
# Written by scripts/build_model_catalog.py from LLaMA-Factory's src/llamafactory/extras/constants.py
# (rerun it to refresh; hand edits are lost). Keys: hf / ms / om: Hugging Face, ModelScope, Modelers
# (openMind) ids; template: the default chat template of the model's group (LLaMA-Factory's name);
# template_missing: lathe has no template of that name yet; multimodal: the model takes images,
# video or audio; size: parameters as the name writes them (7B, 0.5B, 560M, 8x7B).
"""


def size_label(part: str) -> str | None:
    """`part` of a name as a size label ("7b1" -> "7.1B", "8x7B" -> "8x7B"), None if it is not a size."""
    m = SIZE.match(part)
    if not m:
        return None
    experts, number, unit, decimals = m.groups()
    number = f"{number}.{decimals}" if decimals and "." not in number else number
    return f"{experts + 'x' if experts else ''}{number}{unit.upper()}"


def family_and_size(name: str) -> tuple[str, str | None]:
    """The family (the name before its size, dates dropped) and the size the name says, if any."""
    parts = name.split("-")
    for i, part in enumerate(parts[1:], start=1):
        label = size_label(part)
        if label or OTHER_SIZE.match(part):
            family = parts[:i]
            while len(family) > 1 and DATE.match(family[-1]):
                family.pop()
            return "-".join(family), label
    family = list(parts)
    while len(family) > 1 and VARIANT.match(family[-1]):
        family.pop()
    return "-".join(family), None


def read_groups(constants: Path) -> list[dict]:
    """The `register_model_group(models=..., template=..., multimodal=...)` calls of the file, in order."""
    tree = ast.parse(constants.read_text(encoding="utf-8"))
    groups = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_model_group":
            kw = {k.arg: k.value for k in node.keywords}
            models = {}
            for key, value in zip(kw["models"].keys, kw["models"].values):
                ids = {}
                for source, model_id in zip(value.keys, value.values):
                    ids[SOURCES[source.attr]] = ast.literal_eval(model_id)
                models[ast.literal_eval(key)] = ids
            template = ast.literal_eval(kw["template"]) if "template" in kw else None
            multimodal = ast.literal_eval(kw["multimodal"]) if "multimodal" in kw else False
            groups.append({"line": node.lineno, "models": models, "template": template, "multimodal": multimodal})
    return sorted(groups, key=lambda g: g["line"])


def read_models(constants: Path) -> list[tuple[str, dict, str | None, bool]]:
    """(name, ids, template, multimodal) of every model: LLaMA-Factory's groups in order, then EXTRAS."""
    models = [(name, ids, group["template"], group["multimodal"])
              for group in read_groups(constants) for name, ids in group["models"].items()]
    for family in EXTRAS.values():
        for name, entry in family.items():
            ids = {k: v for k, v in entry.items() if k in SOURCES.values()}
            models.append((name, ids, entry.get("template"), entry.get("multimodal", False)))
    return models


def build(constants: Path) -> dict[str, dict[str, dict]]:
    sys.path.insert(0, str(ROOT / "src"))
    from lathe.data.templates import list_templates

    known = set(list_templates())
    catalog: dict[str, dict[str, dict]] = {}
    for raw_name, ids, template, multimodal in read_models(constants):
        name = raw_name.split("/")[-1]  # one LLaMA-Factory name carries its org by mistake
        family, size = family_and_size(name)
        entry = dict(ids)
        if template:
            entry["template"] = template
            if template not in known:
                entry["template_missing"] = True
        if multimodal:
            entry["multimodal"] = True
        if size:
            entry["size"] = size
        for models in catalog.values():  # a name registered twice: the later group wins, as in LLaMA-Factory
            models.pop(name, None)
        catalog.setdefault(family, {})[name] = entry
    return {family: models for family, models in catalog.items() if models}


def dump(catalog: dict[str, dict[str, dict]]) -> str:
    """One line per model, so a refresh shows as a readable diff."""
    lines = [HEADER]
    for family, models in catalog.items():
        lines.append(yaml.safe_dump({family: None}).replace(" null", "").rstrip())
        for name, entry in models.items():
            key = yaml.safe_dump(name).removesuffix("\n...\n").strip()
            flow = yaml.safe_dump(entry, default_flow_style=True, width=10_000, sort_keys=False).strip()
            lines.append(f"  {key}: {flow}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("constants", type=Path, help="LLaMA-Factory's src/llamafactory/extras/constants.py")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    catalog = build(args.constants)
    text = dump(catalog)
    if yaml.safe_load(text) != catalog:
        raise SystemExit("the written catalog does not read back as built")
    args.out.write_text(text, encoding="utf-8")
    count = sum(len(m) for m in catalog.values())
    missing = sum(e.get("template_missing", False) for m in catalog.values() for e in m.values())
    print(f"{args.out}: {count} models in {len(catalog)} families; {missing} name a template lathe lacks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
