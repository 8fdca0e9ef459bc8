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
    """
    require_fast(tokenizer)
    if not texts:
        return []
    encoding = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True,
                         return_attention_mask=False, return_token_type_ids=False)
    out = []
    for ids, offsets, text_spans in zip(encoding["input_ids"], encoding["offset_mapping"], spans):
        ids = np.fromiter(ids, dtype=np.int64, count=len(ids))
        offsets = np.fromiter(chain.from_iterable(offsets), dtype=np.int64, count=2 * len(offsets)).reshape(-1, 2)
        bounds = np.asarray(text_spans, dtype=np.int64).reshape(-1, 2)
        start, end = offsets[:, 0], offsets[:, 1]
        pair = np.searchsorted(bounds[:, 1], start, side="right")
        if len(pair) and pair.max() >= len(bounds):
            # Renderers cut training text at the end of the last answer: nothing after it is learned.
            raise AssertionError(f"{int((pair >= len(bounds)).sum())} token(s) follow the last answer span "
                                 "of the rendered text")
        span_start, span_end = bounds[pair, 0], bounds[pair, 1]
        zero_width = start == end
        learned = np.where(zero_width, (span_start <= start) & (start < span_end), (start < span_end) & (end > span_start))
        out.append(SpanTokens(ids, pair, learned, len(bounds)))
    return out


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
