"""`lathe train --help`: every option by group, from the help text declared on the field."""

from __future__ import annotations

import dataclasses
import textwrap

from .load import ALIASES
from .options import GROUPS, help_of
from .pending import PENDING
from .training import training_fields


def _line(name: str, default, help_text: str) -> str:
    first = (help_text or "").strip().split("\n")[0]
    return f"  {name} (default: {default!r})\n" + textwrap.indent(textwrap.fill(first, 88), "      ")


def train_help() -> str:
    out = ["usage: lathe train CONFIG.yaml [key=value ...]", ""]
    for name, cls in GROUPS.items():
        out.append(f"{name} options:")
        for f in dataclasses.fields(cls):
            out.append(_line(f.name, f.default, help_of(f)))
        out.append("")
    out.append("training options (Hugging Face Seq2SeqTrainingArguments, by their own names):")
    for name, f in sorted(training_fields().items()):
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append(_line(name, default, f.metadata.get("help", "")))
    out.append("")
    out.append("LLaMA-Factory names mapped: " + ", ".join(f"{a} -> {b}" for a, b in ALIASES.items()))
    out.append("")
    out.append("LLaMA-Factory options lathe refuses, by reason (accepted only at their default, which changes nothing):")
    by_reason: dict[str, list[str]] = {}
    for key, (_, why) in PENDING.items():
        by_reason.setdefault(why, []).append(key)
    for why, keys in by_reason.items():
        out.append(f"  {why}:")
        out.append(textwrap.indent(textwrap.fill(", ".join(sorted(keys)), 88), "      "))
    return "\n".join(out)
