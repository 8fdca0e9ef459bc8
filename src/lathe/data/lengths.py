"""The longest sample of a tokenized data set: what one training step can hold at most.

Memory decisions and `lathe plan` used to assume every sample is `cutoff_len` tokens long;
real data is mostly much shorter (a cutoff of 2,048 over samples of 300 tokens), so the
assumption checkpointed runs that had room to spare and planned several times the memory
a run takes. Read from the Arrow columns, without touching the rows.
"""

from __future__ import annotations

from typing import Any


def longest_sample(data: Any) -> int | None:
    """Tokens in the longest sequence of any `*input_ids` column (chosen, rejected, packed rows alike);
    None where the data set is not an in-memory Arrow table (streaming) or holds no such column."""
    import pyarrow.compute as pc

    table = getattr(data, "data", None)
    names = getattr(data, "column_names", None)
    if table is None or not isinstance(names, list):
        return None
    longest = None
    for name in names:
        if not name.endswith("input_ids") or len(data) == 0:
            continue
        lengths = pc.list_value_length(table.column(name))
        value = pc.max(lengths).as_py()
        if value is not None:
            longest = value if longest is None else max(longest, value)
    return longest


def rows_per_sample(data: Any) -> int:
    """Sequences one sample puts through the trained forward pass: 2 for pairwise data (chosen and
    rejected in one batch), else 1."""
    names = getattr(data, "column_names", None) or []
    return 2 if "chosen_input_ids" in names and "rejected_input_ids" in names else 1
