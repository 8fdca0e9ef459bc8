"""SFT tokenization: ids from the template, labels only on what the model must learn.

Prompt tokens get IGNORE_INDEX; every answer (content + its end-of-turn token) is learned,
unless `train_on_prompt` (learn everything) or `mask_history` (learn only the last answer).
Truncation to `cutoff_len` goes turn by turn and favours the answer (see `split_budget`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..sample import IGNORE_INDEX
from ..templates.tokenize import SpanTokens


def first_learned(labels: list[int]) -> int:
    """Index of the first learned token: where the prompt of an encoded sample ends."""
    return next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))


def split_budget(prompt_len: int, answer_len: int, budget: int) -> tuple[int, int]:
    """How many prompt and answer tokens of one turn fit in `budget` tokens.

    A short answer (under half the budget) is kept whole and the prompt gets the rest; a
    short prompt is kept whole and the answer the rest; when both are long they share the
    budget in proportion to their lengths.
    """
    if prompt_len + answer_len <= budget:
        return prompt_len, answer_len
    if 2 * answer_len < budget:
        keep_answer = answer_len
    elif 2 * prompt_len < budget:
        keep_answer = budget - prompt_len
    else:
        keep_answer = int(budget * answer_len / (prompt_len + answer_len))
    keep_answer = min(keep_answer, answer_len)
    keep_prompt = min(max(budget - keep_answer, 0), prompt_len)
    return keep_prompt, keep_answer


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def build_supervised_example(
    pairs: list[tuple[list[int], list[int]]],
    cutoff_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
) -> Encoded:
    """Concatenate the (prompt, answer) id pairs of one conversation into input_ids and labels.

    A truncated prompt keeps its end: the role header right before the answer must stay, or
    the model would learn answers that follow no assistant header. A truncated answer keeps
    its start.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    truncated = False
    last = len(pairs) - 1
    for i, (prompt, answer) in enumerate(pairs):
        budget = cutoff_len - len(input_ids)
        if budget <= 0:
            truncated = True
            break
        keep_prompt, keep_answer = split_budget(len(prompt), len(answer), budget)
        if (keep_prompt, keep_answer) != (len(prompt), len(answer)):
            truncated = True
        prompt = prompt[len(prompt) - keep_prompt :] if keep_prompt else []
        answer = answer[:keep_answer]
        input_ids += prompt + answer
        labels += prompt if train_on_prompt else [IGNORE_INDEX] * len(prompt)
        learn_answer = not mask_history or i == last
        labels += answer if learn_answer else [IGNORE_INDEX] * len(answer)
    return Encoded(input_ids, labels, truncated)


def labels_of(tokens: SpanTokens, train_on_prompt: bool, mask_history: bool) -> np.ndarray:
    """Labels of a conversation that fits cutoff_len: the same as `build_supervised_example` gives it."""
    if train_on_prompt:
        learned = np.ones_like(tokens.learned)
    elif mask_history:
        learned = tokens.learned & (tokens.pair == tokens.num_pairs - 1)
    else:
        learned = tokens.learned
    return np.where(learned, tokens.ids, IGNORE_INDEX)


def encode_supervised_batch(batch: dict[str, list], *, template, tokenizer, data_args) -> dict[str, list]:
    """Rows -> input_ids / attention_mask / labels (numpy arrays), with `_truncated` and `_drop` for the report.

    The whole batch is tokenized in one call; conversations within cutoff_len take their labels
    straight from the token arrays, longer ones go through `build_supervised_example`.
    """
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "_truncated": [], "_drop": []}
    chosen = batch.get("chosen") or [[]] * len(batch["messages"])
    rows = list(zip(batch["messages"], batch["system"], batch["tools"], chosen))
    learnable = [len(messages) % 2 == 0 for messages, *_ in rows]
    encoded = iter(template.encode_many(tokenizer, [
        (messages, system or data_args.default_system or "", tools or "")
        for (messages, system, tools, _), ok in zip(rows, learnable) if ok
    ], learn_history=not data_args.mask_history))  # mask_history: earlier answers are context
    empty = np.zeros(0, dtype=np.int64)
    for (_, _, _, pair), ok in zip(rows, learnable):
        if not ok:  # plain text, ranking data, or a conversation cut before its answer
            for key in ("input_ids", "attention_mask", "labels"):
                out[key].append(empty)
            out["_truncated"].append(False)
            out["_drop"].append(
                "no answer turn to learn (chosen/rejected pairs belong to `stage: rm` or `dpo`)" if pair
                else "no answer turn to learn (plain text belongs to `stage: pt`)"
            )
            continue
        tokens = next(encoded)
        if len(tokens.ids) <= data_args.cutoff_len:
            input_ids, truncated = tokens.ids, False
            labels = labels_of(tokens, data_args.train_on_prompt, data_args.mask_history)
        else:
            enc = build_supervised_example(tokens.pairs(), data_args.cutoff_len, data_args.train_on_prompt,
                                           data_args.mask_history)
            input_ids, labels = np.asarray(enc.input_ids, dtype=np.int64), np.asarray(enc.labels, dtype=np.int64)
            truncated = enc.truncated
        out["input_ids"].append(input_ids)
        out["attention_mask"].append(np.ones(len(input_ids), dtype=np.int64))
        out["labels"].append(labels)
        out["_truncated"].append(truncated)
        out["_drop"].append("" if (labels != IGNORE_INDEX).any() else "no learned token left after truncation to cutoff_len")
    return out
