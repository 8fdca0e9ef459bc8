"""What the Board's tabs share: the runner, the chat session, the widgets and the top bar.

The top bar (model, adapter, method, template, quantization, RoPE, attention) belongs to every
tab: training reads it, and chat / evaluate / export load the model it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import LatheError
from .chat import ChatSession
from .form import FormField, values_to_raw
from .runner import Run, Runner
from .widgets import Widgets


def error_md(lang: str, error: Exception) -> str:
    from .locales import t

    return f"**{t('msg_error', lang)}:** {error}"


@dataclass
class BoardContext:
    runner: Runner
    session: ChatSession
    w: Widgets
    top: list[FormField] = field(default_factory=list)
    # The language menu: handlers take its value as their last input, so that the messages they
    # return speak the language the page shows now (each page has its own), not the one it was built in.
    lang_pick: Any = None

    @property
    def top_components(self) -> list[Any]:
        return [self.w.components[f.name] for f in self.top]

    def top_raw(self, values: list[Any]) -> dict[str, Any]:
        """The top bar's options as config keys (non-defaults only, model always)."""
        raw = values_to_raw(self.top, dict(zip([f.name for f in self.top], values)))
        return raw

    def state_of(self, run: Run | None) -> str:
        if run is None:
            return "idle"
        code = run.returncode()
        if code is None:
            return "running"
        if run.aborted:
            return "aborted"
        return "finished" if code == 0 else "failed"


def split_args(args: tuple[Any, ...], *sizes: int) -> list[list[Any]]:
    """Cut a handler's positional values into the groups they were wired as."""
    out, i = [], 0
    for size in sizes:
        out.append(list(args[i:i + size]))
        i += size
    if i != len(args):
        raise LatheError(f"internal: expected {i} values, got {len(args)}")
    return out
