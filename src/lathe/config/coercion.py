"""Raw config values (YAML scalars, command-line text) as the option's declared type, or an error naming the key."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from ..errors import LatheError


def type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # library dataclasses may name types we cannot resolve; be lenient
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _accepts_bool(hint: Any) -> bool:
    if hint is bool:
        return True
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and bool in typing.get_args(hint)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert `value` to the option's type, or raise a LatheError naming the key."""
    if isinstance(value, bool) and hint is not Any and not _accepts_bool(hint):
        # YAML 1.1 reads a bare `no` / `yes` as a boolean; for a text option (save_strategy: no)
        # the user meant the word.
        value = "no" if value is False else "yes"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return None
        errors = []
        for member in members:
            if member is type(None):
                continue
            try:
                return coerce(key, value, member)
            except LatheError as e:
                errors.append(e)
        if errors:
            raise errors[0]
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise LatheError(f"`{key}` must be true or false, got {value!r}.")
    if hint is int:
        if isinstance(value, bool):
            raise LatheError(f"`{key}` must be an integer, got {value!r}.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise LatheError(f"`{key}` must be an integer, got {value!r}.")
    if hint is float:
        if isinstance(value, bool):
            raise LatheError(f"`{key}` must be a number, got {value!r}.")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads `1e-4` (no dot) as a string
            except ValueError:
                pass
        raise LatheError(f"`{key}` must be a number, got {value!r}.")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if value is None:
            raise LatheError(f"`{key}` must be text, got nothing.")
        raise LatheError(f"`{key}` must be text, got {value!r}.")
    if hint is dict or typing.get_origin(hint) is dict:
        if isinstance(value, dict):
            return value
        raise LatheError(f"`{key}` must be a mapping (key: value pairs), got {value!r}.")
    return value  # lists, enums and library types: the library checks them
