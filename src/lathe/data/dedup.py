"""Removing duplicate samples before tokenization (`dedup: exact | minhash`), counted per dataset.

Why in the loader: large SFT collections are often merged from sources that share rows, and a
row seen many times is learned many times; no peer's fine-tuning loader removes them. Each
dataset is deduplicated on its own, before datasets are mixed, so a mix strategy that repeats
rows on purpose (`interleave_over`, an entry's `num_samples`) still does; the removed rows are
counted in the data report beside the dataset's other skipped rows.

- `exact`: a sample is removed when its conversation (system text, tools, every turn's role and
  content) is identical to an earlier sample's: the same texts render to the same training text.
  A 128-bit hash per sample is kept, not the text.
- `minhash`: a sample is removed when it is a near-duplicate of an earlier kept sample: estimated
  Jaccard similarity at least `MINHASH_THRESHOLD` (0.9) between their sets of word 5-grams
  (shingles; words are split at whitespace). The estimate comes from `NUM_PERM` (64) MinHash values
  per sample under fixed-seed hash functions, and candidates are found by locality-sensitive hashing in `BANDS` (8) bands of 8
  values: a pair at similarity 0.9 shares a band with probability 0.99 (0.999 at 0.95), a pair
  below 0.5 almost never, so the work stays linear in the number of samples. Written here with
  numpy (the `datasketch` package is not a lathe dependency); deterministic for given data.
  Memory: 256 bytes of signature per sample (256 MB for a million).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import LatheError
from .report import DataReport

if TYPE_CHECKING:
    from ..config import RunConfig

MINHASH_THRESHOLD = 0.9
NUM_PERM = 64
BANDS = 8
SHINGLE_WORDS = 5
SEED = 0
_MULTIPLIER = np.uint64(1_000_003)
_BATCH = 512  # samples whose shingles are hashed in one array operation


def dedup_method(cfg: "RunConfig") -> str | None:
    """The run's `dedup` (None: keep every sample)."""
    return cfg.data.dedup


def conversation_text(sample: dict[str, Any]) -> str:
    """Everything of a sample that its rendered training text is made of, joined with separators no text holds."""
    turns = "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in sample.get("messages") or [])
    return f"{sample.get('system') or ''}\x1d{sample.get('tools') or ''}\x1d{turns}"


class Exact:
    """Marks a sample whose conversation an earlier sample (of any earlier chunk) had; keeps 128-bit hashes only."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def keep(self, samples: list[dict[str, Any]]) -> list[bool]:
        import xxhash

        out = []
        for sample in samples:
            digest = xxhash.xxh3_128_intdigest(conversation_text(sample).encode("utf-8"))
            out.append(digest not in self.seen)
            self.seen.add(digest)
        return out


def _shingles(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash, text index) of every word `SHINGLE_WORDS`-gram of `texts`, grouped by text; a text of
    fewer words gives one shingle of all of them (an empty text: of none).

    Words are hashed in one call (pandas' `hash_array`, SipHash with a fixed key: the same on every run),
    and the n-grams are combined as polynomials over the flat array of every text's words at once.
    """
    from pandas.util import hash_array

    words = [t.split() for t in texts]
    counts = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    flat = np.empty(int(counts.sum()), dtype=object)
    flat[:] = list(chain.from_iterable(words))
    hashed = hash_array(flat, categorize=False) if len(flat) else np.zeros(0, dtype=np.uint64)
    width = SHINGLE_WORDS
    padded = np.concatenate([hashed, np.zeros(width, dtype=np.uint64)])
    combined = np.zeros(len(hashed), dtype=np.uint64)
    for j in range(width):  # wrapping at 2**64: the order of the words in a shingle matters
        combined = combined * _MULTIPLIER + padded[j:j + len(hashed)]
    owner = np.repeat(np.arange(len(texts)), counts)
    ends = np.cumsum(counts)
    valid = np.arange(len(hashed)) + width <= ends[owner] if len(hashed) else np.zeros(0, dtype=bool)
    hashes, owners = [combined[valid]], [owner[valid]]
    for index in np.nonzero(counts < width)[0]:  # short texts: one shingle of all their words
        value = np.uint64(0)
        for word in hashed[ends[index] - counts[index]:ends[index]]:
            value = value * _MULTIPLIER + word
        hashes.append(np.array([value], dtype=np.uint64))
        owners.append(np.array([index]))
    hashes_, owners_ = np.concatenate(hashes), np.concatenate(owners)
    order = np.argsort(owners_, kind="stable")
    return hashes_[order], owners_[order]


def signatures(texts: list[str]) -> np.ndarray:
    """(len(texts), NUM_PERM) uint32 MinHash signatures: for each of NUM_PERM multiply-shift hash functions
    ((a * x + b) mod 2**64) >> 32 with fixed random odd a, the minimum over the text's shingle hashes x."""
    rng = np.random.default_rng(SEED)
    a = rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
    out = np.empty((len(texts), NUM_PERM), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for start in range(0, len(texts), _BATCH):
            hashes, owners = _shingles(texts[start:start + _BATCH])
            hashed = (a[:, None] * hashes[None, :] + b[:, None]) >> np.uint64(32)
            first = np.searchsorted(owners, np.arange(min(_BATCH, len(texts) - start)))
            out[start:start + len(first)] = np.minimum.reduceat(hashed, first, axis=1).T.astype(np.uint32)
    return out


class MinHash:
    """Marks a sample that is a near-duplicate (estimated Jaccard >= `threshold`) of an earlier kept one."""

    def __init__(self, threshold: float = MINHASH_THRESHOLD) -> None:
        self.threshold = threshold
        self.kept: list[np.ndarray] = []  # signature blocks of the kept samples, in order
        self.count = 0
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(BANDS)]  # band values -> kept samples

    def keep(self, samples: list[dict[str, Any]]) -> list[bool]:
        signature = signatures([conversation_text(s) for s in samples])
        rows = NUM_PERM // BANDS
        out = []
        for sig in signature:
            keys = [sig[k * rows:(k + 1) * rows].tobytes() for k in range(BANDS)]
            candidates = {j for k, key in enumerate(keys) for j in self.buckets[k].get(key, ())}
            duplicate = any(np.count_nonzero(self._signature(j) == sig) >= self.threshold * NUM_PERM
                            for j in candidates)
            out.append(not duplicate)
            if not duplicate:
                for k, key in enumerate(keys):
                    self.buckets[k].setdefault(key, []).append(self.count)
                self.kept.append(sig)
                self.count += 1
        return out

    def _signature(self, index: int) -> np.ndarray:
        return self.kept[index]


def exact_keep(samples: list[dict[str, Any]]) -> list[bool]:
    """True for each sample whose conversation no earlier sample has."""
    return Exact().keep(samples)


def minhash_keep(samples: list[dict[str, Any]], threshold: float = MINHASH_THRESHOLD) -> list[bool]:
    """True for each sample that is not a near-duplicate (estimated Jaccard >= `threshold`) of an earlier kept one."""
    return MinHash(threshold).keep(samples)


# `dedup` value -> what marks the samples to keep, chunk after chunk of one dataset
METHODS: dict[str, Callable[[], Exact | MinHash]] = {"exact": Exact, "minhash": MinHash}


def deduplicator(method: str) -> Exact | MinHash:
    """A fresh marker for one dataset's samples by `method`."""
    make = METHODS.get(method)
    if make is None:
        raise LatheError(f"`dedup: {method}` is not a deduplication method; choose one of {', '.join(METHODS)}.")
    return make()


def count_removed(report: DataReport, method: str, name: str, removed: int) -> None:
    """Record `removed` duplicates of dataset `name` (its kept count goes down by as many)."""
    report.dedup = method
    report.deduplicated[name] = report.deduplicated.get(name, 0) + removed
    if name in report.kept:
        report.kept[name] -= removed


def deduplicate(samples: list[dict[str, Any]], method: str, name: str, report: DataReport) -> list[dict[str, Any]]:
    """The samples of dataset `name` without duplicates by `method`; the count removed goes into `report`."""
    keep = deduplicator(method).keep(samples)
    kept = [s for s, k in zip(samples, keep) if k]
    count_removed(report, method, name, len(samples) - len(kept))
    return kept


def load_deduplicated(names: str, cfg: "RunConfig", report: DataReport, attrs: list) -> list[dict[str, Any]]:
    """`mixing.load_mixed_samples`, each dataset deduplicated by the run's `dedup` before they are mixed."""
    from datasets import Dataset

    from .mixing import load_mixed_samples, mix

    method = dedup_method(cfg)
    assert method is not None
    parts = [deduplicate(load_mixed_samples(attr.name, cfg, report, [attr]), method, attr.name, report) for attr in attrs]
    if len(parts) == 1 or cfg.data.mix_strategy == "concat":
        return [sample for part in parts for sample in part]
    # as load_mixed_samples mixes: interleaving depends only on the parts' lengths
    order = mix([Dataset.from_dict({"part": [k] * len(part), "row": list(range(len(part)))})
                 for k, part in enumerate(parts)], cfg)
    return [parts[k][i] for k, i in zip(order["part"], order["row"])]
