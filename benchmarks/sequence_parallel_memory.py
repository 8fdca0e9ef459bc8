"""Peak memory per process of `sequence_parallel_size: 2` over 2 processes against 1 process holding it all (issue 20).

    .venv/bin/python benchmarks/sequence_parallel_memory.py --lengths 8192,16384[,32768] [--cap-gib 12]

Both runs are `lathe train` launched through torchrun by lathe itself (FORCE_TORCHRUN=1) with the
same DeepSpeed engine (examples/deepspeed/ds_z0_config.json), on the model and data that
benchmarks/longest_cutoff.py builds (a random Qwen2 with the 151,936-token vocabulary, hidden
256, 4 layers; one packed pt sample of exactly cutoff_len tokens): LoRA rank 16 on every linear
layer, batch 1, one step, fp32 on the CPU. The only differences:

- "one": NPROC_PER_NODE=1, no `sequence_parallel_size`: one worker holds the whole sequence.
- "two": NPROC_PER_NODE=2, `sequence_parallel_size: 2`: each worker holds half of it (DeepSpeed Ulysses).

Both get the same cores in total: OMP_NUM_THREADS=2 for the one worker, 1 for each of the two.
Memory decisions (gradient checkpointing, tiled MLP) are left to lathe; what its log says it
chose is recorded. The RSS of every process in the launched tree is sampled every 50 ms; a
process's peak is the largest of its samples. A worker is a child of the torchrun agent; the
`lathe train` that starts torchrun (the launcher) and the agent are reported apart. The target:
the largest of the two workers' peaks at most 0.6x the one worker's peak at the same length.
Each run sits in a cgroup v1 memory group (`--cap-gib`, default 12 GiB) that is removed after.
Results: benchmarks/results/sequence_parallel_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from longest_cutoff import (
    DATA_DIR,
    MODEL_DIR,
    MemoryCgroup,
    kill_tree,
    machine,
    outcome,
    prepare_data,
    prepare_model,
    settle,
)

ROOT = HERE.parent
RUNS_DIR = HERE / "work" / "sp-memory-runs"
RESULTS = HERE / "results"
Z0 = ROOT / "examples" / "deepspeed" / "ds_z0_config.json"
LATHE = [str(ROOT / ".venv" / "bin" / "python"), "-m", "lathe", "train"]
RUN = {
    "stage": "pt", "do_train": True, "finetuning_type": "lora", "lora_rank": 16, "lora_target": "all",
    "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "max_steps": 1, "learning_rate": 1.0e-4,
    "logging_steps": 1, "save_strategy": "no", "report_to": "none", "overwrite_output_dir": True, "seed": 42,
    "disable_shuffling": True, "disable_tqdm": True, "plot_loss": False, "flash_attn": "sdpa",
    "deepspeed": str(Z0),
}
SETUPS = {  # name: (processes, OMP_NUM_THREADS per worker, extra config)
    "one": (1, 2, {}),
    "two": (2, 1, {"sequence_parallel_size": 2}),
}
SAMPLE_S = 0.05
TARGET = 0.6


def write_config(setup: str, length: int, run_dir: Path) -> Path:
    config = {"model_name_or_path": str(MODEL_DIR), "dataset_dir": str(DATA_DIR), "dataset": f"longctx_{length}",
              "cutoff_len": length, **RUN, **SETUPS[setup][2], "output_dir": str(run_dir / "out")}
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---------------------------------------------------------------- per-process sampling

class Tree:
    """Every process of a launched tree, each with its role and the peak of its sampled RSS."""

    def __init__(self, root):
        self.root = root
        self.procs: dict[int, dict] = {}  # pid -> {"role", "rank", "omp", "peak", "cmd"}
        self.agent: int | None = None
        self.peak_sum = 0

    def _role(self, proc) -> dict:
        import psutil

        try:
            cmd = proc.cmdline()
            parent = proc.ppid()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            cmd, parent = [], None
        try:
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            env = {}
        text = " ".join(cmd)
        if proc.pid == self.root.pid:
            role = "launcher"
        elif "lathe.distributed.torchrun" in text:
            role, self.agent = "torchrun", proc.pid
        elif parent is not None and parent == self.agent and "lathe" in text:
            role = "worker"
        else:
            role = "other"
        return {"role": role, "rank": env.get("LOCAL_RANK"), "omp": env.get("OMP_NUM_THREADS"), "peak": 0,
                "cmd": text[:200]}

    def sample(self) -> int:
        import psutil

        total = 0
        procs = [self.root, *self.root.children(recursive=True)]
        for proc in procs:  # parents before children: the agent is known before its workers
            try:
                rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            info = self.procs.get(proc.pid)
            # "other" again each sample: a child seen between fork and exec still shows its parent's command
            if info is None or info["role"] == "other":
                peak = info["peak"] if info else 0
                info = self.procs[proc.pid] = {**self._role(proc), "peak": peak}
            info["peak"] = max(info["peak"], rss)
            total += rss
        self.peak_sum = max(self.peak_sum, total)
        return total

    def summary(self) -> dict:
        workers = sorted((p for p in self.procs.values() if p["role"] == "worker"), key=lambda p: str(p["rank"]))
        def peak(role: str) -> int:
            return max((p["peak"] for p in self.procs.values() if p["role"] == role), default=0)

        return {"worker_peaks": [p["peak"] for p in workers], "worker_peak": max((p["peak"] for p in workers), default=0),
                "worker_omp_num_threads": [p["omp"] for p in workers], "launcher_peak": peak("launcher"),
                "torchrun_peak": peak("torchrun"), "other_peak": peak("other"), "tree_peak_sum": self.peak_sum,
                "tree": [p | {"pid": pid} for pid, p in self.procs.items()]}


def measured(command: list[str], log: Path, env: dict, cap: int, timeout: float, group: str) -> dict:
    """Run `command` in a capped cgroup, sampling the RSS of each process of its tree every 50 ms."""
    import psutil

    cgroup = MemoryCgroup(group, cap)
    verdict = None
    start = time.perf_counter()
    try:
        with open(log, "w") as out:
            # preexec_fn: the child joins the group before it allocates anything (this process runs no threads)
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=cgroup.join, start_new_session=True)  # noqa: PLW1509
            tree = Tree(psutil.Process(proc.pid))
            while proc.poll() is None:
                try:
                    tree.sample()
                except psutil.NoSuchProcess:
                    break
                if time.perf_counter() - start > timeout:
                    verdict = f"timed out after {timeout:.0f} s (killed)"
                    kill_tree(tree.root)
                    break
                time.sleep(SAMPLE_S)
            rc = settle(proc)
        wall = time.perf_counter() - start
        stats = cgroup.stats()
    finally:
        cgroup.remove()
    return {"rc": rc, "wall_s": round(wall, 1), **tree.summary(), **stats, "error": outcome(verdict, stats, rc, cap)}


def losses(out: Path) -> list[float]:
    """The logged training losses, full precision (rank 0 writes trainer_log.jsonl)."""
    log = out / "trainer_log.jsonl"
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [float(r["loss"]) for r in rows if r.get("loss") is not None]


def one_run(setup: str, length: int, cap: int, timeout: float) -> dict:
    processes, threads, _ = SETUPS[setup]
    run_dir = RUNS_DIR / f"{setup}-{length}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = write_config(setup, length, run_dir)
    log = run_dir / "log.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM")}
    env.update(HF_HUB_OFFLINE="1", DISABLE_VERSION_CHECK="1", FORCE_TORCHRUN="1", NPROC_PER_NODE=str(processes),
               OMP_NUM_THREADS=str(threads))
    available = psutil_available()
    print(f"[sp_memory] {setup} {length}: running ({run_dir}; {available / 2**30:.1f} GiB available)", flush=True)
    result = measured([*LATHE, str(config)], log, env, cap, timeout, f"lathe-spmem-{os.getpid()}-{setup}")
    text = log.read_text(errors="replace")
    sample = re.search(r"\[lathe\] data: [\d,]+ samples, ([\d,]+) tokens", text)
    startup = re.search(r"first step ([\d.]+)", text)
    record = {"setup": setup, "length": length, "processes": processes, "omp_num_threads": threads,
              "cap_gib": cap / 2**30, "available_before": available, **result,
              "losses": losses(run_dir / "out"),
              "sample_tokens": int(sample.group(1).replace(",", "")) if sample else None,
              "first_step_s": float(startup.group(1)) if startup else None,
              "gradient_checkpointing": sorted(set(re.findall(r"\[lathe\] (gradient checkpointing [^\n]*)", text))),
              "sequence_parallel": sorted(set(re.findall(r"\[lathe\] (sequence parallel: [^\n]*)", text))),
              "chunked_logits": sorted(set(re.findall(r"\[lathe\] (chunked logits: [^\n]*)", text)))}
    record["loss"] = record["losses"][-1] if record["losses"] else None
    if record["error"]:
        record["log_tail"] = text[-3000:]
    shutil.rmtree(run_dir / "out", ignore_errors=True)  # the adapter; the log and config stay
    print(f"[sp_memory] {setup} {length}: {record['error'] or 'ok'}, worker peak "
          f"{record['worker_peak'] / 2**30:.2f} GiB {[round(p / 2**30, 2) for p in record['worker_peaks']]}, "
          f"launcher {record['launcher_peak'] / 2**30:.2f} GiB, {record['wall_s']} s, loss {record['loss']}", flush=True)
    return record


def psutil_available() -> int:
    import psutil

    return psutil.virtual_memory().available


# ---------------------------------------------------------------- report

def compare(runs: list[dict]) -> list[dict]:
    rows = []
    for length in sorted({r["length"] for r in runs}):
        one = next((r for r in runs if r["length"] == length and r["setup"] == "one"), None)
        two = next((r for r in runs if r["length"] == length and r["setup"] == "two"), None)
        row = {"length": length}
        if one and two and not one["error"] and not two["error"] and one["worker_peak"]:
            row["ratio"] = round(two["worker_peak"] / one["worker_peak"], 3)
            row["meets_target"] = row["ratio"] <= TARGET
            if one["loss"] is not None and two["loss"] is not None:
                row["loss_diff"] = abs(one["loss"] - two["loss"])
        rows.append(row)
    return rows


def markdown(doc: dict) -> str:
    def gib(b: int | None) -> str:
        return f"{b / 2**30:.2f}" if b else "-"

    def run(length: int, setup: str) -> dict:
        return next((r for r in doc["runs"] if r["length"] == length and r["setup"] == setup), {})

    lines = [f"machine: {json.dumps(doc['machine'])}", "", doc["about"], "",
             f"Command: `{doc['command']}`", "",
             ("| cutoff_len | 1 process: worker peak GiB | 2 processes (SP 2): largest worker peak GiB | ratio "
             f"(target <= {TARGET}) | wall s (1 / 2) | loss (1 / 2) |"),
             "|---:|---:|---:|---:|---:|---|"]
    for row in doc["comparison"]:
        one, two = run(row["length"], "one"), run(row["length"], "two")
        ratio = f"**{row['ratio']}**" + ("" if row["meets_target"] else " (misses)") if "ratio" in row else "-"
        loss = f"{one.get('loss')} / {two.get('loss')}"
        lines.append(f"| {row['length']} | {gib(one.get('worker_peak'))} | {gib(two.get('worker_peak'))} | {ratio} | "
                     f"{one.get('wall_s', '-')} / {two.get('wall_s', '-')} | {loss} |")
    lines += ["", "Every run:", "",
              ("| cutoff_len | processes | OMP_NUM_THREADS per worker | worker peaks GiB | launcher GiB | torchrun "
              "agent GiB | tree sum GiB | cgroup max GiB | tokens | wall s | first step s | gradient checkpointing | "
              "error |"), "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in sorted(doc["runs"], key=lambda r: (r["length"], r["setup"])):
        peaks = ", ".join(gib(p) for p in r["worker_peaks"]) or "-"
        gc = "; ".join(r["gradient_checkpointing"]) or "-"
        lines.append(f"| {r['length']} | {r['processes']} | {', '.join(str(x) for x in r['worker_omp_num_threads'])} | "
                     f"{peaks} | {gib(r['launcher_peak'])} | {gib(r['torchrun_peak'])} | {gib(r['tree_peak_sum'])} | "
                     f"{gib(r.get('cgroup_max_usage'))} | {r.get('sample_tokens') or '-'} | {r['wall_s']} | "
                     f"{r.get('first_step_s') or '-'} | {gc} | {r['error'] or ''} |")
    lines += ["", ("A process's peak: the largest of its resident-memory samples (every 50 ms). The tree sum adds "
                   "every process's RSS at one moment (shared pages twice); the cgroup's maximum counts shared pages "
                   "once but adds the page cache of the files read.")]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="8192,16384,32768", help="comma list of cutoff_len")
    parser.add_argument("--setups", default="one,two", help="comma list of one (1 process), two (2 processes, SP 2)")
    parser.add_argument("--cap-gib", type=float, default=12.0, help="cgroup memory limit per run (GiB)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the JSON for other lengths")
    parser.add_argument("--out", type=Path, default=RESULTS / "sequence_parallel_memory.json", help="JSON (md beside)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if unknown := set(setups) - set(SETUPS):
        raise SystemExit(f"--setups: unknown {sorted(unknown)}; choose from {sorted(SETUPS)}")
    cap = int(args.cap_gib * 2**30)
    os.environ["HF_HUB_OFFLINE"] = "1"
    runs: list[dict] = []
    if args.resume and args.out.exists():
        runs = [r for r in json.loads(args.out.read_text())["runs"]
                if (r["length"], r["setup"]) not in {(n, s) for n in lengths for s in setups}]
    command = "python benchmarks/sequence_parallel_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = {"machine": machine(), "command": command.strip(), "about": __doc__.split("\n\n")[2].replace("\n", " "),
           "setup": {"run": RUN, "setups": {k: {"processes": p, "omp_num_threads": t, "extra": e}
                                            for k, (p, t, e) in SETUPS.items()}, "cap_gib": args.cap_gib},
           "runs": runs, "comparison": []}

    def save() -> None:
        doc["comparison"] = compare(runs)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1))
        args.out.with_suffix(".md").write_text(markdown(doc))

    prepare_model()
    prepare_data(lengths)
    for length in lengths:
        for setup in setups:
            runs.append(one_run(setup, length, cap, args.timeout))
            save()
    save()
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
