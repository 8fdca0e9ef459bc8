"""An Ollama `Modelfile` written beside an export, with the chat template in Ollama's syntax.

Ollama renders prompts with Go templates, not jinja, so lathe translates its registered
template's slots: `{content}` becomes `{{ .Content }}`, the system slot `{{ .System }}`,
and the stop words become `PARAMETER stop` lines. A tokenizer's own jinja template cannot be
translated faithfully; then the Modelfile carries no TEMPLATE (Ollama reads the GGUF's).
"""

from __future__ import annotations

from ..data.templates import SlotTemplate


def _go(text: str, tokenizer, content: str = "{{ .Content }}") -> str:
    return (
        text.replace("{content}", content)
        .replace("{system}", "{{ $.System }}")
        .replace("{bos_token}", tokenizer.bos_token or "")
        .replace("{eos_token}", tokenizer.eos_token or "")
    )


def ollama_template(template: SlotTemplate, tokenizer) -> str:
    s = template.slots
    parts = [_go(s.prefix, tokenizer)]
    if s.system is not None:
        parts.append("{{ if .System }}" + _go(s.system, tokenizer, "{{ .System }}") + "{{ end }}")
        first_user = _go(s.user, tokenizer)
    else:  # the system prompt goes into the first user turn
        merged = s.system_in_user.replace("{content}", "{{ .Content }}").replace("{system}", "{{ $.System }}")
        first_user = ("{{ if and (eq $i 0) $.System }}" + _go(s.user, tokenizer, merged) + "{{ else }}"
                      + _go(s.user, tokenizer) + "{{ end }}")
    assistant = _go(s.assistant, tokenizer) + _go(s.assistant_suffix, tokenizer)
    parts.append(
        "{{ range $i, $m := .Messages }}"
        '{{ if eq .Role "user" }}' + first_user
        + '{{ else if eq .Role "assistant" }}' + assistant
        + "{{ end }}{{ end }}"
    )
    return "".join(parts)


def modelfile(template, tokenizer, max_length: int | None = None) -> str:
    lines = ["# Ollama Modelfile written by lathe export. Convert the model to GGUF first (llama.cpp), then:",
             "#   ollama create my-model -f Modelfile", "FROM ."]
    if isinstance(template, SlotTemplate):
        lines.append(f'TEMPLATE """{ollama_template(template, tokenizer)}"""')
        if template.slots.default_system:
            lines.append(f'SYSTEM """{template.slots.default_system}"""')
    stops = list(dict.fromkeys([*template.stop_words, *([tokenizer.eos_token] if tokenizer.eos_token else [])]))
    lines += [f'PARAMETER stop "{w}"' for w in stops]
    if max_length:
        lines.append(f"PARAMETER num_ctx {max_length}")
    return "\n".join(lines) + "\n"
