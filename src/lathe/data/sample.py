"""The canonical sample schema every dataset format is converted into.

A sample is a plain dict (so `datasets` can store it in Arrow):

    {
        "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...],
        "system": "...",   # "" when absent
        "tools": "...",    # JSON text of the tool schemas, "" when absent
    }

`messages` alternate prompt-side and answer-side turns: a prompt turn is `user` or
`observation` (a tool result); an answer turn is `assistant` or `function` (a tool call,
whose content is the JSON text of the call). The first turn is a prompt turn and the last an
answer turn for training data. Later stages add keys (`chosen` / `rejected` message lists for
pairwise data, `kto_tag` for KTO) without changing these.
"""

from __future__ import annotations

from typing import TypedDict

USER = "user"
ASSISTANT = "assistant"
FUNCTION = "function"  # a tool call made by the assistant
OBSERVATION = "observation"  # a tool result shown to the assistant

PROMPT_ROLES = (USER, OBSERVATION)
ANSWER_ROLES = (ASSISTANT, FUNCTION)


class Message(TypedDict):
    role: str
    content: str


class Sample(TypedDict, total=False):
    messages: list[Message]
    system: str
    tools: str


# Tokenized, a sample becomes `input_ids` and `labels` (plus what its stage adds); a position
# whose token is not learned (prompt, padding, masked history) has this label, which the
# losses of transformers and lathe skip.
IGNORE_INDEX = -100
