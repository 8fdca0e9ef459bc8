"""The Export tab: merge the adapters into the base model and write it to export_dir (`lathe export`)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..errors import LatheError
from .checks import check_config
from .context import BoardContext, split_args
from .form import FormField, group_fields, values_to_raw
from .jobs import named, wire_job
from .locales import t


def build_export_tab(ctx: BoardContext) -> None:
    w, lang = ctx.w, ctx.w.lang
    fields = group_fields("export")
    comps = []
    for i in range(0, len(fields), 3):
        with gr.Row():
            comps += [w.field(f, prefix="export-") for f in fields[i:i + 3]]
    button = w.ui(gr.Button(t("export", lang), variant="primary", elem_id="export-start"), "export", "value")
    n_top = len(ctx.top)

    def make_export(*args):
        top_values, values = split_args(args, n_top, len(fields))
        raw = export_config(ctx.top_raw(top_values), fields, values)
        return "export", raw, raw["export_dir"], ()

    wire_job(ctx, button, [*ctx.top_components, *comps], make_export, None, "export")


def export_config(top: dict[str, Any], fields: list[FormField], values: list[Any]) -> dict[str, Any]:
    """`lathe export`: merge the adapters and write the model to export_dir."""
    raw = dict(top)
    raw.update(values_to_raw(fields, named(fields, values)))
    if not raw.get("export_dir"):
        raise LatheError("`export_dir` is required: the folder the merged model is written to.")
    check_config(raw, purpose="infer")
    return raw
