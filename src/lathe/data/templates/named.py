"""The one registry of chat templates: the entries of templates.yaml, by name.

`resolve_template` is what the data and inference code call: a name picks a registered template;
no name uses the tokenizer's own chat template, so a model that ships one is trained in the exact
format it is served with.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from lathe.errors import LatheError, did_you_mean, lookup

from .base import Template
from .slots import Slots, SlotTemplate
from .tokenizer_template import TokenizerTemplate
from .tools import get_tool_format

logger = logging.getLogger(__name__)

TEMPLATES_FILE = Path(__file__).with_name("templates.yaml")  # checked against the vendors' own templates
# Written from the vendor's published format (or LLaMA-Factory's definition) where no vendor
# template file was at hand to check against: docs/templates.md marks them unverified.
PUBLISHED_FILE = Path(__file__).with_name("templates_published.yaml")
_SLOT_KEYS = {f.name for f in fields(Slots)} - {"name"}


def _load_entries(path: Path) -> dict[str, dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        entries = yaml.safe_load(handle) or {}
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise LatheError(f"{path}: expected a mapping of template name -> slots.")
    return entries


def _resolve_entry(name: str, entries: dict[str, dict[str, Any]], path: Path, seen: tuple[str, ...] = ()) -> dict:
    """Return the slots of `name` with its `base` chain applied (base first, then the entry's own)."""
    entry = dict(entries[name])
    unknown = set(entry) - _SLOT_KEYS - {"base"}
    if unknown:
        key = sorted(unknown)[0]
        raise LatheError(f"{path}: template `{name}` has unknown key `{key}`.{did_you_mean(key, _SLOT_KEYS)}")
    base = entry.pop("base", None)
    if base is None:
        return entry
    if base not in entries:
        raise LatheError(f"{path}: template `{name}` has base `{base}`, which is not defined.")
    if base in seen:
        raise LatheError(f"{path}: templates {' -> '.join(seen + (name, base))} inherit in a circle.")
    return {**_resolve_entry(base, entries, path, seen + (name,)), **entry}


@functools.cache
def _registry() -> dict[str, SlotTemplate]:
    entries, source = {}, {}
    for path in (TEMPLATES_FILE, PUBLISHED_FILE):
        if not path.exists():
            continue
        for name, entry in _load_entries(path).items():
            if name in entries:
                raise LatheError(f"{path}: template `{name}` is defined in {source[name]} already.")
            entries[name], source[name] = entry, path
    registry = {}
    for name in entries:
        slots = _resolve_entry(name, entries, source[name])
        for key in ("stop_words", "special_tokens"):
            if key in slots:
                slots[key] = tuple(slots[key])
        try:
            registry[name] = SlotTemplate(Slots(name=name, **slots))
        except LatheError as err:
            raise LatheError(f"{source[name]}: template `{name}`: {err}") from err
    return registry


def list_templates() -> list[str]:
    """Names of the registered templates, sorted."""
    return sorted(_registry())


# LLaMA-Factory's templates for image, video and audio models: those lathe has no media plugin for are refused by
# name, so a config naming one learns why instead of reading "unknown template".
MULTIMODAL_TEMPLATES = frozenset({
    "dots_ocr", "ernie_vl", "glm_ocr", "granite3_vision", "keye_vl", "kimi_vl", "lfm2_vl", "mimo_vl", "minicpm_o",
    "minicpm_v", "minicpm_v_4_6", "moss_vl", "video_llava", "yi_vl", "youtu_vl",
})


def get_template(name: str) -> SlotTemplate:
    """The registered template called `name`; an unknown name raises LatheError with close names."""
    if name in MULTIMODAL_TEMPLATES and name not in _registry():
        raise LatheError(f"Template `{name}` is a multimodal one (images, video or audio) whose family lathe has no "
                         f"media plugin for yet (docs/multimodal.md lists those it has). Use the model's text template, "
                         f"or leave `template` out.")
    return lookup(_registry(), name, "template", hint=f"Templates are defined in {TEMPLATES_FILE}; leave `template` "
                  "out to use the tokenizer's own chat template.")


def resolve_template(
    name: str | None,
    tokenizer: Any,
    *,
    default_system: str | None = None,
    enable_thinking: bool = True,
    tool_format: str | None = None,
    preserve_thinking: bool = False,
    reasoning_effort: str | None = None,
) -> Template:
    """The template a run uses: `name` when given, else the tokenizer's own chat template.

    Options from the data config: `default_system` replaces the template's default system prompt
    (None keeps it); `enable_thinking=False` makes thinking templates (qwen3) write their empty
    think block, as the model's own template does; `tool_format` overrides the template's tool
    format by name (see `tools.list_tool_formats`); `preserve_thinking=True` keeps the thoughts of
    earlier answers where a reasoning template drops them; `reasoning_effort` sets the reasoning level
    of a template whose system text has one (gpt_oss, hy3), and is refused by the others. With the
    defaults a registered template is returned as registered.

    A tokenizer without a chat template falls back to `empty` (text in, answer + eos out) with a
    warning, since a base model has no format to match.
    """
    if tool_format:
        get_tool_format(tool_format)  # an unknown name fails here, whichever template is used
    options = {"default_system": default_system, "enable_thinking": enable_thinking, "tool_format": tool_format,
               "preserve_thinking": preserve_thinking, "reasoning_effort": reasoning_effort}
    if name:
        return _with_options(get_template(name), **options)
    if getattr(tokenizer, "chat_template", None):
        kwargs = {} if enable_thinking else {"enable_thinking": False}
        if reasoning_effort:  # the vendor's own jinja reads it (gpt-oss)
            kwargs["reasoning_effort"] = reasoning_effort
        return TokenizerTemplate(tokenizer, kwargs, default_system=default_system or "", tool_format=tool_format,
                                 preserve_thinking=preserve_thinking)
    logger.warning(
        "Tokenizer `%s` has no chat template and no `template` was given; using the `empty` template "
        "(prompt text, then answer + eos). Set `template` (one of: %s) to train a chat format.",
        getattr(tokenizer, "name_or_path", ""),
        ", ".join(list_templates()),
    )
    return _with_options(get_template("empty"), **options)


def _with_options(template: SlotTemplate, **options: Any) -> SlotTemplate:
    if not options["enable_thinking"] and not template.has_thinking_mode:
        logger.info("Template `%s` has no thinking mode; enable_thinking=False changes nothing.", template.name)
    if options["preserve_thinking"] and not template.reasoning:
        logger.info("Template `%s` keeps the thoughts of earlier answers anyway; preserve_thinking changes nothing.",
                    template.name)
    return template.with_options(**options)
