"""Generation settings shared by everything that samples from a model: PPO's rollouts, prediction, chat and the API.

Two things decide whether a tuned model's answer ends where it should: the stop tokens (the
tokenizer's eos plus the template's stop words: a wrong template is the classic cause of a
model that never stops talking) and the generating options of the config, as `generate` takes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config.options import GeneratingArguments


def stop_token_ids(tokenizer, template) -> list[int]:
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[w] for w in template.stop_words if w in vocab]
    return list(dict.fromkeys(ids))


def generation_kwargs(gen: "GeneratingArguments") -> dict[str, Any]:
    """The generating group as `model.generate` arguments (sampling ones only when sampling)."""
    kwargs: dict[str, Any] = {
        "do_sample": gen.do_sample,
        "num_beams": gen.num_beams,
        "repetition_penalty": gen.repetition_penalty,
        "length_penalty": gen.length_penalty,
    }
    if gen.max_new_tokens and gen.max_new_tokens > 0:
        kwargs["max_new_tokens"] = gen.max_new_tokens
    else:
        kwargs["max_length"] = gen.max_length
    if gen.do_sample:
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k)
    return kwargs
