"""The Train tab: the form (generated from the schema), preview, save/load, start/abort, live view.

The output folder is a menu of this model's past runs under `saves/<model>/<method>/` plus a fresh
`train_<timestamp>` name (or any folder typed in), and the top bar's adapters are picked from the
past runs that hold one (`context.py` keeps that layout); both follow the model and method chosen.

Start validates the form through `build_config` (as `lathe train` does), writes the YAML and
runs `lathe train <yaml>` in a child process; a timer then reads the run's trainer_log.jsonl
for the progress bar and the loss curve, and its console output for the log tail.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gradio as gr

from ..config.load import read_config_file
from ..errors import LatheError
from .checks import check_config
from .context import BoardContext, adapter_runs, error_md, output_choices, split_args
from .form import FormField, parse_extra, raw_to_values, sections, to_yaml, train_form, values_to_raw
from .locales import t
from .monitor import checkpoints, loss_frame, progress_html, read_log
from .runner import CONFIG_NAME, command

# Written to every Board config even at their defaults, so the file reads on its own.
ALWAYS = ("model_name_or_path", "stage", "finetuning_type", "template", "dataset_dir", "dataset", "output_dir")
COLUMNS = 4


def dataset_names(dataset_dir: str) -> list[str]:
    """Names in dataset_dir/dataset_info.json; [] when the folder has none (checked at Start)."""
    from ..data.dataset_info import load_registry

    try:
        return sorted(load_registry(Path(dataset_dir or "data").expanduser()))
    except (LatheError, OSError, ValueError):
        return []


def preview_rows(dataset_dir: str, names: list[str], n: int = 3) -> list[dict[str, Any]]:
    """The first rows of each local dataset, as stored (hub datasets are not fetched for this)."""
    from ..data.dataset_info import get_dataset_attrs
    from ..data.readers import read_rows

    rows: list[dict[str, Any]] = []
    for attr in get_dataset_attrs(names, Path(dataset_dir).expanduser()):
        if attr.load_from != "file":
            rows.append({"dataset": attr.name, "note": f"loaded from {attr.load_from}; not previewed offline"})
            continue
        data = read_rows(attr, Path(dataset_dir).expanduser(), streaming=True)
        for i, row in enumerate(data):
            if i >= n:
                break
            rows.append({"dataset": attr.name, **{k: v for k, v in row.items() if v not in (None, "", [])}})
    return rows


def build_train_tab(ctx: BoardContext) -> None:
    w, lang = ctx.w, ctx.w.lang
    fields = [f for f in train_form() if f.section != "top"]
    by_section: dict[str, list[FormField]] = {s: [f for f in fields if f.section == s] for s in sections()}

    def grid(section_fields: list[FormField], special: dict[str, dict[str, Any]] | None = None) -> None:
        special = special or {}
        for i in range(0, len(section_fields), COLUMNS):
            with gr.Row():
                for f in section_fields[i:i + COLUMNS]:
                    w.field(f, **special.get(f.name, {}))

    basic = {f.name: f for f in by_section["basic"]}
    with gr.Row():
        w.field(basic["stage"])
        dataset_dir = w.field(basic["dataset_dir"])
        dataset = w.field(basic["dataset"], choices=dataset_names(basic["dataset_dir"].default), scale=2)
        preview_btn = w.ui(gr.Button(t("data_preview", lang), elem_id="data-preview"), "data_preview", "value")
    with gr.Row():
        for name in ("cutoff_len", "max_samples", "val_size"):
            w.field(basic[name])
        top = {f.name: f for f in ctx.top}
        out_choices, out_value = output_choices(top["model_name_or_path"].default, top["finetuning_type"].default,
                                                None, ctx.save_root)
        output_dir = w.field(basic["output_dir"], choices=out_choices, value=out_value, scale=2)
        w.field(basic["overwrite_output_dir"])
    rows_view = w.ui(gr.JSON(label=t("preview_rows", lang), visible=False, elem_id="data-rows"), "preview_rows")
    grid(by_section["training"])
    for section in sections()[sections().index("extras"):]:
        with w.ui(gr.Accordion(t(f"sec_{section}", lang), open=False), f"sec_{section}"):
            grid(by_section[section])
            if section == "extras":
                extra = w.ui(gr.Code(label=t("extra_yaml", lang), language="yaml", elem_id="extra-yaml",
                                     interactive=True), "extra_yaml")
    with gr.Row():
        resume = w.ui(gr.Dropdown(choices=[""], value="", label=t("resume", lang), info=t("resume_info", lang),
                                  allow_custom_value=True, elem_id="resume", scale=2), "resume", "info")
        cfg_path = w.ui(gr.Textbox(label=t("cfg_path", lang), value=str(ctx.runner.workdir / "board_config.yaml"),
                                   elem_id="cfg-path", scale=2), "cfg_path")
        save_btn = w.ui(gr.Button(t("save_cfg", lang), elem_id="save-cfg"), "save_cfg", "value")
        load_btn = w.ui(gr.Button(t("load_cfg", lang), elem_id="load-cfg"), "load_cfg", "value")
    with gr.Row():
        preview_cmd = w.ui(gr.Button(t("preview_cmd", lang), elem_id="preview-cmd"), "preview_cmd", "value")
        start = w.ui(gr.Button(t("start", lang), variant="primary", elem_id="train-start"), "start", "value")
        abort = w.ui(gr.Button(t("abort", lang), variant="stop", elem_id="train-abort"), "abort", "value")
    status = gr.Markdown(elem_id="train-status")
    progress = gr.HTML(progress_html([], "idle", t("state_idle", lang), lang), elem_id="train-progress")
    with gr.Row():
        loss_plot = w.ui(gr.LinePlot(loss_frame([]), x="step", y="loss", label=t("loss", lang), elem_id="loss-plot",
                                     height=260), "loss")
        log_box = w.ui(gr.Textbox(label=t("log", lang), lines=12, max_lines=12, autoscroll=True, elem_id="train-log"),
                       "log")
    with gr.Row():
        yaml_view = w.ui(gr.Code(label=t("yaml", lang), language="yaml", elem_id="cmd-yaml"), "yaml")
        cmd_view = w.ui(gr.Code(label=t("command", lang), language="shell", elem_id="cmd-line"), "command")
    run_key = gr.State(None)
    timer = gr.Timer(1.0, active=False)

    form_fields = ctx.top + fields
    form_components = ctx.top_components + [w.components[f.name] for f in fields]
    inputs = [*form_components, extra, resume]

    def collect(args: tuple[Any, ...]) -> dict[str, Any]:
        values, (extra_text, resume_path) = split_args(args, len(form_fields), 2)
        raw = {"do_train": True}
        raw.update(values_to_raw(form_fields, dict(zip([f.name for f in form_fields], values)), extra_text, ALWAYS))
        if resume_path:
            raw["resume_from_checkpoint"] = resume_path
        return raw

    def validated(args) -> dict[str, Any]:
        raw = collect(args)
        check_config(raw, purpose="train")
        return raw

    # Each handler gets the language menu's value last (`code`): its messages speak the page's language.
    def on_preview(*args):
        *args, code = args
        try:
            raw = validated(args)
        except LatheError as e:
            return error_md(code, e), gr.skip(), gr.skip()
        folder = ctx.runner.run_folder(str(Path(raw["output_dir"]).expanduser().resolve()))
        return "", to_yaml(raw), " ".join(command("train", folder / CONFIG_NAME))

    def on_start(*args):
        *args, code = args
        try:
            raw = validated(args)
            run = ctx.runner.start("train", raw, raw["output_dir"])
        except LatheError as e:
            return error_md(code, e), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return (f"{t('msg_started', code)}: `{' '.join(run.cmd)}`", to_yaml(raw), " ".join(run.cmd), run.key,
                gr.Timer(active=True), progress_html([], "running", t("state_running", code), code))

    def on_abort(key, code):
        run = ctx.runner.get(key)
        if run is None or not run.running():
            return t("msg_nothing", code)
        threading.Thread(target=ctx.runner.stop, args=(run,), daemon=True).start()
        return t("msg_aborted", code)

    def on_tick(key, code):
        run = ctx.runner.get(key)
        if run is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip(), gr.skip()
        state = ctx.state_of(run)
        records = read_log(run.key)
        done = state != "running"
        message = gr.skip()
        if done:
            message = f"{t('state_' + state, code)}: `{run.key}`"
        choices = ["", *checkpoints(run.key)]
        return (progress_html(records, state, t(f"state_{state}", code), code), loss_frame(records),
                run.log_tail(), gr.Timer(active=not done), message, gr.update(choices=choices))

    def on_dataset_dir(folder):
        return gr.update(choices=dataset_names(folder))

    def on_data_preview(folder, names, code):
        try:
            if not names:
                raise LatheError("pick at least one dataset to preview.")
            return gr.update(value=preview_rows(folder, names), visible=True), ""
        except LatheError as e:
            return gr.update(visible=False), error_md(code, e)

    def on_save(path, *args):
        *args, code = args
        try:
            raw = collect(args)
            target = Path(path).expanduser()
            if target.is_dir():
                raise LatheError(f"{target} is a folder; give a .yaml file name.")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(to_yaml(raw), encoding="utf-8")
        except (LatheError, OSError) as e:
            return error_md(code, e)
        return f"{t('msg_saved', code)}: `{target}`"

    def on_load(path, code):
        try:
            raw = read_config_file(Path(path).expanduser())
            raw.pop("do_train", None)
            values, extra_text = raw_to_values(form_fields, raw)
            parse_extra(extra_text)
        except LatheError as e:
            return [gr.skip()] * (len(form_components) + 1) + [error_md(code, e)]
        updates = []
        for f in form_fields:
            if f.name == "adapter_name_or_path":
                known = adapter_runs(raw.get("model_name_or_path"), raw.get("finetuning_type"), ctx.save_root)
                updates.append(gr.update(value=values[f.name], choices=sorted({*known, *values[f.name]})))
            elif f.multi:
                updates.append(gr.update(value=values[f.name], choices=dataset_names(raw.get("dataset_dir", "data"))))
            else:
                updates.append(values[f.name])
        return updates + [extra_text, f"{t('msg_loaded_cfg', code)}: `{path}`"]

    lang_pick = ctx.lang_pick
    preview_cmd.click(on_preview, [*inputs, lang_pick], [status, yaml_view, cmd_view])
    start.click(on_start, [*inputs, lang_pick], [status, yaml_view, cmd_view, run_key, timer, progress])
    abort.click(on_abort, [run_key, lang_pick], status)
    timer.tick(on_tick, [run_key, lang_pick], [progress, loss_plot, log_box, timer, status, resume])
    dataset_dir.change(on_dataset_dir, dataset_dir, dataset)
    output_dir.change(lambda out: gr.update(choices=["", *checkpoints(out or "")], value=""), output_dir, resume)
    preview_btn.click(on_data_preview, [dataset_dir, dataset, lang_pick], [rows_view, status])
    save_btn.click(on_save, [cfg_path, *inputs, lang_pick], status)
    load_btn.click(on_load, [cfg_path, lang_pick], [*form_components, extra, status])
    wire_run_folders(ctx, output_dir)


def wire_run_folders(ctx: BoardContext, output_dir: Any) -> None:
    """Keep the output-folder menu and the top bar's adapter menu on the model and method picked.

    A new model or method offers its own past runs and a fresh run name; opening a menu
    re-reads the folders, so a run that has just finished is there without a restart.
    """
    comps = ctx.w.components
    model, method, adapters = comps["model_name_or_path"], comps["finetuning_type"], comps["adapter_name_or_path"]

    def on_pick(model_path, method_name, current_out, current_adapters):
        choices, value = output_choices(model_path, method_name, current_out, ctx.save_root)
        known = adapter_runs(model_path, method_name, ctx.save_root)
        picked = [a for a in (current_adapters or []) if a]
        return (gr.update(choices=choices, value=value),
                gr.update(choices=[*known, *[a for a in picked if a not in known]]))

    def on_open_outputs(model_path, method_name, current_out):
        choices, _ = output_choices(model_path, method_name, current_out, ctx.save_root)
        current = (current_out or "").strip()
        return gr.update(choices=choices if not current or current in choices else [current, *choices])

    def on_open_adapters(model_path, method_name, current_adapters):
        known = adapter_runs(model_path, method_name, ctx.save_root)
        return gr.update(choices=[*known, *[a for a in (current_adapters or []) if a and a not in known]])

    for comp in (model, method):
        comp.change(on_pick, [model, method, output_dir, adapters], [output_dir, adapters], show_progress="hidden")
    output_dir.focus(on_open_outputs, [model, method, output_dir], output_dir, show_progress="hidden")
    adapters.focus(on_open_adapters, [model, method, adapters], adapters, show_progress="hidden")
