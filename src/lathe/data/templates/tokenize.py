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

from typing import Any, Sequence

from lathe.errors import LatheError


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


def split_by_spans(tokenizer: Any, text: str, spans: Sequence[tuple[int, int]]) -> list[tuple[list[int], list[int]]]:
    """Tokenize `text` once and split its ids into one `(prompt_ids, answer_ids)` per answer span.

    `spans` are sorted, non-overlapping `[start, end)` character ranges; a token is an answer
    token of span k when one of its characters lies in span k (a zero-width token: when its
    position does). Tokens before span k and after span k-1 are the prompt of pair k.
    """
    require_fast(tokenizer)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    pairs: list[tuple[list[int], list[int]]] = []
    prompt: list[int] = []
    answer: list[int] = []
    k = 0
    for token_id, (start, end) in zip(ids, offsets):
        # Close every span that ends at or before this token's first character.
        while k < len(spans) and start >= spans[k][1]:
            pairs.append((prompt, answer))
            prompt, answer = [], []
            k += 1
        if k < len(spans) and _overlaps(start, end, spans[k]):
            answer.append(token_id)
        else:
            prompt.append(token_id)
    while k < len(spans):
        pairs.append((prompt, answer))
        prompt, answer = [], []
        k += 1
    if prompt:
        # Renderers cut training text at the end of the last answer: nothing after it is learned.
        raise AssertionError(f"{len(prompt)} token(s) follow the last answer span of the rendered text")
    return pairs


def _overlaps(start: int, end: int, span: tuple[int, int]) -> bool:
    if start == end:
        return span[0] <= start < span[1]
    return start < span[1] and end > span[0]


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
