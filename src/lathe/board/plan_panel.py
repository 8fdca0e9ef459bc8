"""The Train tab's "Will it fit?" panel: `lathe plan` for the form, and a warning before Start.

The numbers are `lathe plan`'s own (efficiency/plan.py), for the config the form would write:
the meta model is built from config.json alone, so no weight is read. The verdict is about the
form's own method (finetuning_type, with its quantized base and optimizer) at its own batch.
Where the config leaves gradient checkpointing unset, the run turns it on (and tiles the MLP) when
memory needs it, so a run that fits only that way still fits; the plan's table shows the estimate
without it, as `lathe plan` does.

Start asks `guard` first: a form that will not fit is stopped once with what to change (the
largest batch and cutoff_len that fit, lighter methods that fit); pressing Start again with the
same form starts it anyway, since the estimate can be wrong and the user may know better.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import logging
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..errors import LatheError
from .launch import environment
from .locales import t

# What the planner may raise for a form it cannot plan (a hub model not downloaded, data not
# readable here): Start goes on, as the run reports its own errors better than a guess would.
logger = logging.getLogger(__name__)
PLAN_ERRORS = (LatheError, OSError, ValueError, RuntimeError, ImportError)
MAX_SUGGESTED_METHODS = 3


@dataclass(frozen=True)
class PlanReport:
    """`lathe plan` for one form, and whether the form's own run fits the memory."""

    text: str  # the plan's table ("" where not asked for)
    method: str  # the form's method as the plan names it (`qlora`, `galore`), else its finetuning_type
    needed: int | None  # bytes estimated for the form's method and batch (None: not plannable)
    memory: int | None  # bytes available per device: given, else the device's
    fits: bool | None  # None: the method is not plannable, or the memory is unknown
    note: str = ""  # where the numbers come from, and why a verdict is missing
    batch: int = 1  # per_device_train_batch_size
    seq: int = 0  # the sequence length the estimate used (the longest sample, at most cutoff_len)
    max_batch: int | None = None  # the largest per_device_train_batch_size that fits (0: none)
    max_cutoff: int | None = None  # the longest cutoff_len that fits at this batch (0: none)
    lighter: tuple[tuple[str, dict[str, Any], int], ...] = ()  # (plan name, config keys, bytes) of methods that fit


def device_memory() -> tuple[int | None, str]:
    """Bytes one run may use here, and where that number comes from: a GPU's whole memory (the run
    gets the device to itself; a run still going would otherwise count against the next one), else
    the memory this machine has free now (cgroup limits included)."""
    import torch

    from ..model.memory import free_memory

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return int(props.total_memory), f"memory of GPU 0 ({props.name})"
    return free_memory(), "free memory of this machine"


def parse_memory_text(text: str | None) -> int | None:
    """The panel's device-memory box: empty -> None (the device's own), else 24GiB / 80GB / 16000MiB."""
    from ..efficiency.plan import parse_memory

    text = (text or "").strip()
    if not text:
        return None
    try:
        return parse_memory(text)
    except LatheError:
        raise LatheError(f"device memory {text!r}: write it like 24GiB, 80GB or 16000MiB, or leave it empty for "
                         "this machine's memory.") from None


def form_variant(cfg: Any):
    """The plan's variant for the config's method, quantized base and optimizer; None where the plan
    cannot estimate it (a method or optimizer without a memory formula)."""
    from ..efficiency.plan import plannable
    from ..efficiency.variants import VARIANTS, Variant
    from ..registry import OPTIMIZERS

    f = cfg.finetuning
    optimizer = next((name for name in OPTIMIZERS if getattr(f, OPTIMIZERS[name].flag, False)), None)
    bits = cfg.model.quantization_bit
    for v in VARIANTS.values():
        if (v.method, v.quantization_bit, v.optimizer) == (f.finetuning_type, bits, optimizer):
            return v if plannable(v) else None
    if bits not in (None, 4, 8):  # hqq's 1-3 bits: the plan has no formula for them
        return None
    name = "+".join(part for part in (f.finetuning_type, f"{bits}bit" if bits else "", optimizer or "") if part)
    v = Variant(name, "", f.finetuning_type, quantization_bit=bits, optimizer=optimizer)
    return v if plannable(v) else None


def shard_of(cfg: Any) -> str:
    """How the run splits weights and optimizer state across devices, as `lathe plan` reads the config."""
    from ..config.engines import deepspeed_stage, fsdp_requested

    if fsdp_requested(cfg):
        return "fsdp"
    return {2: "zero2", 3: "zero3"}.get(deepspeed_stage(cfg) or 0, "none")


def _installed(v: Any) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in v.requires)


def plan_report(raw: dict[str, Any], memory: int | None = None, *, devices: int | None = None, read_data: bool = True,
                table: bool = True) -> PlanReport:
    """`lathe plan` for the Train tab's raw config, and the verdict for its own method and batch.

    `memory`: bytes per device (None: `device_memory()`). `devices`: the run's processes, one device each
    (None: this machine's GPUs); with the config's deepspeed / fsdp they share weights and states.
    `read_data`: the data's longest sample, read and tokenized as training reads it (and cached for it),
    as `lathe plan` does; False counts every sample as cutoff_len and two sequences per sample (an upper
    bound, read nothing). A config error raises LatheError; a method the plan cannot estimate gives
    fits=None and a note.
    """
    from ..distributed.launch import device_count
    from ..efficiency import plan as planning
    from ..efficiency.variants import variant
    from ..model.memory import checkpointing_choice
    from .checks import check_config

    cfg = check_config(raw, purpose="train")
    notes = []
    source = "given in the panel"
    if memory is None:
        memory, source = device_memory()
    devices, shard = max(device_count() if devices is None else devices, 1), shard_of(cfg)
    if memory is not None:
        notes.append(f"memory: {source}" + (f", {devices} devices ({shard})" if devices > 1 else ""))
    if read_data:
        lengths = planning.data_lengths(cfg)
    else:
        lengths = planning.Lengths(cfg.data.cutoff_len, 2, "every sample counted as cutoff_len, two per sample")
    text = planning.plan(cfg, memory, devices=devices, shard=shard, lengths=lengths) if table else ""
    if lengths.note:
        notes.append(f"sequences: {lengths.note}")
    kwargs = planning.plan_kwargs(cfg, devices, shard, lengths)
    per_device = cfg.training.per_device_train_batch_size
    batch = per_device * lengths.rows
    common = {"text": text, "memory": memory, "batch": per_device, "seq": kwargs["seq"]}
    v = form_variant(cfg)
    if v is None:
        notes.append(f"`lathe plan` has no estimate for finetuning_type {cfg.finetuning.finetuning_type} with this "
                     f"quantization / optimizer; it estimates {', '.join(planning.plannable_names())}.")
        return PlanReport(method=cfg.finetuning.finetuning_type, needed=None, fits=None, note="; ".join(notes),
                          **common)
    shape = planning.planned_shape(cfg)
    needed = planning.estimate(shape, v, batch=batch, **kwargs).total
    relaxed = dict(kwargs)
    if checkpointing_choice(cfg) is None:  # the run checkpoints and tiles as memory needs (as the plan's max cutoff)
        relaxed.update(checkpointing=True, tiled=cfg.model.tiled_mlp is not False)
    if memory is None:
        notes.append("the device's memory is unknown here: type it in the device-memory box.")
        return PlanReport(method=v.name, needed=needed, fits=None, note="; ".join(notes), **common)
    if needed > memory and relaxed != kwargs:
        lowest = planning.estimate(shape, v, batch=batch, **relaxed).total
        if lowest <= memory:
            notes.append("fits with gradient checkpointing, which the run turns on as memory needs it.")
        needed = lowest
    fits = needed <= memory
    if fits:
        return PlanReport(method=v.name, needed=needed, fits=True, note="; ".join(notes), **common)
    no_seq = {k: value for k, value in relaxed.items() if k != "seq"}
    lighter = []
    for name in planning.plannable_names():
        other = variant(name)
        if name == v.name or not _installed(other):
            continue
        total = planning.estimate(shape, other, batch=batch, **relaxed).total
        if total <= memory:
            lighter.append((name, other.overrides, total))
    lighter.sort(key=lambda item: -item[2])  # the one that fits with the most memory used first: the least given up
    return PlanReport(method=v.name, needed=needed, fits=False, note="; ".join(notes),
                      max_batch=planning.largest_batch(shape, v, memory, **relaxed) // lengths.rows,
                      max_cutoff=planning.longest_cutoff(shape, v, memory, batch=batch, **no_seq),
                      lighter=tuple(lighter[:MAX_SUGGESTED_METHODS]), **common)


def _keys(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {str(value).lower() if isinstance(value, bool) else value}"
                     for k, value in overrides.items())


def changes(report: PlanReport) -> list[str]:
    """What to change in the form so that it fits, as config keys (the same words in every language)."""
    from ..model.memory import size

    out = []
    if report.max_batch and report.max_batch < report.batch:
        out.append(f"per_device_train_batch_size: {report.max_batch}")
    if report.max_cutoff and report.max_cutoff < report.seq:
        out.append(f"cutoff_len: {report.max_cutoff}")
    out += [f"{_keys(overrides)} ({size(total)})" for _, overrides, total in report.lighter]
    return out


def _amounts(report: PlanReport) -> str:
    from ..model.memory import size

    return f"{report.method}: {size(report.needed)} > {size(report.memory)}"


def start_warning(raw: dict[str, Any], memory: int | None = None, code: str = "en",
                  devices: int | None = None) -> str | None:
    """A paragraph (Markdown) for Start when the form's run will not fit: needed vs available and what
    to change; None when it fits or the plan cannot tell.

    Quick where there is room: first every sample counted as cutoff_len (reads no data); only a
    form that does not fit that way has its data read for the real longest sample.
    """
    report = plan_report(raw, memory, devices=devices, read_data=False, table=False)
    if report.fits is not False:
        return None
    report = plan_report(raw, memory, devices=devices, read_data=True, table=False)
    if report.fits is not False:
        return None
    todo = changes(report)
    advice = (f"{t('plan_warn_try', code)} " + " · ".join(f"`{c}`" for c in todo) if todo
              else t("plan_warn_none", code))
    return f"**{t('plan_warn', code)}** (`{_amounts(report)}`) {advice}. {t('plan_warn_again', code)}"


def form_key(raw: dict[str, Any], memory_text: str | None = None, devices: int | None = None) -> str:
    """A fingerprint of a form (with the memory typed for it and its processes): the same form pressed again
    has the same key."""
    text = json.dumps([raw, (memory_text or "").strip(), devices], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def guard(raw: dict[str, Any], code: str = "en", memory_text: str | None = None, warned: str | None = None,
          devices: int | None = None) -> tuple[str | None, str | None]:
    """(warning, key to remember) for Start. The first Start of a form that does not fit gets the
    warning and the form's key (keep it in a gr.State); Start again with that same key lets it through.

    A form the plan cannot estimate starts without a warning: the plan is advice, not a gate.
    """
    memory = parse_memory_text(memory_text)
    key = form_key(raw, memory_text, devices)
    if warned == key:
        return None, None
    try:
        warning = start_warning(raw, memory, code, devices)
    except PLAN_ERRORS as e:  # Start goes on; the log says why there was no plan
        logger.warning("no plan before Start (%s: %s); starting without one", type(e).__name__, e)
        return None, None
    return (warning, key) if warning else (None, None)


def verdict_html(report: PlanReport | None, code: str = "en", error: Exception | None = None) -> str:
    """The one-line verdict under the plan; data-fits (yes / no / unknown) is there for scripts and tests."""
    from ..model.memory import size

    fits = "unknown" if report is None or report.fits is None else "yes" if report.fits else "no"
    attrs = f'data-fits="{fits}"'
    if error is not None:
        body = f"<b>{html.escape(t('msg_error', code))}:</b> {html.escape(str(error))}"
        attrs += ' data-error="1"'
    elif fits == "yes":
        body = (f"<b>{html.escape(t('plan_fits', code))}</b> <code>{html.escape(report.method)}: "
                f"{size(report.needed)} / {size(report.memory)}</code>")
    elif fits == "no":
        todo = changes(report)
        advice = (html.escape(t("plan_warn_try", code)) + " " + " · ".join(f"<code>{html.escape(c)}</code>"
                                                                             for c in todo)
                  if todo else html.escape(t("plan_warn_none", code)))
        body = f"<b>{html.escape(t('plan_no_fit', code))}</b> <code>{html.escape(_amounts(report))}</code> {advice}"
    else:
        body = f"<b>{html.escape(t('plan_unknown', code))}</b>"
    if report is not None:
        attrs += (f' data-method="{html.escape(report.method)}" data-needed="{report.needed or ""}"'
                  f' data-memory="{report.memory or ""}"')
        if report.note:
            body += f"<br><small>{html.escape(report.note)}</small>"
    return f'<div class="lathe-plan-verdict" {attrs}>{body}</div>'


@dataclass
class PlanPanel:
    """The panel's components; `warned` is the page's memory of the last form Start was warned about."""

    accordion: Any
    memory: Any  # the device-memory text box (empty: this machine's)
    button: Any
    output: Any
    verdict: Any
    warned: Any  # gr.State: the key of the form last warned about (`guard`'s second value)


def build_plan_panel(ctx: Any, inputs: list[Any],
                     collect: Callable[[tuple[Any, ...]], tuple[dict[str, Any], int, dict[str, str]]]) -> PlanPanel:
    """The "Will it fit?" accordion: device memory, a Plan button, the plan's table and its verdict.

    `inputs` are the Train tab's components and `collect` turns their values into (raw config, processes,
    variables): the launch controls say how many devices the run gets and the hub menu where a hub id comes
    from, so the plan is of exactly what Start would run.
    """
    w, lang = ctx.w, ctx.w.lang
    with w.ui(gr.Accordion(t("plan_title", lang), open=False, elem_id="plan-panel"), "plan_title") as accordion:
        with gr.Row():
            memory = w.ui(gr.Textbox(label=t("plan_memory", lang), info=t("plan_memory_info", lang), value="",
                                     placeholder="24GiB", max_lines=1, elem_id="plan-memory", scale=3),
                          "plan_memory", "info")
            button = w.ui(gr.Button(t("plan_run", lang), elem_id="plan-run", scale=1), "plan_run", "value")
        verdict = gr.HTML(verdict_html(None, lang), elem_id="plan-verdict")
        output = w.ui(gr.Code(label=t("plan_out", lang), language=None, interactive=False, elem_id="plan-out"),
                      "plan_out")
    warned = gr.State(None)

    def on_plan(memory_text, *args):
        *args, code = args
        try:
            raw, devices, env = collect(tuple(args))
            with environment(env):  # a hub id's config.json from the hub the top bar picked
                report = plan_report(raw, parse_memory_text(memory_text), devices=devices)
        except PLAN_ERRORS as e:
            return "", verdict_html(None, code, error=e)
        return report.text, verdict_html(report, code)

    button.click(on_plan, [memory, *inputs, ctx.lang_pick], [output, verdict])
    return PlanPanel(accordion, memory, button, output, verdict, warned)


__all__ = ["PlanPanel", "PlanReport", "build_plan_panel", "changes", "device_memory", "form_key", "form_variant",
           "guard", "parse_memory_text", "plan_report", "start_warning", "verdict_html"]
