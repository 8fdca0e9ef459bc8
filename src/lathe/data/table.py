"""Run a processor over samples held in Python and store its output as one Arrow table.

Why not `datasets.map`: the samples come from lathe's own readers as Python dicts. map would
first convert them to Arrow (nested message structs, row by row), read every batch back into
Python for the processor, and convert the output again: for a data set of the size people
fine-tune on, more time than the rest of preprocessing besides the tokenizer. Here batches
go straight to the processor and the token arrays it returns are concatenated into Arrow
list columns in one step. Large data and worker processes go through
`encode.tokenize_in_shards`, which runs the same batches shard by shard; `datasets.map` still
runs the processors on streamed data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from datasets import Dataset


def encode_in_process(samples: Sequence[dict[str, Any]], columns: Sequence[str], function: Callable[..., dict],
                      kwargs: dict[str, Any], batch_size: int) -> "Dataset":
    """`function(batch, **kwargs)` over `samples` in batches of `batch_size`, as a `datasets.Dataset`.

    A batch is a dict of columns (`columns` of the samples), as `datasets.map(batched=True)` gives it.
    The progress bar is datasets' own, so `datasets.disable_progress_bars()` silences it too. The
    table is held in memory until the caller saves it, as map's output for in-memory samples was.
    """
    import pyarrow as pa
    from datasets import Dataset
    from datasets.fingerprint import generate_random_fingerprint
    from datasets.utils.tqdm import tqdm

    tables = []
    with tqdm(total=len(samples), desc="Tokenizing", unit=" examples") as progress:
        for start in range(0, len(samples), batch_size):
            rows = samples[start:start + batch_size]
            tables.append(arrow_table(function({column: [row[column] for row in rows] for column in columns}, **kwargs)))
            progress.update(len(rows))
    # permissive: a batch whose lists are all empty (every sample dropped) joins the others' type
    table = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    # lathe caches the result under its own key (data/tokenized_cache.py); hashing the table would cost as much as building it.
    return Dataset(table, fingerprint=generate_random_fingerprint())


# Stored as datasets.map stores these columns (its OptimizedTypedSequence): ids fit int32, masks int8.
NARROW_TYPES = {"input_ids": "int32", "attention_mask": "int8", "token_type_ids": "int8", "special_tokens_mask": "int8"}


def arrow_table(columns: dict[str, list]):
    """A `pyarrow.Table` of one batch's equal-length columns; a column of numpy arrays becomes a list
    column in one copy (a batch stays far below the 2**31 values a list column's offsets can hold)."""
    import pyarrow as pa

    return pa.table({name: _arrow_column(name, values) for name, values in columns.items()})


def _arrow_column(name: str, values: list):
    import pyarrow as pa

    if values and all(isinstance(v, np.ndarray) for v in values):
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), type=pa.int32())
        column = pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(values)))
    else:
        column = pa.array(values)
    narrow = NARROW_TYPES.get(name)
    if narrow and pa.types.is_list(column.type) and pa.types.is_integer(column.type.value_type):
        column = column.cast(pa.list_(pa.type_for_alias(narrow)))
    return column
