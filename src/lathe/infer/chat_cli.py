"""`lathe chat CONFIG`: talk to a model in the terminal, with the template it was trained with.

Answers stream as they are generated; `clear` forgets the conversation, `exit` (or Ctrl-D)
quits. The system prompt is `--system` or the config's `default_system` (or the template's
own); `--tools FILE` offers the tools of a JSON file (OpenAI's list of function definitions)
and shows the calls the model makes, parsed with the template's tool format.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO

from ..errors import LatheError, read_json_file

if TYPE_CHECKING:
    from ..config import RunConfig

WELCOME = "Chat with {model}. Type `clear` to start over, `exit` to quit."


def read_tools(path: str | None) -> str:
    """The tools file as the JSON text templates render; checked here so a typo fails before loading."""
    if not path:
        return ""
    file = Path(path)
    if not file.is_file():
        raise LatheError(f"--tools {path}: no such file (a JSON list of tool definitions).")
    tools = read_json_file(file, "the --tools file")
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise LatheError(f"--tools {path} must hold a JSON list of tool definitions (objects).")
    return json.dumps(tools, ensure_ascii=False)


def _stream(engine, history: list[dict], system: str, tools: str, out: TextIO):
    """Print the answer as it streams; return the final Response (the generator's return value)."""
    iterator = engine.stream_chat(history, system=system, tools=tools)
    while True:
        try:
            piece = next(iterator)
        except StopIteration as done:
            return done.value
        print(piece, end="", file=out, flush=True)


def chat_loop(engine, read: Callable[[str], str] = input, out: TextIO = sys.stdout, system: str = "",
              tools: str = "") -> None:
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
        response = _stream(engine, history, system, tools, out)
        print(file=out, flush=True)
        for call in getattr(response, "tool_calls", None) or []:
            print(f"[tool call] {call.name}({call.arguments})", file=out, flush=True)
        # the raw answer (a tool call in the template's own format included) renders back as it was
        history.append({"role": "assistant", "content": response.text if response else ""})


def run_chat(cfg: "RunConfig", system: str | None = None, tools_file: str | None = None) -> None:
    from .engine import create_engine

    tools = read_tools(tools_file)
    chat_loop(create_engine(cfg), system=cfg.data.default_system or "" if system is None else system, tools=tools)
