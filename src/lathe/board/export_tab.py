"""The Export tab: merge the adapters into the base model and write it to export_dir (`lathe export`)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..errors import LatheError
from .checks import check_config
from .context import BoardContext, split_args
from .form import FormField, group_fields, parse_extra, values_to_raw
from .jobs import named, wire_job
from .locales import t


def build_export_tab(ctx: BoardContext) -> None:
    w, lang = ctx.w, ctx.w.lang
    fields = group_fields("export")
    comps = []
    for i in range(0, len(fields), 3):
        with gr.Row():
            comps += [w.field(f, prefix="export-") for f in fields[i:i + 3]]
    extra = w.ui(gr.Code(label=t("export_extra", lang), language="yaml", elem_id="export-extra", interactive=True),
                 "export_extra")
    button = w.ui(gr.Button(t("export", lang), variant="primary", elem_id="export-start"), "export", "value")
    n_top = len(ctx.top)

    def make_export(*args):
        top_values, values, (extra_text,) = split_args(args, n_top, len(fields), 1)
        raw = export_config(ctx.top_raw(top_values), fields, values, extra_text, [f.name for f in ctx.top])
        return "export", raw, raw["export_dir"], ()

    wire_job(ctx, button, [*ctx.top_components, *comps, extra], make_export, None, "export")


def export_config(top: dict[str, Any], fields: list[FormField], values: list[Any], extra_text: str = "",
                  top_names: list[str] = ()) -> dict[str, Any]:
    """`lathe export`: merge the adapters and write the model to export_dir; `extra_text` holds any other key
    `lathe export` takes (LLaMA Board's extra arguments), refused where the top bar or the tab has its field."""
    raw = dict(top)
    both = sorted(set(parse_extra(extra_text)) & set(top_names))
    if both:
        raise LatheError(f"extra options: {', '.join(both)} has its own field in the top bar; set it there.")
    raw.update(values_to_raw(fields, named(fields, values), extra_text))
    if not raw.get("export_dir"):
        raise LatheError("`export_dir` is required: the folder the merged model is written to.")
    check_config(raw, purpose="infer")
    return raw
