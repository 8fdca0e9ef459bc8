"""One reply from a model for a conversation, rendered with the training template.

The prompt comes from `template.encode_prompt`, the same rendering training used, and
generation stops at the tokenizer's eos or any of the template's stop words; a wrong
template here is the classic cause of a tuned model that never stops talking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..config.schema import GeneratingArguments


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


@torch.no_grad()
def generate_reply(model, tokenizer, template, messages: list[dict], system: str = "", tools: str = "",
                   gen: "GeneratingArguments | None" = None, **overrides: Any) -> str:
    """Generate the assistant's next message for `messages` (which end with a user turn)."""
    from ..config.schema import GeneratingArguments

    ids = template.encode_prompt(tokenizer, messages, system=system, tools=tools)
    kwargs = generation_kwargs(gen or GeneratingArguments())
    kwargs.update(overrides)
    input_ids = torch.tensor([ids], device=model.device)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        eos_token_id=stop_token_ids(tokenizer, template),
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )
    new = output[0, len(ids):].tolist()
    return tokenizer.decode(new, skip_special_tokens=(gen or GeneratingArguments()).skip_special_tokens).strip()
