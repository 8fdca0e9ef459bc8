"""SFT encoding: the batched, array-based path gives exactly what the turn-by-turn builder gives.

`encode_supervised_batch` tokenizes a whole batch in one call and takes labels straight from
the token arrays when a conversation fits cutoff_len; longer ones go through
`build_supervised_example`. These tests hold both paths to the same reference, for every
combination of train_on_prompt / mask_history and for cutoffs that do and do not truncate.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from lathe.data.processors.supervised import (
    IGNORE_INDEX,
    build_supervised_example,
    encode_supervised_batch,
    split_budget,
)
from lathe.data.templates import get_template

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}],
    [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name three colours, please, and say why they matter to painters."},
        {"role": "assistant", "content": "Red, blue and yellow: the primaries every other colour is mixed from."},
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": "You are welcome!"},
    ],
    [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}],
]


@pytest.fixture(scope="module")
def tokenizer(demo_tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(demo_tokenizer_dir))


def _batch(conversations, system=""):
    return {"messages": conversations, "system": [system] * len(conversations), "tools": [""] * len(conversations)}


def _reference(template, tokenizer, messages, args):
    pairs = template.encode(tokenizer, messages, system=args.default_system or "")
    return build_supervised_example(pairs, args.cutoff_len, args.train_on_prompt, args.mask_history)


@pytest.mark.parametrize("template_name", ["default", "qwen", "llama3"])
@pytest.mark.parametrize("train_on_prompt,mask_history", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("cutoff_len", [4096, 40, 12, 3])
def test_batched_encoding_matches_the_turn_by_turn_builder(tokenizer, template_name, train_on_prompt, mask_history,
                                                           cutoff_len):
    template = get_template(template_name)
    template.fix_tokenizer(tokenizer)
    args = SimpleNamespace(cutoff_len=cutoff_len, train_on_prompt=train_on_prompt, mask_history=mask_history,
                           default_system="Be brief.")
    out = encode_supervised_batch(_batch(CONVERSATIONS), template=template, tokenizer=tokenizer, data_args=args)
    for i, messages in enumerate(CONVERSATIONS):
        ref = _reference(template, tokenizer, messages, args)
        assert out["input_ids"][i].tolist() == ref.input_ids
        assert out["labels"][i].tolist() == ref.labels
        assert out["attention_mask"][i].tolist() == [1] * len(ref.input_ids)
        assert out["_truncated"][i] == ref.truncated
        learned = any(t != IGNORE_INDEX for t in ref.labels)
        assert (out["_drop"][i] == "") == learned


def test_untruncated_ids_are_the_tokenizers_ids_of_the_rendered_text(tokenizer):
    template = get_template("qwen")
    template.fix_tokenizer(tokenizer)
    args = SimpleNamespace(cutoff_len=4096, train_on_prompt=False, mask_history=False, default_system="")
    out = encode_supervised_batch(_batch(CONVERSATIONS[:2]), template=template, tokenizer=tokenizer, data_args=args)
    for i, messages in enumerate(CONVERSATIONS[:2]):
        text = template.render(tokenizer, messages).text
        assert out["input_ids"][i].tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_rows_without_an_answer_are_dropped_with_the_reason(tokenizer):
    template = get_template("default")
    template.fix_tokenizer(tokenizer)
    args = SimpleNamespace(cutoff_len=64, train_on_prompt=False, mask_history=False, default_system="")
    batch = _batch([[{"role": "user", "content": "only a prompt"}], CONVERSATIONS[0]])
    batch["chosen"] = [[{"role": "assistant", "content": "a"}], []]
    out = encode_supervised_batch(batch, template=template, tokenizer=tokenizer, data_args=args)
    assert "belong to `stage: rm` or `dpo`" in out["_drop"][0]
    assert len(out["input_ids"][0]) == 0 and out["_drop"][1] == ""


def test_encode_many_equals_encode_one_by_one(tokenizer):
    template = get_template("llama3")
    template.fix_tokenizer(tokenizer)
    many = template.encode_many(tokenizer, [(m, "sys", "") for m in CONVERSATIONS])
    for tokens, messages in zip(many, CONVERSATIONS):
        assert tokens.pairs() == template.encode(tokenizer, messages, system="sys")


@pytest.mark.parametrize("prompt,answer,budget,expect", [
    (5, 5, 20, (5, 5)),      # fits
    (30, 4, 20, (16, 4)),    # short answer kept whole
    (4, 30, 20, (4, 16)),    # short prompt kept whole
    (30, 10, 20, (15, 5)),   # both long: shared in proportion
])
def test_split_budget(prompt, answer, budget, expect):
    assert split_budget(prompt, answer, budget) == expect
