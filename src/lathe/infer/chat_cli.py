"""`lathe chat CONFIG`: talk to a model in the terminal, with the template it was trained with.

Answers stream as they are generated; `clear` forgets the conversation, `exit` (or Ctrl-D)
quits. The system prompt is the config's `default_system` (or the template's own).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable, TextIO

if TYPE_CHECKING:
    from ..config import RunConfig

WELCOME = "Chat with {model}. Type `clear` to start over, `exit` to quit."


def chat_loop(engine, read: Callable[[str], str] = input, out: TextIO = sys.stdout, system: str = "") -> None:
    history: list[dict] = []
    print(WELCOME.format(model=engine.model_name), file=out, flush=True)
    while True:
        try:
            query = read("\nUser: ")
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return
        command = query.strip().lower()
        if command == "exit":
            return
        if command == "clear":
            history = []
            print("History cleared.", file=out, flush=True)
            continue
        if not query.strip():
            continue
        history.append({"role": "user", "content": query})
        print("Assistant: ", end="", file=out, flush=True)
        answer = ""
        for piece in engine.stream_chat(history, system=system):
            answer += piece
            print(piece, end="", file=out, flush=True)
        print(file=out, flush=True)
        history.append({"role": "assistant", "content": answer.strip()})


def run_chat(cfg: "RunConfig") -> None:
    from .engine import ChatEngine

    chat_loop(ChatEngine(cfg), system=cfg.data.default_system or "")
