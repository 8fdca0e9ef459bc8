"""The Train tab: the form (generated from the schema), preview, save/load, start/abort, live view.

The output folder is a menu of this model's past runs under `saves/<model>/<method>/` plus a fresh
`train_<timestamp>` name (or any folder typed in), and the top bar's adapters are picked from the
past runs that hold one (`context.py` keeps that layout); both follow the model and method chosen.

Start validates the form through `build_config` (as `lathe train` does), writes the YAML and
runs `lathe train <yaml>` in a child process, with the variables the launch controls and the hub
menu set (launch.py); a form the plan says will not fit is started only on a second press
(plan_panel.py). A timer then reads the run's trainer_log.jsonl for the progress bar and the loss
curve, its console output for the log tail, and its memory, tokens/s and GRPO samples (watch.py);
the same timer follows a run started from a shell in the output folder picked. A stage's own
options and the multimodal ones sit in panels shown while that stage or such a model is picked.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from ..config.load import read_config_file
from ..distributed.launch import device_count
from ..errors import LatheError
from .checks import check_config
from .context import BoardContext, adapter_runs, error_md, output_choices, split_args
from .data_preview import build_data_preview
from .form import (BOARD_PRESETS, FormField, parse_extra, raw_to_values, sections, stage_sections, stage_shows,
                   to_yaml, train_form, values_to_raw)
from .launch import DS_STAGES, Launch, check_hub, check_launch, devices_text, environment, hub_env
from .locales import t
from .monitor import checkpoints, loss_frame, progress_html, read_log
from .plan_panel import build_plan_panel, guard
from .runner import command, shell_line
from .watch import build_watch, folder_is_live

# Written to every Board config even at their defaults, so the file reads on its own.
ALWAYS = ("model_name_or_path", "stage", "finetuning_type", "template", "dataset_dir", "dataset", "output_dir")
COLUMNS = 4
FOLLOW_SECONDS = 5.0  # how often the tab looks for a run started elsewhere in the output folder picked


def dataset_names(dataset_dir: str) -> list[str]:
    """Names in dataset_dir/dataset_info.json; [] when the folder has none (checked at Start)."""
    from ..data.dataset_info import load_registry

    try:
        return sorted(load_registry(Path(dataset_dir or "data").expanduser()))
    except (LatheError, OSError, ValueError):
        return []


def saved_configs(workdir: Path) -> list[str]:
    """The config files saved in the Board's work folder (Save config writes there by default), newest first:
    the Config file menu, as LLaMA Board lists its saved arguments."""
    found = [p for pattern in ("*.yaml", "*.yml", "*.json") for p in Path(workdir).glob(pattern)
             if p.name != "user_config.yaml"]
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def past_model_runs(model: str | None, current: str | None, root: str) -> list[str]:
    """The reward model menu: this model's past runs of any method that hold a model or an adapter (a `stage: rm`
    run's folder is what `reward_model` takes), plus what is typed now."""
    from .context import ADAPTER_FILE, past_runs, save_dir

    methods = save_dir(model, None, root).parent
    runs = []
    if methods.is_dir():
        for method in sorted(p.name for p in methods.iterdir() if p.is_dir()):
            runs += [r for r in past_runs(model, method, root)
                     if (Path(r) / ADAPTER_FILE).is_file() or (Path(r) / "config.json").is_file()]
    current = (current or "").strip()
    return ([current] if current and current not in runs else []) + runs


def reward_names() -> list[str]:
    """The built-in reward functions the GRPO panel's menu offers (a `file.py:function` of one's own is typed)."""
    from ..train.reward_funcs import BUILTIN_REWARDS

    return list(BUILTIN_REWARDS)


def preset(f: FormField) -> dict[str, Any]:
    """The widget's starting value where the Board presets one (form.BOARD_PRESETS), else nothing."""
    return {"value": f.to_widget(BOARD_PRESETS[f.name])} if f.name in BOARD_PRESETS else {}


def build_train_tab(ctx: BoardContext) -> None:
    w, lang = ctx.w, ctx.w.lang
    fields = [f for f in train_form() if f.section != "top"]
    by_section: dict[str, list[FormField]] = {s: [f for f in fields if f.section == s] for s in sections()}

    def grid(section_fields: list[FormField], special: dict[str, dict[str, Any]] | None = None) -> None:
        special = special or {}
        for i in range(0, len(section_fields), COLUMNS):
            with gr.Row():
                for f in section_fields[i:i + COLUMNS]:
                    w.field(f, **{**preset(f), **special.get(f.name, {})})

    basic = {f.name: f for f in by_section["basic"]}
    with gr.Row():
        w.field(basic["stage"])
        dataset_dir = w.field(basic["dataset_dir"])
        dataset = w.field(basic["dataset"], choices=dataset_names(basic["dataset_dir"].default), scale=2)
        preview_btn = w.ui(gr.Button(t("data_preview", lang), elem_id="data-preview"), "data_preview", "value")
    with gr.Row():
        for name in ("cutoff_len", "max_samples", "val_size"):
            w.field(basic[name], **preset(basic[name]))
        top = {f.name: f for f in ctx.top}
        out_choices, out_value = output_choices(top["model_name_or_path"].default, top["finetuning_type"].default,
                                                None, ctx.save_root)
        output_dir = w.field(basic["output_dir"], choices=out_choices, value=out_value, scale=2)
        w.field(basic["overwrite_output_dir"])
    data_view = build_data_preview(ctx)
    grid(by_section["training"])
    panels: dict[str, Any] = {}
    for section in sections()[sections().index("extras"):]:
        shown = section not in stage_sections() or stage_shows(section, basic["stage"].default, by_section[section])
        with w.ui(gr.Accordion(t(f"sec_{section}", lang), open=False, visible=shown, elem_id=f"sec-{section}"),
                  f"sec_{section}") as panel:
            grid(by_section[section], {"reward_funcs": {"choices": reward_names()}, "reward_model": {"choices": []}})
            if section == "extras":
                extra = w.ui(gr.Code(label=t("extra_yaml", lang), language="yaml", elem_id="extra-yaml",
                                     interactive=True), "extra_yaml")
        panels[section] = panel
    gpus = device_count()
    with gr.Row():
        w.ui(gr.Textbox(value=devices_text(gpus), label=t("devices", lang), interactive=False, elem_id="devices"),
             "devices")
        processes = w.ui(gr.Textbox(value=str(max(gpus, 1)), label=t("processes", lang), info=t("processes_info", lang),
                                    elem_id="processes", max_lines=1), "processes", "info")
        ds_stage = w.ui(gr.Dropdown(choices=list(DS_STAGES), value="none", label=t("ds_stage", lang),
                                    info=t("ds_stage_info", lang), elem_id="ds-stage"), "ds_stage", "info")
        ds_offload = w.ui(gr.Checkbox(value=False, label=t("ds_offload", lang), info=t("ds_offload_info", lang),
                                      elem_id="ds-offload"), "ds_offload", "info")
        use_fsdp = w.ui(gr.Checkbox(value=False, label=t("use_fsdp", lang), info=t("use_fsdp_info", lang),
                                    visible=gpus > 0, elem_id="use-fsdp"), "use_fsdp", "info")
    launch_controls = [processes, ds_stage, ds_offload, use_fsdp]
    with gr.Row():
        resume = w.ui(gr.Dropdown(choices=[""], value="", label=t("resume", lang), info=t("resume_info", lang),
                                  allow_custom_value=True, elem_id="resume", scale=2), "resume", "info")
        cfg_path = w.ui(gr.Dropdown(choices=saved_configs(ctx.runner.workdir),
                                    value=str(ctx.runner.workdir / "board_config.yaml"), allow_custom_value=True,
                                    label=t("cfg_path", lang), elem_id="cfg-path", scale=2), "cfg_path")
        save_btn = w.ui(gr.Button(t("save_cfg", lang), elem_id="save-cfg"), "save_cfg", "value")
        load_btn = w.ui(gr.Button(t("load_cfg", lang), elem_id="load-cfg"), "load_cfg", "value")
    form_fields = ctx.top + fields
    form_components = ctx.top_components + [w.components[f.name] for f in fields]
    inputs = [*form_components, extra, resume]
    run_inputs = [*inputs, *launch_controls, ctx.hub]  # what a run needs beyond its config: how it is launched

    def collect(args: tuple[Any, ...]) -> dict[str, Any]:
        values, (extra_text, resume_path) = split_args(args, len(form_fields), 2)
        raw = {"do_train": True}
        raw.update(values_to_raw(form_fields, dict(zip([f.name for f in form_fields], values)), extra_text, ALWAYS))
        if resume_path:
            raw["resume_from_checkpoint"] = resume_path
        return raw

    def launched(args) -> tuple[dict[str, Any], dict[str, str], Launch]:
        """The validated config with the launch's keys (deepspeed / fsdp), the variables the run gets, the launch."""
        *args, n_proc, stage, offload, fsdp, hub_name = args
        raw = collect(tuple(args))
        check_hub(raw.get("model_name_or_path"), hub_name)
        launch = check_launch(n_proc, stage, offload, fsdp, gpus)
        keys = launch.config(ctx.runner.workdir)
        both = sorted(set(keys) & set(raw))
        if both:
            raise LatheError(f"extra options: {', '.join(both)} is set by the launch controls (processes, DeepSpeed "
                             "stage, FSDP); set it there.")
        raw.update(keys)
        check_config(raw, purpose="train")
        return raw, {**launch.env(), **hub_env(hub_name)}, launch

    def planned(args) -> tuple[dict[str, Any], int, dict[str, str]]:
        """What Start would run, for the plan panel: the config with its launch keys, its processes, its hub."""
        raw, _, launch = launched(args)
        return raw, launch.processes, hub_env(args[-1])

    def previewed(args) -> tuple[dict[str, Any], dict[str, str]]:
        """The form's config for the data preview, and the hub its tokenizer comes from."""
        return launched(args)[0], hub_env(args[-1])

    plan_panel = build_plan_panel(ctx, run_inputs, planned)
    with gr.Row():
        preview_cmd = w.ui(gr.Button(t("preview_cmd", lang), elem_id="preview-cmd"), "preview_cmd", "value")
        start = w.ui(gr.Button(t("start", lang), variant="primary", elem_id="train-start"), "start", "value")
        abort = w.ui(gr.Button(t("abort", lang), variant="stop", elem_id="train-abort"), "abort", "value")
    status = gr.Markdown(elem_id="train-status")
    progress = gr.HTML(progress_html([], "idle", t("state_idle", lang), lang), elem_id="train-progress")
    watch = build_watch(ctx)  # memory gauge, tokens/s, and a GRPO run's rewards and samples
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
    follow = gr.Timer(FOLLOW_SECONDS)

    # Each handler gets the language menu's value last (`code`): its messages speak the page's language.
    def on_preview(*args):
        *args, code = args
        try:
            raw, env, _ = launched(args)
        except LatheError as e:
            return error_md(code, e), gr.skip(), gr.skip()
        return "", to_yaml(raw), shell_line(command("train", ctx.runner.config_path(raw["output_dir"])), env)

    def on_start(*args):
        *args, memory_text, warned, code = args
        try:
            raw, env, launch = launched(args)
            with environment(hub_env(args[-1])):
                warning, warned = guard(raw, code, memory_text, warned, launch.processes)
            if warning:  # it will not fit: said once; Start again with the same form starts it anyway
                return warning, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), warned
            run = ctx.runner.start("train", raw, raw["output_dir"], env=env)
        except LatheError as e:
            return error_md(code, e), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), None
        return (f"{t('msg_started', code)}: `{run.line}`", to_yaml(raw), run.line, run.key,
                gr.Timer(active=True), progress_html([], "running", t("state_running", code), code), None)

    def on_abort(key, code):
        run = ctx.runner.get(key)
        if run is None or not run.running():
            return t("msg_nothing", code)
        threading.Thread(target=ctx.runner.stop, args=(run,), daemon=True).start()
        return t("msg_aborted", code)

    def shown_run(key, folder):
        """The run the live view shows: this page's while it goes (or while its folder is the one picked),
        else this Board's run in the folder picked; None leaves the folder to be read as a shell run's."""
        run = ctx.runner.get(key)
        if run is not None and (run.running() or run.key == folder):
            return run
        return ctx.runner.get(folder)

    def on_tick(key, out, form_stage, code):
        folder = str(Path(out).expanduser().resolve()) if out else None
        run = shown_run(key, folder)
        if run is None:  # a run from a shell (or another Board) writing the folder picked: the same log, read
            live = folder_is_live(folder)
            records = read_log(folder) if folder else []
            state = "running" if live else ("finished" if records and float(records[-1].get("percentage", 0)) >= 100
                                            else "idle")
            return (progress_html(records, state, t(f"state_{state}", code), code), loss_frame(records), gr.skip(),
                    gr.Timer(active=live), gr.skip(), gr.skip(),
                    *watch.update(None, folder, form_stage, code, records=records))
        state = ctx.state_of(run)
        records = read_log(run.key)
        done = state != "running"
        message = gr.skip()
        if done:
            message = f"{t('state_' + state, code)}: `{run.key}`"
        choices = ["", *checkpoints(run.key)]
        return (progress_html(records, state, t(f"state_{state}", code), code), loss_frame(records),
                run.log_tail(), gr.Timer(active=not done), message, gr.update(choices=choices),
                *watch.update(run, folder, form_stage, code, records=records))

    def on_follow(out, key):
        """Every few seconds: wake the live view when a run started elsewhere writes the folder picked."""
        folder = str(Path(out).expanduser().resolve()) if out else None
        if shown_run(key, folder) is None and folder_is_live(folder):
            return gr.Timer(active=True)
        return gr.skip()

    def on_dataset_dir(folder):
        return gr.update(choices=dataset_names(folder))

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

    def form_updates(raw: dict[str, Any], code: str, message: str) -> list[Any]:
        """Updates that put a config into the form (and the rest into the extra-options box)."""
        try:
            raw = {k: v for k, v in raw.items() if k != "do_train"}
            values, extra_text = raw_to_values(form_fields, raw)
            parse_extra(extra_text)
        except LatheError as e:
            return [gr.skip()] * (len(form_components) + 1) + [error_md(code, e)]
        updates = []
        for f in form_fields:
            if f.name == "adapter_name_or_path":
                known = adapter_runs(raw.get("model_name_or_path"), raw.get("finetuning_type"), ctx.save_root)
                updates.append(gr.update(value=values[f.name], choices=sorted({*known, *values[f.name]})))
            elif f.name == "reward_funcs":
                updates.append(gr.update(value=values[f.name], choices=sorted({*reward_names(), *values[f.name]})))
            elif f.multi:
                updates.append(gr.update(value=values[f.name], choices=dataset_names(raw.get("dataset_dir", "data"))))
            else:
                updates.append(values[f.name])
        return updates + [extra_text, message]

    def on_load(path, code):
        try:
            raw = read_config_file(Path(path).expanduser())
        except LatheError as e:
            return [gr.skip()] * (len(form_components) + 1) + [error_md(code, e)]
        return form_updates(raw, code, f"{t('msg_loaded_cfg', code)}: `{path}`")

    def on_pick_run(folder, code):
        """A past run picked in the output-folder menu brings its settings back into the form, as in LLaMA Board."""
        raw, source = run_settings(ctx, folder)
        if raw is None:
            return [gr.skip()] * (len(form_components) + 2)
        return form_updates({**raw, "output_dir": folder}, code, f"{t('msg_loaded_cfg', code)}: `{source}`")

    lang_pick = ctx.lang_pick
    preview_cmd.click(on_preview, [*run_inputs, lang_pick], [status, yaml_view, cmd_view])
    start.click(on_start, [*run_inputs, plan_panel.memory, plan_panel.warned, lang_pick],
                [status, yaml_view, cmd_view, run_key, timer, progress, plan_panel.warned])
    abort.click(on_abort, [run_key, lang_pick], status)
    tick_inputs = [run_key, output_dir, w.components["stage"], lang_pick]
    tick_outputs = [progress, loss_plot, log_box, timer, status, resume, *watch.outputs]
    timer.tick(on_tick, tick_inputs, tick_outputs)
    # The bar and the gauge are drawn text, not labels: a new language redraws them (the timer only runs with a run).
    lang_pick.change(on_tick, tick_inputs, tick_outputs, show_progress="hidden")
    follow.tick(on_follow, [output_dir, run_key], timer, show_progress="hidden")
    dataset_dir.change(on_dataset_dir, dataset_dir, dataset)
    output_dir.change(lambda out: gr.update(choices=["", *checkpoints(out or "")], value=""), output_dir, resume)
    data_view.wire(preview_btn, run_inputs, previewed, status)
    save_btn.click(on_save, [cfg_path, *inputs, lang_pick], status)
    load_btn.click(on_load, [cfg_path, lang_pick], [*form_components, extra, status])
    output_dir.select(on_pick_run, [output_dir, lang_pick], [*form_components, extra, status])
    cfg_path.focus(lambda: gr.update(choices=saved_configs(ctx.runner.workdir)), None, cfg_path, show_progress="hidden")
    reward_model = w.components["reward_model"]
    reward_model.focus(lambda model, current: gr.update(choices=past_model_runs(model, current, ctx.save_root)),
                       [w.components["model_name_or_path"], reward_model], reward_model, show_progress="hidden")
    wire_run_folders(ctx, output_dir)
    wire_panels(ctx, panels, by_section)
    ds_stage.change(lambda stage: gr.update(value=False) if stage in ("none", "0") else gr.skip(), ds_stage,
                    ds_offload, show_progress="hidden")


def run_settings(ctx: BoardContext, folder: str | None) -> tuple[dict[str, Any] | None, str]:
    """A past run's settings and where they were read: the config this Board wrote for it, else the resolved
    `lathe_config.yaml` every `lathe train` leaves (a shell run's) without the keys at their defaults, so the
    extra-options box holds only what the run changed. (None, "") for a folder that holds neither."""
    from ..config.options import GROUPS
    from ..train.base import CONFIG_FILE

    if not folder or not str(folder).strip():
        return None, ""
    for path, resolved in ((ctx.runner.config_path(folder), False), (Path(folder).expanduser() / CONFIG_FILE, True)):
        if not path.is_file():
            continue
        try:
            raw = read_config_file(path)
        except LatheError:
            continue
        if resolved:
            defaults = {f.name: f.default for group in GROUPS.values() for f in dataclasses.fields(group)
                        if f.default is not dataclasses.MISSING}
            raw = {k: v for k, v in raw.items() if k not in defaults or getattr(defaults[k], "value", defaults[k]) != v}
        return raw, str(path)
    return None, ""


def wire_panels(ctx: BoardContext, panels: dict[str, Any], by_section: dict[str, list[FormField]]) -> None:
    """Show a stage's own panel (GRPO's rewards and sampling, SFT's losses) while that stage is picked, and the
    multimodal panel while the model takes media (or may: a hub id the catalog lacks)."""
    comps = ctx.w.components
    stage_panels = [s for s in stage_sections() if s in panels]

    def on_stage(stage):
        return [gr.update(visible=stage_shows(s, stage, by_section[s])) for s in stage_panels]

    def on_model(model_path):
        return gr.update(visible=takes_media(model_path))

    comps["stage"].change(on_stage, comps["stage"], [panels[s] for s in stage_panels], show_progress="hidden")
    comps["model_name_or_path"].change(on_model, comps["model_name_or_path"], panels["multimodal"],
                                       show_progress="hidden")


def takes_media(model: str | None) -> bool:
    """Whether the model takes images, video or audio: its folder's config.json, else the catalog's word for a
    hub id; True when neither can tell (a hub id the catalog lacks), so the options are never out of reach."""
    import json
    from types import SimpleNamespace

    from ..model.catalog import for_model_id
    from ..model.multimodal import MEDIA_CONFIGS, is_multimodal

    path = Path(str(model or "").strip()).expanduser()
    if not str(model or "").strip():
        return False
    config = path / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return True
        if not isinstance(data, dict):
            return True
        return is_multimodal(SimpleNamespace(**{k: data.get(k) for k in (*MEDIA_CONFIGS, "model_type")}))
    if path.is_dir():
        return False
    entry = for_model_id(str(model))
    return True if entry is None else entry.multimodal


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
