"""One reply from a model for a conversation, rendered with the training template.

The prompt comes from `template.encode_prompt`, the same rendering training used, and
generation stops where `model/generation.py` says (the tokenizer's eos or a stop word of the
template).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..model.generation import generation_kwargs, stop_token_ids

if TYPE_CHECKING:
    from ..config.options import GeneratingArguments


@torch.no_grad()
def generate_reply(model, tokenizer, template, messages: list[dict], system: str = "", tools: str = "",
                   gen: "GeneratingArguments | None" = None, **overrides: Any) -> str:
    """Generate the assistant's next message for `messages` (which end with a user turn)."""
    from ..config.options import GeneratingArguments

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
