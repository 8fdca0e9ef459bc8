"""Chat templates: render a conversation into token ids and say which ones are learned.

    tpl = resolve_template(config_template_or_None, tokenizer, default_system=..., enable_thinking=..., tool_format=...)
    pairs = tpl.encode(tokenizer, messages, system, tools)   # [(prompt_ids, answer_ids), ...]
    tpl.parse_tool_calls(generated_text)                     # [ToolCall(name, arguments), ...] or None

Registered templates are data (templates.yaml, rendered by `SlotTemplate`); with no name the
tokenizer's own jinja template is used (`TokenizerTemplate`). Tool calling is spelled by a named
tool format (tools.py). See docs/templates.md.
"""

from .base import Rendering, Template, check_messages
from .named import TEMPLATES_FILE, get_template, list_templates, resolve_template
from .slots import Slots, SlotTemplate
from .tokenizer_template import TokenizerTemplate
from .tools import ToolCall, ToolFormat, get_tool_format, list_tool_formats, to_openai_messages

__all__ = [
    "Rendering",
    "SlotTemplate",
    "Slots",
    "TEMPLATES_FILE",
    "Template",
    "TokenizerTemplate",
    "ToolCall",
    "ToolFormat",
    "check_messages",
    "get_template",
    "get_tool_format",
    "list_templates",
    "list_tool_formats",
    "resolve_template",
    "to_openai_messages",
]
