"""Gradio widgets for `FormField`s, and the language switch that relabels them.

One function turns a field into a widget by its kind (checkbox, dropdown, text box), so a
new option in the schema appears in the Board without touching the UI code. Every widget
and every translated label is remembered in `Widgets`, whose `relabel(lang)` returns the
updates the language dropdown applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from .form import FormField
from .locales import field_help, field_label, t


@dataclass
class Widgets:
    """The widgets of one Board page: field widgets by name, and what each label says."""

    lang: str = "en"
    fields: dict[str, FormField] = field(default_factory=dict)
    components: dict[str, Any] = field(default_factory=dict)
    labels: list[tuple[Any, str, Any]] = field(default_factory=list)  # (component, kind, key or FormField)

    def field(self, f: FormField, choices: list[str] | None = None, prefix: str = "", **kwargs: Any):
        """The widget for one option (its default as value, its help as info).

        `prefix` tells apart two widgets for one option on different tabs (e.g. cutoff_len).
        """
        label, info = field_label(f.name, self.lang), field_help(f.name, f.help, self.lang)
        value = kwargs.pop("value", f.to_widget(f.default))
        elem_id = f"f-{prefix}{f.name}"
        if f.kind == "bool":
            comp = gr.Checkbox(value=value, label=label, info=info, elem_id=elem_id, **kwargs)
        elif f.multi:
            comp = gr.Dropdown(choices=choices or [], value=value, multiselect=True, allow_custom_value=True,
                               label=label, info=info, elem_id=elem_id, **kwargs)
        elif f.kind in ("choice", "optbool") or choices is not None:
            options = list(choices if choices is not None else f.choices or ())
            if f.optional and "" not in options:
                options = ["", *options]
            if value not in options:
                options.append(value)
            comp = gr.Dropdown(choices=options, value=value, allow_custom_value=choices is not None,
                               label=label, info=info, elem_id=elem_id, **kwargs)
        else:
            comp = gr.Textbox(value=value, label=label, info=info, elem_id=elem_id, max_lines=1, **kwargs)
        self.fields[prefix + f.name] = f
        self.components[prefix + f.name] = comp
        self.labels.append((comp, "field", f))
        return comp

    def ui(self, comp, key: str, kind: str = "label"):
        """Remember a widget whose label (or value, for buttons and markdown) is the string `key`."""
        self.labels.append((comp, kind, key))
        return comp

    def relabel_targets(self) -> list[Any]:
        return [c for c, _, _ in self.labels]

    def relabel(self, lang: str) -> list[Any]:
        """Updates for every remembered widget, in `relabel_targets` order, in `lang`."""
        out = []
        for _comp, kind, key in self.labels:
            if kind == "field":
                out.append(gr.update(label=field_label(key.name, lang), info=field_help(key.name, key.help, lang)))
            elif kind == "value":
                out.append(gr.update(value=t(key, lang)))
            elif kind == "info":
                out.append(gr.update(label=t(key, lang), info=t(f"{key}_info", lang)))
            else:
                out.append(gr.update(label=t(key, lang)))
        return out
