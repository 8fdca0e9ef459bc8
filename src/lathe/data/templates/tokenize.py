"""From rendered text to (prompt ids, answer ids): one tokenizer call, split by character spans.

Why one call: tokenizing the pieces of a conversation separately and concatenating the ids does
not give the ids of the whole text (BPE merges across piece boundaries, SentencePiece adds a
prefix space to each piece), so a model trained that way sees token sequences it never sees at
inference. Instead the whole text is tokenized once with the character offset of every token,
and each token is put on the learned side when any of its characters lies in a learned span.
The ids are then exactly `tokenizer(text)` and the mask comes from the same rendering.

Offsets need a fast (Rust `tokenizers`) tokenizer; a slow one is refused with a message.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any, Iterator, Sequence

import numpy as np

from lathe.errors import LatheError


PARALLELISM = "TOKENIZERS_PARALLELISM"
_DEFAULTED = "LATHE_TOKENIZERS_PARALLELISM_DEFAULTED"


def tokenizer_threads_off_by_default() -> None:
    """Set TOKENIZERS_PARALLELISM=false for this process and its children, unless the user set it.

    A process that forks after the Rust tokenizer used its thread pool (DataLoader workers,
    `datasets` workers, the Board starting a run) gets a warning and, in the child, a pool that
    can deadlock. `tokenizer_threads` lends the pool back where it is safe.
    """
    if PARALLELISM not in os.environ:
        os.environ[PARALLELISM] = "false"
        os.environ[_DEFAULTED] = "1"


def tokenizer_threads_off() -> None:
    """This process (a forked worker) tokenizes on one thread, and `tokenizer_threads` lends it no pool."""
    os.environ[PARALLELISM] = "false"
    os.environ.pop(_DEFAULTED, None)


@contextmanager
def tokenizer_threads(enabled: bool = True) -> Iterator[None]:
    """Let batched tokenization in this process use every core, when lathe (not the user) turned it off.

    Only for work done in the calling process: a worker forked while the pool is on must not
    tokenize in parallel, so callers that fork (`datasets` with num_proc) pass `enabled=False`.
    Afterwards the variable is "false" again, so later forks stay quiet and safe.
    """
    lent = enabled and os.environ.get(_DEFAULTED) == "1" and os.environ.get(PARALLELISM) == "false"
    if lent:
        os.environ[PARALLELISM] = "true"
    try:
        yield
    finally:
        if lent:
            os.environ[PARALLELISM] = "false"


def _tokenizer_name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def require_fast(tokenizer: Any) -> None:
    """Raise LatheError unless `tokenizer` can report character offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise LatheError(
            f"Tokenizer `{_tokenizer_name(tokenizer)}` ({type(tokenizer).__name__}) is a slow (Python) tokenizer; "
            "lathe's templates need a fast tokenizer (the `tokenizers` library) to map characters to tokens. "
            "Load it with use_fast=True, or ship a tokenizer.json with the model."
        )


@dataclass(frozen=True)
class SpanTokens:
    """The ids of one rendered text, and for each token the pair it belongs to and whether it is learned.

    Pair k holds the tokens after answer span k-1 and up to the end of answer span k; within it,
    `learned` marks the tokens of the answer. Arrays keep a batch of conversations out of
    per-token Python loops (the cold preprocessing cost of a data set).
    """

    ids: np.ndarray  # int64 token ids, exactly tokenizer(text, add_special_tokens=False).input_ids
    pair: np.ndarray  # int64 pair index of each token
    learned: np.ndarray  # bool: the token has a character in an answer span
    num_pairs: int

    def pairs(self) -> list[tuple[list[int], list[int]]]:
        """One `(prompt_ids, answer_ids)` per answer span."""
        out = []
        for k in range(self.num_pairs):
            in_pair = self.pair == k
            out.append((self.ids[in_pair & ~self.learned].tolist(), self.ids[in_pair & self.learned].tolist()))
        return out


def tokenize_spans(tokenizer: Any, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]) -> list[SpanTokens]:
    """Tokenize each text once (one batched call) and place every token by its character offsets.

    `spans[i]` are the sorted, non-overlapping `[start, end)` answer spans of `texts[i]`. A token
    is learned in span k when one of its characters lies in span k (a zero-width token: when
    its position does); it belongs to pair k when k spans end at or before its first character.
    The whole batch is placed with a few array operations: each text's offsets and spans are
    shifted past the texts before it, so one `searchsorted` covers them all.
    """
    require_fast(tokenizer)
    if not texts:
        return []
    ids, offsets, lengths = encode_with_offsets(tokenizer, texts)
    num_spans = np.fromiter(map(len, spans), dtype=np.int64, count=len(spans))
    bounds = np.fromiter(chain.from_iterable(chain.from_iterable(spans)), dtype=np.int64,
                         count=2 * int(num_spans.sum())).reshape(-1, 2)
    text_start = np.cumsum([0, *(len(text) + 1 for text in texts[:-1])])  # + 1: texts never touch
    first_span = np.cumsum(num_spans) - num_spans  # index of each text's first span in `bounds`
    bounds = bounds + np.repeat(text_start, num_spans)[:, None]
    token_text = np.repeat(np.arange(len(texts)), lengths)
    start = offsets[:, 0] + text_start[token_text]
    end = offsets[:, 1] + text_start[token_text]
    pair = np.searchsorted(bounds[:, 1], start, side="right") - first_span[token_text]
    after_last = pair >= num_spans[token_text]
    if after_last.any():
        # Renderers cut training text at the end of the last answer: nothing after it is learned.
        raise AssertionError(f"{int(after_last.sum())} token(s) follow the last answer span of the rendered text")
    span = first_span[token_text] + pair
    span_start, span_end = bounds[span, 0], bounds[span, 1]
    learned = np.where(start == end, (span_start <= start) & (start < span_end), (start < span_end) & (end > span_start))
    cuts = np.cumsum(lengths)[:-1]
    return [SpanTokens(*parts, int(n)) for *parts, n in
            zip(np.split(ids, cuts), np.split(pair, cuts), np.split(learned, cuts), num_spans)]


def encode_with_offsets(tokenizer: Any, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`tokenizer(texts, add_special_tokens=False)` with offsets, as flat arrays: (ids, (start, end) per token,
    tokens per text)."""
    ids, offsets, lengths = [], [], []
    for id_lists, offset_lists in _id_and_offset_lists(tokenizer, list(texts)):
        counts = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        total = int(counts.sum())
        ids.append(np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=total))
        flat = chain.from_iterable(chain.from_iterable(offset_lists))
        offsets.append(np.fromiter(flat, dtype=np.int64, count=2 * total).reshape(-1, 2))
        lengths.append(counts)
    if not lengths:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(ids), np.concatenate(offsets), np.concatenate(lengths)


PIPELINE_CHUNK = 256  # texts per call of the Rust tokenizer when its calls overlap the reading of results


def _id_and_offset_lists(tokenizer: Any, texts: list[str]) -> Iterator[tuple[list, list]]:
    """(ids, offsets) lists of the texts, a chunk at a time.

    Called directly (see `direct_backend`), the Rust tokenizer encodes the next chunk in a thread,
    without the GIL, while this one reads the encodings it made into Python lists: that reading
    is a fifth of the work and would otherwise leave a core idle.
    """
    backend = direct_backend(tokenizer)
    if backend is None:
        encoding = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                             return_attention_mask=False, return_token_type_ids=False)
        yield encoding["input_ids"], encoding["offset_mapping"]
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lathe-tokenize")
    try:
        futures = [pool.submit(backend.encode_batch, texts[i:i + PIPELINE_CHUNK], add_special_tokens=False)
                   for i in range(0, len(texts), PIPELINE_CHUNK)]
        for future in futures:
            encodings = future.result()
            yield [e.ids for e in encodings], [e.offsets for e in encodings]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def direct_backend(tokenizer: Any) -> Any:
    """The Rust tokenizer behind `tokenizer` when calling it directly gives exactly what `tokenizer(...)` gives, else None.

    transformers' call clears the backend's truncation and padding, sets its encode_special_tokens
    from split_special_tokens, calls encode_batch, then copies every encoding into Python lists and
    a BatchEncoding: a fifth of the cold preprocessing time of a small data set. When the backend
    already has those settings and the tokenizer's class changes neither step, lathe calls
    encode_batch itself; otherwise (and for any class that customises encoding) it goes through
    the tokenizer. tests/data/test_tokenize_direct.py holds both to the same ids and offsets.
    """
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    cls = type(tokenizer)
    if not isinstance(tokenizer, TokenizersBackend) or cls.__call__ is not PreTrainedTokenizerBase.__call__ \
            or cls._encode_plus is not TokenizersBackend._encode_plus:
        return None
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None or backend.padding is not None:
        return None
    if backend.encode_special_tokens != bool(getattr(tokenizer, "split_special_tokens", False)):
        return None
    return backend


def special_token_strings(tokenizer: Any) -> set[str]:
    """Every token string the tokenizer treats as special (never split, e.g. `<|im_end|>`)."""
    strings = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        if getattr(added, "special", False):
            strings.add(str(added.content))
    return {s for s in strings if s}


def ensure_eos_and_pad(tokenizer: Any, stop_words: Sequence[str], template_name: str) -> list[str]:
    """Give the tokenizer an eos token (the first stop word when it has none) and a pad token (eos)."""
    added: list[str] = []
    if tokenizer.eos_token is None:
        if not stop_words:
            raise LatheError(
                f"Tokenizer `{_tokenizer_name(tokenizer)}` has no eos_token and template `{template_name}` names no "
                "stop word to use instead; set `eos_token` in the tokenizer's tokenizer_config.json "
                "or pick a template with stop words."
            )
        if stop_words[0] not in tokenizer.get_vocab():
            added.append(stop_words[0])
        tokenizer.add_special_tokens({"eos_token": stop_words[0]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return added


def add_missing_special_tokens(tokenizer: Any, tokens: Sequence[str]) -> list[str]:
    """Add the tokens the vocabulary lacks as special tokens; return those added (in order)."""
    vocab = tokenizer.get_vocab()
    missing = list(dict.fromkeys(t for t in tokens if t and t not in vocab))
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return missing
