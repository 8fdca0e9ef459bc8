"""A registered template as a Hugging Face jinja chat template, so the trained format travels with the model.

`fix_tokenizer` sets `tokenizer.chat_template` to this, and a saved tokenizer then renders
conversations for any server (vLLM, TGI, `transformers`, lathe with `template` omitted) exactly as
lathe rendered them for training: the system prompt (or the template's default), every turn,
tools, tool calls (`tool_calls` of assistant messages), tool results (`tool` messages, consecutive
ones forming one observation), the thinking options (`enable_thinking` and, for templates that
drop earlier thoughts, `preserve_thinking` may be passed to `apply_chat_template`; a `context`
template drops them in a prompt for generation, `add_generation_prompt`), the empty think block
a template writes before answers without thoughts (`bare_answer_prefix`), and the eos an
efficient_eos template writes after the final answer.

Two properties of lathe's slots show in the result:
- the assistant header is part of the `user` slot, so it is written after every user turn, with
  or without `add_generation_prompt`;
- nothing is written after the final answer (ChatML's trailing "\\n", for instance), matching
  lathe's training text.

The jinja is generated from the slots rather than kept beside them, so the two cannot drift;
`tests/data/test_templates_jinja.py` renders both for every registered template.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import THINK_CLOSE, THINK_OPEN
from .slots import PLACEHOLDER
from .tools import BEFORE_FIRST_USER, IN_FIRST_USER, jinja_str

if TYPE_CHECKING:
    from .slots import SlotTemplate

# slot placeholder -> the jinja variable holding its value
_VARIABLES = {"bos_token": "bos", "eos_token": "eos", "content": "content", "system": "system",
              "reasoning_effort": "reasoning_effort"}


def _segments(slot: str, **rename: str) -> list[tuple[bool, str]]:
    """`(is_variable, text)` pieces of a slot: literal text, or the jinja variable of a placeholder."""
    pieces = PLACEHOLDER.split(slot)  # literal, name, literal, name, ..., literal
    out = []
    for k, piece in enumerate(pieces):
        if k % 2:
            out.append((True, rename.get(piece, _VARIABLES[piece])))
        elif piece:
            out.append((False, piece))
    return out


def _emit(slot: str, **rename: str) -> str:
    """Jinja writing `slot`, its placeholders taken from jinja variables."""
    return "".join(
        "{{- " + (text if is_var else jinja_str(text)) + " }}" for is_var, text in _segments(slot, **rename)
    )


def _expr(slot: str, **rename: str) -> str:
    """A jinja expression with the value of `slot`."""
    parts = [text if is_var else jinja_str(text) for is_var, text in _segments(slot, **rename)]
    return " ~ ".join(parts) if parts else "''"


def _before_bare_answer(empty_thought: str, bare_answer_prefix: str) -> list[str]:
    """Jinja writing what precedes an answer without thoughts (as SlotTemplate._render): the empty
    think block when thinking is off, else the template's bare-answer prefix."""
    write_empty = "{{- " + jinja_str(empty_thought) + " }}"
    write_bare = "{{- " + jinja_str(bare_answer_prefix) + " }}"
    if empty_thought and bare_answer_prefix:
        return ["{%- if thinking %}" + write_bare + "{%- else %}" + write_empty + "{%- endif %}"]
    if empty_thought:
        return ["{%- if not thinking %}" + write_empty + "{%- endif %}"]
    return [write_bare] if bare_answer_prefix else []


def _system_turn(system: str | None, always: bool, thinking_system: str | None) -> list[str]:
    """Jinja writing the system turn as SlotTemplate.system_slot picks it: the thinking slot while
    thinking is on, else `system` when there is a system prompt (or always)."""
    plain = "" if system is None else _emit(system, content="system")
    if plain and not always:
        plain = "{%- if system %}" + plain + "{%- endif %}"
    if thinking_system is None:
        return [plain] if plain else []
    return ["{%- if thinking %}" + _emit(thinking_system, content="system")
            + ("{%- else %}" + plain if plain else "") + "{%- endif %}"]


def slot_template_to_jinja(template: SlotTemplate) -> str:
    """The jinja chat template of a registered template (see the module docstring)."""
    s, fmt = template.slots, template.tool_format
    thinking = template.has_thinking_mode
    lines = [
        f"{{#- lathe template `{s.name}` (tool format `{fmt.name}`), written by lathe: "
        "it renders conversations as lathe trained on them. #}",
        "{%- set bos = bos_token if bos_token is defined and bos_token else '' %}",
        "{%- set eos = eos_token if eos_token is defined and eos_token else '' %}",
    ]
    if thinking:
        default = "true" if template.enable_thinking else "false"
        lines.append(f"{{%- set thinking = enable_thinking if enable_thinking is defined else {default} %}}")
    if s.thoughts_in_history != "keep":
        default = "true" if template.preserve_thinking else "false"
        lines.append(f"{{%- set preserve = preserve_thinking if preserve_thinking is defined else {default} %}}")
    if s.reasoning_effort:  # the run's effort is the default; `reasoning_effort` may be passed when serving
        lines.append("{%- set reasoning_effort = reasoning_effort if reasoning_effort is defined and reasoning_effort "
                     f"else {jinja_str(template.reasoning_effort)} %}}")
    lines += [
        f"{{%- set system = {jinja_str(s.default_system)} %}}",
        "{%- set loop_messages = messages %}",
        "{%- if messages | length > 0 and messages[0].role == 'system' %}",
        "{%- if messages[0].content %}{%- set system = messages[0].content %}{%- endif %}",
        "{%- set loop_messages = messages[1:] %}",
        "{%- endif %}",
    ]
    if s.system_prompt != "{content}":
        lines.append("{%- if system %}{%- set system = " + _expr(s.system_prompt, content="system") + " %}{%- endif %}")
    lines += [
        "{%- if tools %}",
        "{%- set tools_text %}",
        fmt.jinja_tools().rstrip("\n"),
        "{%- endset %}",
    ]
    if fmt.jinja_system_with_tools():
        lines.append(fmt.jinja_system_with_tools().rstrip("\n"))
    if fmt.system_note:
        lines.append(f"{{%- set system = {jinja_str(fmt.system_note)} ~ system %}}")
    lines.append("{%- endif %}")
    if s.prefix_with_tools is not None:
        lines.append("{%- if tools %}" + _emit(s.prefix_with_tools) + "{%- else %}" + _emit(s.prefix) + "{%- endif %}")
    elif s.prefix:
        lines.append(_emit(s.prefix))
    lines += _system_turn(s.system, s.system_always, s.thinking_system)

    empty = jinja_str(s.empty_thought)
    lines += [
        "{%- set ns = namespace(results=[], ids=[]) %}",
        "{%- for message in loop_messages %}",
        "{%- if message.role == 'user' %}",
        "{%- set content = message.content %}",
    ]
    first_turn = []  # what the first user turn gets: tools, the system prompt when there is no system slot
    if fmt.placement == IN_FIRST_USER:
        first_turn.append("{%- if tools %}{%- set content = tools_text ~ content %}{%- endif %}")
    if s.system is None:  # the system prompt joins the first user turn (unless a thinking system slot took it)
        merged = "system and not thinking" if s.thinking_system is not None else "system"
        first_turn.append("{%- if " + merged + " %}{%- set content = " + _expr(s.system_in_user) + " %}{%- endif %}")
    if fmt.placement == BEFORE_FIRST_USER:
        first_turn.append("{%- if tools %}{{- tools_text }}{%- endif %}")
    if first_turn:
        lines += ["{%- if loop.first %}", *first_turn, "{%- endif %}"]
    lines += [
        _emit(s.user),
        "{%- elif message.role == 'tool' %}",
        "{%- if loop.first or loop_messages[loop.index0 - 1].role != 'tool' %}"
        "{%- set ns.results = [] %}{%- set ns.ids = [] %}{%- endif %}",
        "{%- set ns.results = ns.results + [message.content] %}",
        "{%- set ns.ids = ns.ids + [message.tool_call_id if message.tool_call_id is defined else ''] %}",
        "{%- if loop.last or loop_messages[loop.index0 + 1].role != 'tool' %}",
        "{%- set results = ns.results %}{%- set result_ids = ns.ids %}",
        "{%- set content %}",
        fmt.jinja_results().rstrip("\n"),
        "{%- endset %}",
        _emit(s.observation if s.observation is not None else s.user),
        "{%- endif %}",
        "{%- elif message.role == 'assistant' %}",
        "{%- if message.tool_calls is defined and message.tool_calls %}",
        "{%- set content %}",
        fmt.jinja_calls().rstrip("\n"),
        "{%- endset %}",
    ]
    function_suffix = s.assistant_suffix if s.function_suffix is None else s.function_suffix
    own_suffixes = function_suffix != s.assistant_suffix  # written in each branch, not after both
    lines += _before_bare_answer(s.empty_thought, s.bare_answer_prefix)
    lines.append(_emit(s.function if s.function is not None else s.assistant))
    if own_suffixes and function_suffix:
        lines.append("{%- if not loop.last %}" + _emit(function_suffix) + "{%- endif %}")
    lines += [
        "{%- else %}",
        "{%- set content = message.content %}",
    ]
    close = jinja_str(THINK_CLOSE)
    when = "not preserve and not loop.last"  # the thoughts of this answer are dropped
    if s.thoughts_in_history == "context":
        when += " and add_generation_prompt is defined and add_generation_prompt"
    if s.thought is not None:  # as slots.split_thought: the thought written apart, before the answer
        kept = "true" if s.thoughts_in_history == "keep" else f"not ({when})"
        lines += [
            "{%- set thought = '' %}",
            f"{{%- if {close} in content %}}",
            f"{{%- set thought_text = content.split({close})[0].split({jinja_str(THINK_OPEN)})[-1].strip('\\n') %}}",
            f"{{%- set content = content.split({close})[-1].lstrip('\\n') %}}",
            f"{{%- if {kept} %}}{{%- set thought %}}" + _emit(s.thought, content="thought_text")
            + "{%- endset %}{%- endif %}",
            "{%- endif %}",
        ]
    elif s.thoughts_in_history != "keep":  # as slots.without_thought
        dropped = f"content.split({close})[-1]"
        if s.thoughts_in_history == "context":
            dropped += ".lstrip('\\n')"
        lines.append(
            f"{{%- if {when} and {close} in content %}}{{%- set content = {dropped} %}}{{%- endif %}}"
        )
    bare = _before_bare_answer(s.empty_thought, s.bare_answer_prefix)
    if bare:
        no_thought = "not thought and " if s.thought is not None else ""
        lines += [
            f"{{%- if {no_thought}{jinja_str(THINK_OPEN)} not in content and {jinja_str(THINK_CLOSE)} not in content %}}",
            *bare,
            "{%- endif %}",
        ]
    if s.thought is not None:
        lines.append("{{- thought }}")
    lines.append(_emit(s.assistant))
    if s.last_answer_end:
        lines.append("{%- if loop.last %}" + _emit(s.last_answer_end) + "{%- endif %}")
    if own_suffixes and s.assistant_suffix:
        lines.append("{%- if not loop.last %}" + _emit(s.assistant_suffix) + "{%- endif %}")
    lines.append("{%- endif %}")
    if s.efficient_eos:
        lines.append("{%- if loop.last %}{{- eos }}{%- endif %}")
    if s.assistant_suffix and not own_suffixes:
        lines.append("{%- if not loop.last %}" + _emit(s.assistant_suffix) + "{%- endif %}")
    lines += ["{%- endif %}", "{%- endfor %}"]
    if thinking:
        lines.append(
            "{%- if not thinking and loop_messages | length > 0 and loop_messages[-1].role != 'assistant' %}"
            "{{- " + empty + " }}{%- endif %}"
        )
    return "\n".join(lines)
