"""What happened to a run's data: rows read and kept per dataset, skips with reasons, token counts.

Every step of the data path counts what it drops and why into one `DataReport`; the report is
logged, cached with the tokenized data, and a run that would train on nothing stops with it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from .sample import IGNORE_INDEX


@dataclass
class DataReport:
    """What happened to the data: rows read and kept per dataset, skips with reasons, token counts."""

    rows: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # dataset -> human report of skipped rows
    deduplicated: dict[str, int] = field(default_factory=dict)  # dataset -> duplicate rows removed (`dedup`)
    dedup: str = ""  # the `dedup` method that removed them
    dropped: Counter = field(default_factory=Counter)  # reason -> samples dropped after tokenization
    samples: int = 0
    truncated: int = 0
    tokens: int = 0
    learned_tokens: int = 0
    packed_rows: int = 0
    stream_results: list = field(default_factory=list)  # streaming: per-dataset ConversionResult, filled as read

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dropped"] = dict(self.dropped)
        d.pop("stream_results")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataReport":
        return cls(**{**d, "dropped": Counter(d.get("dropped", {}))})

    def lines(self) -> list[str]:
        out = [r.report() for r in self.stream_results]
        for name, n in self.rows.items():
            out.append(f"{name}: {self.kept.get(name, 0)} of {n} rows kept")
            if name in self.skipped:
                out.append("  " + self.skipped[name])
            if self.deduplicated.get(name):
                out.append(f"  {self.deduplicated[name]} duplicate row(s) removed (dedup: {self.dedup})")
        for reason, n in self.dropped.items():
            out.append(f"dropped {n} sample(s): {reason}")
        if self.tokens:
            out.append(
                f"{self.samples:,} samples, {self.tokens:,} tokens, {self.learned_tokens:,} learned "
                f"({100 * self.learned_tokens / self.tokens:.1f}%); {self.truncated} truncated to cutoff_len"
            )
        if self.packed_rows:
            out.append(f"packed into {self.packed_rows:,} rows of at most cutoff_len tokens")
        return out


def count_table_tokens(table, report: DataReport) -> None:
    """`count_tokens` for a whole Arrow table, without turning its rows into Python lists."""
    import pyarrow.compute as pc

    for column in table.column_names:
        if column.endswith("input_ids"):
            report.tokens += int(pc.sum(pc.list_value_length(table[column])).as_py() or 0)
        elif column.endswith("labels"):
            values = pc.list_flatten(table[column])
            report.learned_tokens += len(values) - int(pc.sum(pc.equal(values, IGNORE_INDEX).cast("int64")).as_py() or 0)


def count_tokens(row: dict[str, Any], report: DataReport) -> None:
    """Add a tokenized row's tokens (every *input_ids column) and learned tokens (every *labels column)."""
    for column, values in row.items():
        if column.endswith("input_ids"):
            report.tokens += len(values)
        elif column.endswith("labels"):
            report.learned_tokens += sum(1 for t in values if t != IGNORE_INDEX)
