"""Pre-training tokenization: text in, every token learned.

A sample's text is the contents of its messages joined by a blank line (plain-text datasets
have one message), followed by eos so the model learns where a document ends.
"""

from __future__ import annotations


def sample_text(messages: list[dict]) -> str:
    return "\n\n".join(m["content"] for m in messages if m.get("content"))


def encode_pretrain_batch(batch: dict[str, list], *, tokenizer, cutoff_len: int, packing: bool) -> dict[str, list]:
    """A `datasets.map(batched=True)` function: texts -> input_ids / labels.

    Packed, the token streams are concatenated and cut into blocks of `cutoff_len` (the last,
    shorter block is kept: no text is dropped) with per-block position ids; unpacked, each
    text is truncated to `cutoff_len`.
    """
    texts = [sample_text(m) for m in batch["messages"]]
    encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    docs = [ids + eos for ids, text in zip(encoded, texts) if text.strip()]
    out: dict[str, list] = {"input_ids": [], "labels": [], "_truncated": [], "_drop": []}
    if packing:
        stream = [t for doc in docs for t in doc]
        blocks = [stream[i : i + cutoff_len] for i in range(0, len(stream), cutoff_len)]
        out["position_ids"] = [list(range(len(b))) for b in blocks]
    else:
        blocks = [doc[:cutoff_len] for doc in docs]
        out["attention_mask"] = [[1] * len(b) for b in blocks]
    out["input_ids"] = blocks
    out["labels"] = [list(b) for b in blocks]
    out["_truncated"] = [False] * len(blocks) if packing else [len(d) > cutoff_len for d in docs]
    out["_drop"] = ["" for _ in blocks]
    blank = len(texts) - len(docs)  # whitespace-only texts: one empty row each, so the loader counts them
    for column in out:
        out[column] += [False if column == "_truncated" else "blank text (whitespace only)" if column == "_drop"
                        else [] for _ in range(blank)]
    return out
