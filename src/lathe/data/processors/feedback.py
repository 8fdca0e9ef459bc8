"""KTO tokenization: one conversation and a desirable / undesirable label for its last answer."""

from __future__ import annotations

from ..sample import IGNORE_INDEX
from .supervised import build_supervised_example


def encode_feedback_batch(batch: dict[str, list], *, template, tokenizer, data_args) -> dict[str, list]:
    keys = ("input_ids", "labels", "kto_tag", "_truncated", "_drop")
    out: dict[str, list] = {k: [] for k in keys}
    for messages, system, tools, tag in zip(batch["messages"], batch["system"], batch["tools"], batch["kto_tag"]):
        if tag is None or len(messages) % 2 == 1:
            reason = "no kto_tag label" if tag is None else "no answer turn to judge"
            for k in keys:
                out[k].append([] if k in ("input_ids", "labels") else False)
            out["_drop"][-1] = reason
            continue
        system = system or data_args.default_system or ""
        pairs = template.encode(tokenizer, messages, system=system, tools=tools or "", learn_history=False)
        enc = build_supervised_example(pairs, data_args.cutoff_len, mask_history=True)  # judge the last answer only
        learned = any(t != IGNORE_INDEX for t in enc.labels)
        out["input_ids"].append(enc.input_ids)
        out["labels"].append(enc.labels)
        out["kto_tag"].append(bool(tag))
        out["_truncated"].append(enc.truncated)
        out["_drop"].append("" if learned else "no learned token left after truncation to cutoff_len")
    return out
