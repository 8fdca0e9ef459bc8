"""Chat templates: render a conversation into token ids and say which ones are learned.

    tpl = resolve_template(config_template_or_None, tokenizer)
    pairs = tpl.encode(tokenizer, messages, system, tools)   # [(prompt_ids, answer_ids), ...]

Registered templates are data (templates.yaml, rendered by `SlotTemplate`); with no name the
tokenizer's own jinja template is used (`TokenizerTemplate`). See docs/templates.md.
"""

from .base import Rendering, Template, check_messages
from .registry import TEMPLATES_FILE, get_template, list_templates, resolve_template
from .slots import Slots, SlotTemplate
from .tokenizer_template import TokenizerTemplate

__all__ = [
    "Rendering",
    "SlotTemplate",
    "Slots",
    "TEMPLATES_FILE",
    "Template",
    "TokenizerTemplate",
    "check_messages",
    "get_template",
    "list_templates",
    "resolve_template",
]
