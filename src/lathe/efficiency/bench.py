"""`lathe bench`: the methods side by side on your model and data (the LlamaFactory paper's Table 4).

    lathe bench config.yaml --methods full,freeze,galore,lora,qlora --steps 20 [--output DIR]

Each method trains for `--steps` steps on the same data with the same seed, in its own process
(`lathe.efficiency.measure`, the `lathe train` path with the method's overrides), so one
method's peak memory never includes another's. The results land in the output folder:
`bench.md` (Markdown table), `bench.json` (every number), `bench.png` (bar charts), and one
sub-folder per method with its run. A method that cannot run here (e.g. QLoRA without
bitsandbytes) gets a row with the reason instead of stopping the bench.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..errors import LatheError
from .variants import VARIANTS, Variant, variant


# What every method's run shares: a fixed number of steps, one log line per step, nothing saved
# but the final model (scored for perplexity afterwards), no plots.
COMMON = {"overwrite_output_dir": True, "save_strategy": "no", "logging_steps": 1, "plot_loss": False,
          "report_to": "none", "disable_tqdm": True, "do_train": True}


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    for name in names:
        variant(name)
    if not names:
        raise LatheError("--methods: name at least one method, e.g. --methods lora,full.")
    return names


def missing_requirement(method: Variant) -> str | None:
    import importlib.util

    for module in method.requires:
        if importlib.util.find_spec(module) is None:
            return f"needs the `{module}` package (not installed)"
    return None


def _fmt(value: object) -> str:
    return f"{value!s}" if value is not None else "-"


def run_method(name: str, config: str | None, overrides: list[str], steps: int, out: Path,
               perplexity: bool = True) -> dict:
    """One method in its own process; returns its measurements, or {"error": reason}."""
    method = VARIANTS[name]
    reason = missing_requirement(method)
    if reason:
        return {"error": reason}
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    result = run_dir / "measure.json"
    result.unlink(missing_ok=True)
    settings = {**COMMON, **method.overrides, "max_steps": steps, "output_dir": str(run_dir / "run")}
    args = [*overrides, *(f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in settings.items())]
    command = [sys.executable, "-m", "lathe.efficiency.measure", *([config] if config else []), *args,
               "--result", str(result), *([] if perplexity else ["--no-perplexity"])]
    with open(run_dir / "stdout.log", "w", encoding="utf-8") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    (run_dir / "stderr.log").write_text(proc.stderr, encoding="utf-8")
    if result.exists():
        record = json.loads(result.read_text(encoding="utf-8"))
        if proc.returncode == 0 or "error" in record:
            return record
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if "Error" in line or "error:" in line), lines[-1] if lines else "")
    return {"error": f"exit {proc.returncode}: {reason.strip()[:300]} (see {run_dir / 'stderr.log'})"}


def planned(config: str | None, overrides: list[str], names: list[str]) -> dict[str, int]:
    """`lathe plan`'s total for each method that has a plan row (the run's batch of its longest samples)."""
    from ..config import load_config
    from .plan import data_lengths, plan_totals, plannable

    cfg = load_config(config, overrides)
    return plan_totals(cfg, [n for n in names if plannable(VARIANTS[n])], data_lengths(cfg))


def _split(r: dict) -> str:
    """A run's host memory at its sampled peak as `anon / file` MiB (measure.ResidentSplit); - where not measured."""
    if "peak_anon" not in r:
        return "-"
    return f"{r['peak_anon'] / 1024**2:,.0f} / {(r['peak_file'] + r['peak_shmem']) / 1024**2:,.0f}"


def table(results: dict[str, dict], plans: dict[str, int], steps: int) -> str:
    MiB = 1024**2
    kind = next((r["memory_kind"] for r in results.values() if "memory_kind" in r), "peak memory")
    lines = [(f"| method | trainable params | peak memory MiB ({kind}) | host RSS anon / file MiB | plan MiB | "
              "effective tokens/s | train loss | perplexity (training samples) | note |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        plan = plans.get(name)
        if "error" in r:
            lines.append(f"| {name} | - | - | - | {_fmt(plan and round(plan / MiB))} | - | - | - | "
                         f"not run: {r['error']} |")
            continue
        ppl = r.get("perplexity")
        lines.append(
            f"| {name} | {r['trainable']:,} | {r['peak_memory'] / MiB:,.0f} | {_split(r)} | "
            f"{_fmt(plan and round(plan / MiB))} | "
            f"{_fmt(r.get('tokens_per_second'))} | {_fmt(r.get('train_loss') and round(r['train_loss'], 4))} | "
            f"{_fmt(ppl and round(ppl, 3))} | {VARIANTS[name].help} |")
    lines.append("")
    lines.append(f"{steps} steps per method, same data and seed, each in its own process. Effective tokens/s: "
                 "non-padding tokens over the training loop's runtime. Perplexity: the training data under the "
                 "trained model, scored after training. Host RSS anon / file: the resident set over the baseline at "
                 "its peak (sampled every 10 ms), split into anonymous pages and file-backed ones (shared memory "
                 "counted with file); file pages, such as a memory-mapped checkpoint's, are reclaimable, so the "
                 "anonymous part is what a memory limit must hold.")
    return "\n".join(lines)


def chart(results: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = {n: r for n, r in results.items() if "error" not in r}
    panels = [("peak memory (MiB)", lambda r: r["peak_memory"] / 1024**2),
              ("effective tokens/s", lambda r: r.get("tokens_per_second") or 0),
              ("perplexity (training samples)", lambda r: r.get("perplexity") or 0)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5))
    for ax, (title, value) in zip(axes, panels):
        names = list(ran)
        ax.bar(names, [value(ran[n]) for n in names], color="tab:blue")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    skipped = [n for n in results if n not in ran]
    if skipped:
        fig.text(0.5, 0.01, "not run here: " + ", ".join(skipped), ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.05 if skipped else 0, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def preflight(cfg) -> None:
    """Tokenizer, template and data as every method will use them, checked (and cached) once up front.

    A wrong template or dataset would otherwise fail in each method's process in turn, after
    its model load; the tokenized data this leaves in the cache is what those processes read.
    """
    from ..data.loader import get_dataset, run_template
    from ..model.load import add_config_tokens, load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    template = run_template(cfg, tokenizer)
    template.fix_tokenizer(tokenizer)
    add_config_tokens(tokenizer, cfg.model)
    get_dataset(cfg, tokenizer, template)


def run_bench(config: str | None, overrides: list[str], names: list[str], steps: int, output: str | None) -> Path:
    """Run every method, then write bench.md, bench.json and bench.png into the output folder."""
    import logging

    from ..config import load_config

    log = logging.getLogger(__name__)
    if steps < 1:
        raise LatheError("--steps must be at least 1.")
    cfg = load_config(config, overrides)  # a bad config fails here, once, not once per method
    preflight(cfg)
    out = Path(output or Path(cfg.training.output_dir) / "bench")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for name in names:
        log.info("bench: %s (%d steps)...", name, steps)
        results[name] = run_method(name, config, overrides, steps, out)
        r = results[name]
        log.info("bench: %s: %s", name, r["error"] if "error" in r else
                 f"peak {r['peak_memory'] / 1024**2:.0f} MiB, {r.get('tokens_per_second')} tokens/s")
    if all("error" in r for r in results.values()):
        reasons = "; ".join(f"{name}: {r['error']}" for name, r in results.items())
        raise LatheError(f"lathe bench: no method ran ({reasons}).")
    try:
        plans = planned(config, overrides, names)
    except LatheError as e:  # the measurements still count without the estimates beside them
        log.warning("bench: no plan column: %s", e)
        plans = {}
    (out / "bench.md").write_text(table(results, plans, steps) + "\n", encoding="utf-8")
    (out / "bench.json").write_text(json.dumps({"steps": steps, "results": results, "plan": plans}, indent=2),
                                    encoding="utf-8")
    chart(results, out / "bench.png")
    return out
