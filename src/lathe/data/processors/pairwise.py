"""Pairwise tokenization (rm, dpo): one prompt, a chosen and a rejected answer.

Both answers are rendered after the same conversation with the run's template; only the
final answer is learned. Truncation treats the longer answer as the one to fit, so chosen
and rejected keep the same prompt tokens.
"""

from __future__ import annotations

from ..sample import IGNORE_INDEX
from .supervised import split_budget


def _prompt_and_answer(template, tokenizer, messages, answer, system, tools) -> tuple[list[int], list[int]]:
    # Earlier answers are context here, as in a prompt (reasoning templates drop their thoughts).
    pairs = template.encode(tokenizer, list(messages) + list(answer), system=system, tools=tools, learn_history=False)
    prompt = [t for p, a in pairs[:-1] for t in p + a] + pairs[-1][0]
    return prompt, pairs[-1][1]


def encode_pairwise_batch(batch: dict[str, list], *, template, tokenizer, data_args) -> dict[str, list]:
    keys = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels", "_truncated", "_drop")
    out: dict[str, list] = {k: [] for k in keys}
    for messages, system, tools, chosen, rejected in zip(
        batch["messages"], batch["system"], batch["tools"], batch["chosen"], batch["rejected"]
    ):
        if not chosen or not rejected:
            for k in keys:
                out[k].append(False if k == "_truncated" else [])
            out["_drop"][-1] = "no chosen/rejected pair (pairwise stages need ranking data)"
            continue
        system = system or data_args.default_system or ""
        prompt_c, answer_c = _prompt_and_answer(template, tokenizer, messages, chosen, system, tools or "")
        prompt_r, answer_r = _prompt_and_answer(template, tokenizer, messages, rejected, system, tools or "")
        longest = max(len(answer_c), len(answer_r))
        keep_prompt, keep_answer = split_budget(len(prompt_c), longest, data_args.cutoff_len)
        truncated = keep_prompt < len(prompt_c) or keep_answer < longest
        for name, prompt, answer in (("chosen", prompt_c, answer_c), ("rejected", prompt_r, answer_r)):
            prompt = prompt[len(prompt) - keep_prompt :] if keep_prompt else []
            answer = answer[:keep_answer]
            out[f"{name}_input_ids"].append(prompt + answer)
            out[f"{name}_labels"].append([IGNORE_INDEX] * len(prompt) + answer)
        out["_truncated"].append(truncated)
        out["_drop"].append("" if keep_answer else "no answer token left after truncation to cutoff_len")
    return out
