"""The smallest memory limit a short training run survives, per method, against its peak RSS and `lathe plan` (issue 20).

    .venv/bin/python benchmarks/memory_limit.py [--size tinyllama|small] [--methods lora,qlora,full,freeze]
        [--steps 2] [--resolution 64MiB] [--ceiling 20GiB] [key=value ...]

Peak RSS overstates what a run needs under a limit: file-backed pages (the memory-mapped
checkpoint, shared libraries) are reclaimable, and a cgroup limit makes the kernel drop them
rather than kill the run. So each method's run is repeated inside a cgroup v1 memory cgroup
(memory.limit_in_bytes, and memory.memsw.limit_in_bytes where present, so it cannot swap
instead), with the page cache dropped before each run, and the limit is bisected to
`--resolution` between a limit the run fails under (OOM-killed, exit -9, or any non-zero exit,
or slower than `--timeout-factor` x the unconstrained run: thrashing) and one it completes under.
The bisection starts from what the unconstrained run measured: its peak RSS (should pass) and
its anonymous peak (should fail: anonymous pages have nowhere to go without swap); a guess
that turns out wrong is widened until it holds.

Each run is `lathe bench`'s worker (`python -m lathe.efficiency.measure ... --no-perplexity`,
the `lathe train` path); its record gives the peak RSS over the baseline and its split into
anonymous and file-backed pages (lathe.efficiency.measure.ResidentSplit). Beside them:
`lathe plan`'s estimate for the same run (which, like the worker's peak, leaves out the
process's baseline: Python, torch and the libraries, ~0.5 GiB), and plan / limit; and the plan's
`limit` (on a CPU: the total of a run short of memory less the frozen weights that stay
file-backed, plus one layer's file-backed weights as the step's working set; without the
baseline), set against the measured limit as (baseline anon + plan limit) / limit: a limit holds
the baseline's anonymous pages (~370 MiB here), while its ~130 MiB of library code is file-backed
and reclaimable like the weights (small LoRA completes under 480 MiB, below its 502 MiB baseline).

Models: `--size tinyllama`, a random-init Llama of TinyLlama-1.1B's shape (hidden 2048, 22
layers, 32 heads, 4 KV heads, MLP 5632, vocabulary 32000; 4.4 GB of fp32 safetensors built once
under benchmarks/work/tinyllama-random); `--size small`, ~105M parameters (hidden 768, 12
layers, the demo vocabulary), a quick check; `--size medium`, ~0.5B (hidden 1536, 16 layers,
12 heads, 4 KV heads, MLP 4096, vocabulary 32000; 2 GB built once under
benchmarks/work/medium-random). Data: the demo alpaca set (lathe_identity, short samples),
chatml, cutoff_len 256, batch 2; key=value arguments override any of it.
Needs root and the cgroup v1 memory controller (/sys/fs/cgroup/memory). Drops the whole
machine's page cache before each run. Results: benchmarks/results/memory_limit.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

MiB = 1024**2
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
SIZES = {
    "tinyllama": {"hidden_size": 2048, "num_layers": 22, "num_heads": 32, "num_kv_heads": 4,
                  "intermediate_size": 5632, "vocab_size": 32000},
    "small": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "num_kv_heads": 4, "intermediate_size": 3072},
    "medium": {"hidden_size": 1536, "num_layers": 16, "num_heads": 12, "num_kv_heads": 4, "intermediate_size": 4096,
               "vocab_size": 32000},
}
DATA = {"stage": "sft", "dataset": "lathe_identity", "dataset_dir": str(ROOT / "data"), "template": "chatml",
        "cutoff_len": 256, "per_device_train_batch_size": 2, "learning_rate": 1e-4}


def parse_size(text: str) -> int:
    from lathe.efficiency.plan import parse_memory

    return parse_memory(text)


def meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def drop_page_cache() -> None:
    """Write dirty pages out, then drop the clean page cache, dentries and inodes: each run reads from disk."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _read_int(path: Path, default: int = 0) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _oom_kills(group: Path) -> int:
    """`oom_kill N` of memory.oom_control (kernel >= 4.13): processes the cgroup's OOM killer ended."""
    try:
        for line in (group / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_limited(command: list[str], limit: int, log: Path, timeout: float) -> dict:
    """Run `command` in a fresh memory cgroup capped at `limit` bytes (memory + swap); what it did and cost."""
    group = CGROUP_ROOT / f"lathe-memlimit-{os.getpid()}"
    if group.exists():
        group.rmdir()
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        if (group / "memory.memsw.limit_in_bytes").exists():  # without it, a machine with swap would swap
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit))
        # The shell joins the cgroup, then becomes the worker: every page the worker touches is charged there.
        wrapped = ["sh", "-c", f'echo $$ > {group / "cgroup.procs"} && exec "$@"', "sh", *command]
        drop_page_cache()
        start = time.perf_counter()
        with open(log, "w", encoding="utf-8") as out:
            proc = subprocess.Popen(wrapped, stdout=out, stderr=subprocess.STDOUT)
            try:
                code = proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
                timed_out = True
        outcome = {"limit": limit, "returncode": code, "seconds": round(time.perf_counter() - start, 1),
                   "oom_kills": _oom_kills(group), "failcnt": _read_int(group / "memory.failcnt"),
                   "max_usage": _read_int(group / "memory.max_usage_in_bytes")}
    finally:
        for _ in range(50):  # a killed task leaves the cgroup a moment after it is reaped
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    reason = ("timed out (thrashing?)" if timed_out else "OOM-killed" if outcome["oom_kills"] or code == -9
              else f"exit {code}" if code else None)
    return {**outcome, "passed": reason is None, "reason": reason}


class Method:
    """One method's worker command and its search for the smallest limit."""

    def __init__(self, name: str, config: Path, overrides: list[str], steps: int, work: Path) -> None:
        from lathe.efficiency.bench import COMMON
        from lathe.efficiency.variants import VARIANTS

        self.name, self.dir = name, work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.result = self.dir / "measure.json"
        settings = {**COMMON, **VARIANTS[name].overrides, "max_steps": steps, "output_dir": str(self.dir / "run")}
        args = [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in settings.items()]
        self.command = [sys.executable, "-m", "lathe.efficiency.measure", str(config), *overrides, *args,
                        "--result", str(self.result), "--no-perplexity"]
        self.trials: list[dict] = []

    def trial(self, limit: int, timeout: float) -> dict:
        self.result.unlink(missing_ok=True)
        outcome = run_limited(self.command, limit, self.dir / f"limit-{limit // MiB}MiB.log", timeout)
        if outcome["passed"] and not self.result.exists():
            outcome.update(passed=False, reason="no result written")
        self.trials.append(outcome)
        print(f"  {self.name} under {limit / MiB:,.0f} MiB: {'pass' if outcome['passed'] else outcome['reason']} "
              f"({outcome['seconds']} s, cgroup max usage {outcome['max_usage'] / MiB:,.0f} MiB, "
              f"failcnt {outcome['failcnt']})", flush=True)
        return outcome

    def smallest_limit(self, record: dict, resolution: int, ceiling: int, timeout: float) -> tuple[int | None, int]:
        """(smallest passing limit, largest failing one), both multiples of `resolution`; None: not even `ceiling`."""
        def down(x: float) -> int:
            return max(resolution, int(x) // resolution * resolution)

        peak_rss = record["baseline_memory"] + record["peak_memory"]
        anon = record["baseline_anon"] + record["max_anon"]
        high = min(ceiling, down(peak_rss + resolution - 1))
        while not self.trial(high, timeout)["passed"]:
            if high >= ceiling:
                return None, high
            high = min(ceiling, down(high * 1.25))
        low = min(down(anon), high - resolution)
        while low > 0 and self.trial(low, timeout)["passed"]:
            high, low = low, down(low * 0.75) if low > resolution else 0
        while high - low > resolution:
            middle = down((high + low) / 2)
            if self.trial(middle, timeout)["passed"]:
                high = middle
            else:
                low = middle
        return high, low


def build_model(size: str) -> Path:
    from lathe.testing.demo_tokenizer import build_demo_tokenizer
    from lathe.testing.tiny import build_tiny_model

    cache = HERE / "work" / f"{size}-random" if size != "small" else None
    return build_tiny_model("llama", build_demo_tokenizer(), cache_dir=cache, **SIZES[size])


def check_cgroups() -> None:
    if not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
        sys.exit(f"memory_limit: no cgroup v1 memory controller at {CGROUP_ROOT}; mount it "
                 "(mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory) or run on a machine that has it.")
    if os.geteuid() != 0:
        sys.exit("memory_limit: creating memory cgroups and dropping the page cache needs root.")


def markdown(summary: dict) -> str:
    rows = summary["rows"]
    lines = [(f"model: {summary['model']} ({summary['parameters']:,} parameters, fp32); {summary['steps']} steps, "
              f"{summary['data']}; limit found to {summary['resolution'] // MiB} MiB; swap on this machine: "
              f"{summary['swap_total'] // MiB} MiB"), "",
             ("| method | smallest limit MiB | fails at MiB | peak RSS MiB | of which anon / file MiB | anon peak MiB | "
              "baseline (anon) MiB | plan MiB | plan / limit | (baseline + plan) / limit | plan limit MiB | "
              "(baseline anon + plan limit) / limit | run s at limit / unconstrained |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | not run: {r['error']} |" + " |" * 11)
            continue
        limit = f"{r['limit'] / MiB:,.0f}" if r["limit"] else f"> {r['failing'] / MiB:,.0f}"

        def mib(key: str, r: dict = r) -> str:
            return f"{r[key] / MiB:,.0f}"

        lines.append(f"| {r['method']} | {limit} | {mib('failing')} | {mib('peak_rss')} | "
                     f"{mib('peak_rss_anon')} / {mib('peak_rss_file')} | {mib('anon_peak')} | {mib('baseline')} "
                     f"({mib('baseline_anon') if 'baseline_anon' in r else '-'}) | "
                     f"{mib('plan')} | {r.get('plan_over_limit', '-')} | {r.get('plan_with_baseline_over_limit', '-')} | "
                     f"{mib('plan_limit') if 'plan_limit' in r else '-'} | "
                     f"{r.get('plan_limit_with_baseline_anon_over_limit', '-')} | "
                     f"{r.get('seconds_at_limit', '-')} / {r['unconstrained_seconds']} |")
    lines += ["", ("Absolute sizes (the whole process, as a limit counts it). Peak RSS: VmHWM of the unconstrained "
              "run; its split into anonymous and file-backed (+ shared-memory) pages was sampled every 10 ms at the "
              "resident peak; anon peak: the highest anonymous size on its own. Plan: `lathe plan`'s total, which "
              "leaves out the baseline (the process after its imports); plan limit: its `limit` column (the total of a run "
              "short of memory less the frozen weights that stay file-backed, plus one layer of them), also without "
              "the baseline; baseline anon: the baseline's anonymous part, what of it a limit must hold. Each run in a fresh cgroup v1 memory cgroup "
              "(memory and memory+swap limits), page cache dropped before it; fails: OOM-killed, non-zero exit or "
              "thrashing past the timeout. Under a limit below the peak RSS the kernel drops file pages (a frozen "
              "base's weights stay views into the memory-mapped checkpoint) and reads them again: the run passes, "
              "slower (last column).")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="key=value options for every run (e.g. cutoff_len=512)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tinyllama")
    parser.add_argument("--methods", default="lora,qlora,full,freeze")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--resolution", default="64MiB", help="how close the smallest limit is found")
    parser.add_argument("--ceiling", help="the largest limit tried, also the unconstrained run's "
                        "(default: physical memory less 2 GiB)")
    parser.add_argument("--timeout-factor", type=float, default=4.0,
                        help="a limited run slower than this x the unconstrained one fails (thrashing)")
    parser.add_argument("--output", default=str(HERE / "results" / "memory_limit"),
                        help="results path without extension (.json and .md are written)")
    ns = parser.parse_args()
    check_cgroups()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lathe.config import load_config
    from lathe.efficiency.bench import missing_requirement, parse_methods, preflight
    from lathe.efficiency.plan import data_lengths, meta_model, plan_limits, plan_totals
    from lathe.efficiency.variants import VARIANTS
    from lathe.model.memory import model_shape

    resolution = parse_size(ns.resolution)
    ceiling = parse_size(ns.ceiling) if ns.ceiling else meminfo("MemTotal") - 2 * 1024**3
    names = parse_methods(ns.methods)
    model = build_model(ns.size)
    (HERE / "work").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lathe-memlimit-", dir=HERE / "work"))
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": str(model), **DATA, "output_dir": str(work / "out")}))
    overrides = list(ns.overrides)
    cfg = load_config(str(config), overrides)
    preflight(cfg)  # tokenize once, here, so no measured run includes it
    params = model_shape(meta_model(cfg)).total
    rows = []
    for name in names:
        if reason := missing_requirement(VARIANTS[name]):
            rows.append({"method": name, "error": reason})
            continue
        method = Method(name, config, overrides, ns.steps, work)
        variant = [f"{k}={v}" for k, v in VARIANTS[name].overrides.items()]
        method_cfg = load_config(str(config), [*overrides, *variant])
        lengths = data_lengths(method_cfg)  # the data's real longest sample
        plan = plan_totals(method_cfg, [name], lengths)[name]
        plan_limit = plan_limits(method_cfg, [name], lengths)[name]
        print(f"{name}: unconstrained (under the {ceiling / MiB:,.0f} MiB ceiling)...", flush=True)
        free = method.trial(ceiling, timeout=24 * 3600)
        if not free["passed"]:
            rows.append({"method": name, "error": f"the unconstrained run failed ({free['reason']}); "
                         f"see {method.dir}", "trials": method.trials})
            continue
        record = json.loads(method.result.read_text())
        timeout = max(120.0, ns.timeout_factor * free["seconds"])
        limit, failing = method.smallest_limit(record, resolution, ceiling, timeout)
        base = record["baseline_memory"]
        row = {"method": name, "limit": limit, "failing": failing,
               "peak_rss": base + record["peak_memory"], "peak_memory": record["peak_memory"], "baseline": base,
               "peak_rss_anon": record["baseline_anon"] + record["peak_anon"],
               "peak_rss_file": record["baseline_file"] + record["peak_file"] + record["baseline_shmem"]
               + record["peak_shmem"],
               "anon_peak": record["baseline_anon"] + record["max_anon"], "plan": plan, "plan_limit": plan_limit,
               "baseline_anon": record["baseline_anon"],
               "cgroup_max_usage_unconstrained": free["max_usage"], "unconstrained_seconds": free["seconds"],
               "record": record, "trials": method.trials}
        if limit:
            row["seconds_at_limit"] = next(t["seconds"] for t in method.trials if t["limit"] == limit and t["passed"])
            row["plan_over_limit"] = round(plan / limit, 3)
            row["plan_with_baseline_over_limit"] = round((base + plan) / limit, 3)
            row["plan_limit_with_baseline_anon_over_limit"] = round((record["baseline_anon"] + plan_limit) / limit, 3)
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("method", "limit", "failing", "peak_rss", "peak_rss_anon",
                                                  "peak_rss_file", "anon_peak", "baseline", "plan",
                                                  "plan_over_limit", "plan_limit",
                                                  "plan_limit_with_baseline_anon_over_limit")}), flush=True)
    summary = {"model": f"{ns.size} ({', '.join(f'{k} {v}' for k, v in SIZES[ns.size].items())})",
               "model_path": str(model), "parameters": params, "steps": ns.steps,
               "data": ", ".join(f"{k} {v}" for k, v in DATA.items() if k != "dataset_dir") +
                       (f"; overrides {' '.join(overrides)}" if overrides else ""),
               "resolution": resolution, "ceiling": ceiling, "swap_total": meminfo("SwapTotal"),
               "memsw": (CGROUP_ROOT / "memory.memsw.limit_in_bytes").exists(), "rows": rows}
    out = Path(ns.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    out.with_suffix(".md").write_text(markdown(summary) + "\n")
    print(markdown(summary))


if __name__ == "__main__":
    main()
