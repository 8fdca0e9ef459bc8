"""The direct Rust-tokenizer call gives exactly what `tokenizer(texts, add_special_tokens=False)` gives.

lathe skips transformers' call (and its per-encoding conversion) when the backend is in the
state that call would set; these tests hold that shortcut to the library on real tokenizers.
"""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from lathe.data.templates.tokenize import direct_backend, encode_with_offsets, tokenize_spans
from tests.conftest import shared_path

TEXTS = [
    "Hello world",
    "",
    "  leading spaces and\ttabs\nnew lines\r\n",
    "Ünïcödé — 中文字符 and emoji 🙂🚀",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>",
    "<s>[INST] question [/INST] answer</s>",
    "<start_of_turn>user\nhi<end_of_turn>\n<bos><eos>",
    "numbers 1234567890 and code `x = f(y) ** 2`",
]

SHARED_TOKENIZERS = [
    "llama3.2-instruct", "mistral-7b-instruct-v0.3", "qwen2-instruct-boundless", "qwen3-4b-thinking-2507-assembled",
    "gemma-2b-it-TEMPLATE-ONLY", "deepseek-r1-distill-qwen-32b-TEMPLATE-ONLY", "gpt2-dialogpt-small",
]


def library_call(tokenizer, texts):
    encoding = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    ids = [i for row in encoding["input_ids"] for i in row]
    offsets = [o for row in encoding["offset_mapping"] for o in row]
    return ids, offsets, [len(row) for row in encoding["input_ids"]]


def assert_same_as_library(tokenizer, texts):
    expected_ids, expected_offsets, expected_lengths = library_call(tokenizer, texts)
    ids, offsets, lengths = encode_with_offsets(tokenizer, texts)
    assert ids.tolist() == expected_ids
    assert [tuple(o) for o in offsets.tolist()] == [tuple(o) for o in expected_offsets]
    assert lengths.tolist() == expected_lengths


@pytest.mark.parametrize("name", SHARED_TOKENIZERS)
def test_direct_call_matches_the_library_on_real_tokenizers(name):
    tokenizer = AutoTokenizer.from_pretrained(shared_path("tokenizers", name))
    assert direct_backend(tokenizer) is not None  # the shortcut is what these tokenizers take
    assert_same_as_library(tokenizer, TEXTS)


def test_demo_tokenizer_takes_the_direct_call(demo_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(demo_tokenizer_dir)
    assert direct_backend(tokenizer) is not None
    assert_same_as_library(tokenizer, TEXTS)


def test_backend_truncation_or_padding_goes_through_the_library(demo_tokenizer_dir):
    """A tokenizer.json that truncates or pads: transformers' call clears that, so lathe must too."""
    tokenizer = AutoTokenizer.from_pretrained(demo_tokenizer_dir)
    tokenizer.backend_tokenizer.enable_truncation(max_length=3)
    assert direct_backend(tokenizer) is None
    assert_same_as_library(tokenizer, TEXTS)  # whole texts, not 3 tokens
    tokenizer = AutoTokenizer.from_pretrained(demo_tokenizer_dir)
    tokenizer.backend_tokenizer.enable_padding(length=64)
    assert direct_backend(tokenizer) is None
    assert_same_as_library(tokenizer, TEXTS)


def test_split_special_tokens_is_honoured(demo_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(demo_tokenizer_dir, split_special_tokens=True)
    assert_same_as_library(tokenizer, TEXTS)
    tokenizer.backend_tokenizer.encode_special_tokens = False  # out of step with split_special_tokens
    assert direct_backend(tokenizer) is None
    assert_same_as_library(tokenizer, TEXTS)


def test_a_class_that_customises_encoding_goes_through_the_library(demo_tokenizer_dir):
    base = type(AutoTokenizer.from_pretrained(demo_tokenizer_dir))

    class Custom(base):
        def _encode_plus(self, *args, **kwargs):
            return super()._encode_plus(*args, **kwargs)

    tokenizer = Custom.from_pretrained(demo_tokenizer_dir)
    assert direct_backend(tokenizer) is None
    assert_same_as_library(tokenizer, TEXTS)


def test_spans_of_a_batch_equal_spans_one_text_at_a_time(demo_tokenizer_dir):
    """Placing a batch at once (texts shifted past each other) equals placing each text alone."""
    tokenizer = AutoTokenizer.from_pretrained(demo_tokenizer_dir)
    texts = ["Q: hi\nA: hello\nQ: and?\nA: more", "", "x", "Q: long question here\nA: a"]
    spans = [[(9, 15), (26, 30)], [], [(0, 1)], [(25, 26)]]
    assert [text[a:b] for text, s in zip(texts, spans) for a, b in s] == ["hello\n", "more", "x", "a"]
    batch = tokenize_spans(tokenizer, texts, spans)
    for text, text_spans, got in zip(texts, spans, batch):
        (alone,) = tokenize_spans(tokenizer, [text], [text_spans])
        assert got.num_pairs == alone.num_pairs == len(text_spans)
        for field in ("ids", "pair", "learned"):
            np.testing.assert_array_equal(getattr(got, field), getattr(alone, field))
    assert batch[2].learned.all() and batch[1].ids.size == 0


def test_text_after_the_last_answer_is_refused(demo_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(demo_tokenizer_dir)
    with pytest.raises(AssertionError, match="follow the last answer span"):
        tokenize_spans(tokenizer, ["answer then more", "ok"], [[(0, 6)], [(0, 2)]])


def test_no_texts_give_empty_arrays(demo_tokenizer_dir):
    ids, offsets, lengths = encode_with_offsets(AutoTokenizer.from_pretrained(demo_tokenizer_dir), [])
    assert ids.shape == (0,) and offsets.shape == (0, 2) and lengths.shape == (0,)
