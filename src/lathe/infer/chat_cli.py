"""`lathe chat CONFIG`: talk to a model in the terminal, with the template it was trained with.

Answers stream as they are generated; `clear` forgets the conversation, `exit` (or Ctrl-D)
quits. The system prompt is `--system` or the config's `default_system` (or the template's
own); `--tools FILE` offers the tools of a JSON file (OpenAI's list of function definitions)
and shows the calls the model makes, parsed with the template's tool format. `--image` / `--video` /
`--audio` (each repeatable) attach media to the first user message of the session, for a model that takes
them; `clear` forgets them with the conversation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO

from ..errors import LatheError, read_json_file

if TYPE_CHECKING:
    from ..config import RunConfig

WELCOME = "Chat with {model}. Type `clear` to start over, `exit` to quit."
MEDIA_FLAGS = {"image": "--image", "video": "--video", "audio": "--audio"}


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


def check_media_files(media: dict[str, list[str]]) -> None:
    """Each `--image` / `--video` / `--audio` is a file (or a data: URL): checked before the model loads."""
    from ..data.media.load import MediaOptions, check_exists

    for kind, paths in media.items():
        for path in paths:
            try:
                check_exists(path, MediaOptions())
            except LatheError as error:
                raise LatheError(f"{MEDIA_FLAGS[kind]} {path}: {error}") from None


def _check_engine_takes(engine, media: dict[str, list[str]]) -> None:
    kinds = tuple(getattr(engine, "media_kinds", ()) or ())
    for kind, paths in media.items():
        if paths and not kinds:
            reason = engine.no_media_reason() if hasattr(engine, "no_media_reason") else "the model takes text only"
            raise LatheError(f"{MEDIA_FLAGS[kind]} given, but {reason}.")
        if paths and kind not in kinds:
            raise LatheError(f"{MEDIA_FLAGS[kind]} given, but this model takes {', '.join(kinds)} only.")


def _stream(engine, history: list[dict], system: str, tools: str, out: TextIO, media: dict[str, list] | None = None):
    """Print the answer as it streams; return the final Response (the generator's return value)."""
    iterator = engine.stream_chat(history, system=system, tools=tools, **(media or {}))
    while True:
        try:
            piece = next(iterator)
        except StopIteration as done:
            return done.value
        print(piece, end="", file=out, flush=True)


def chat_loop(engine, read: Callable[[str], str] = input, out: TextIO | None = None, system: str = "",
              tools: str = "", images: list | None = None, videos: list | None = None,
              audios: list | None = None) -> None:
    """The conversation; `images` / `videos` / `audios` go with the first user message (sent again with the
    history on every turn, as the model sees the whole conversation each time) until `clear`."""
    out = out or sys.stdout  # looked up per call: a default bound at import misses a later redirection
    history: list[dict] = []
    media = {key: list(value) for key, value in (("images", images), ("videos", videos), ("audios", audios))
             if value}
    print(WELCOME.format(model=engine.model_name), file=out, flush=True)
    if media:
        listed = ", ".join(str(item) for value in media.values() for item in value)
        print(f"Attached to your first message: {listed}", file=out, flush=True)
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
            print("History cleared." + (" The attached media are dropped too." if media else ""), file=out,
                  flush=True)
            media = {}
            continue
        if not query.strip():
            continue
        history.append({"role": "user", "content": query})
        print("Assistant: ", end="", file=out, flush=True)
        response = _stream(engine, history, system, tools, out, media)
        print(file=out, flush=True)
        for call in getattr(response, "tool_calls", None) or []:
            print(f"[tool call] {call.name}({call.arguments})", file=out, flush=True)
        # the raw answer (a tool call in the template's own format included) renders back as it was
        history.append({"role": "assistant", "content": response.text if response else ""})


def run_chat(cfg: "RunConfig", system: str | None = None, tools_file: str | None = None,
             images: list[str] | None = None, videos: list[str] | None = None,
             audios: list[str] | None = None) -> None:
    from .engine import create_engine

    tools = read_tools(tools_file)
    media = {"image": list(images or []), "video": list(videos or []), "audio": list(audios or [])}
    check_media_files(media)
    engine = create_engine(cfg)
    _check_engine_takes(engine, media)
    chat_loop(engine, system=cfg.data.default_system or "" if system is None else system, tools=tools,
              images=media["image"], videos=media["video"], audios=media["audio"])


def chat_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lathe chat", description="Talk to a model in the terminal.")
    parser.add_argument("config", nargs="?", help="a config (YAML or JSON) naming the model and template")
    parser.add_argument("--system", help="system prompt (default: the config's default_system)")
    parser.add_argument("--tools", help="JSON file with a list of tool definitions the model may call")
    for kind, flag in MEDIA_FLAGS.items():
        parser.add_argument(flag, action="append", default=[], metavar="PATH", dest=f"{kind}s",
                            help=f"{kind} file attached to the first user message of the session (repeatable; "
                                 f"for models that take {kind}s)")
    parser.add_argument("overrides", nargs="*", help="key=value options")
    return parser


def chat_main(args: list[str]) -> int:
    """`lathe chat ...`: parse the arguments, check the tools and media files, load the model and chat."""
    from ..config import load_config
    from ..hub import use_token

    ns = chat_parser().parse_intermixed_args(args)  # key=value overrides may come after the flags
    rest = ([ns.config] if ns.config else []) + ns.overrides
    path, overrides = (rest[0], rest[1:]) if rest and "=" not in rest[0] else (None, rest)
    read_tools(ns.tools)  # a bad tools file or a missing image fails before the model loads
    check_media_files({"image": ns.images, "video": ns.videos, "audio": ns.audios})
    cfg = load_config(path, overrides, purpose="infer")
    use_token(cfg.hub_token)
    run_chat(cfg, system=ns.system, tools_file=ns.tools, images=ns.images, videos=ns.videos, audios=ns.audios)
    return 0
