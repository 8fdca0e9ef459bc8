"""Tokenizing a million SFT rows: time and peak memory of the whole process tree, by worker count.

    .venv/bin/python benchmarks/tokenize_million.py [--rows 1000000] [--workers 1,2,cores] [--peer]

Generates N distinct alpaca-like rows (instruction / input / output drawn from the words of
alpaca_en_demo with a fixed seed, lengths like alpaca's; every instruction starts with its row number,
so no two rows are alike) as one JSON Lines file, then times each tool's preprocessing of it for SFT
(`template: default`, cutoff_len 512, the benchmark tokenizer of compare_peer.py) with
`preprocessing_num_workers` 1, 2 and the machine's cores, cold (an empty cache each time). The
command runs in its own process (benchmarks/preprocess_time.py's way: imports and tokenizer load
outside the timer); its process tree (workers included) is sampled every 0.2 s for the peak sum of
resident memory (RSS, which counts pages a fork shares once per process) and of proportional memory
(PSS, shared pages split between their processes: what the tree really occupies). `--peer` runs
LLaMA-Factory 0.9.5 the same way (benchmarks/peers/setup_llamafactory.sh makes its venv).

Results: benchmarks/results/tokenize_million.{json,md}, with the load average before and after each run
(the machine may be shared).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare_peer  # (the shared benchmark setup: model, environments, machine facts)

CONFIG = {"stage": "sft", "do_train": True, "finetuning_type": "lora", "dataset": "million", "template": "default",
          "cutoff_len": 512, "overwrite_output_dir": True, "report_to": "none"}


def generate(rows: int, folder: Path, words_from: Path, seed: int = 0) -> Path:
    """`folder` with dataset_info.json and million.jsonl: `rows` distinct alpaca-like rows (made once)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "million.jsonl"
    info = folder / "dataset_info.json"
    if path.exists() and info.exists():  # the folder's name holds the row count
        return folder
    texts = [" ".join(r.values()) for r in json.loads(words_from.read_text())]
    words = np.array(sorted({w for t in texts for w in t.split()}))
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for start in range(0, rows, 10_000):
            m = min(10_000, rows - start)
            # alpaca_en_demo: instruction ~13 words, input ~0-20 (empty for most), output ~110
            lens = np.stack([rng.integers(5, 22, m), rng.integers(0, 16, m) * (rng.random(m) < 0.4),
                             rng.integers(20, 200, m)], axis=1)
            pool = words[rng.integers(0, len(words), int(lens.sum()))].tolist()
            at = 0
            for k in range(m):
                parts = []
                for n in lens[k]:
                    parts.append(" ".join(pool[at:at + n]))
                    at += n
                row = {"instruction": f"{start + k}. {parts[0]}?", "input": parts[1], "output": parts[2] + "."}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    info.write_text(json.dumps({"million": {"file_name": path.name}}, indent=1))
    return folder


def tree_memory(pid: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over `pid` and its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = pss = 0
    for p in procs:
        try:
            full = p.memory_full_info()
            rss += full.rss
            pss += getattr(full, "pss", full.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss, pss


def run_one(tool: str, data: Path, model: Path, workers: int, env: dict) -> dict:
    """One cold preprocessing run of `tool` with `workers`, in a fresh cache: seconds, samples, peak memory."""
    work = compare_peer.WORK / "million" / f"{tool}-{workers}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    run_env = {**env, "XDG_CACHE_HOME": str(work / "xdg"), "HF_DATASETS_CACHE": str(work / "hf"),
               "HF_HOME": str(work / "hf-home")}
    python = str(compare_peer.PEER_VENV / "bin" / "python") if tool == "llamafactory" else sys.executable
    command = [python, str(Path(__file__).resolve()), "--child", tool, str(data), str(model), str(workers),
               str(work / "out")]
    load_before = compare_peer.load()
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss, pss = tree_memory(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.2)
    out, err = proc.communicate()
    record = {"tool": tool, "workers": workers, "wall_s": round(time.perf_counter() - start, 2),
              "peak_rss_mib": round(peak_rss / 2**20), "peak_pss_mib": round(peak_pss / 2**20),
              "load_before": load_before, "load_after": compare_peer.load()}
    m = re.search(r"PREPROCESS_SECONDS ([\d.]+) SAMPLES (\d+)", out)
    if m:
        record.update(preprocess_s=float(m.group(1)), samples=int(m.group(2)))
    else:
        record["error"] = (err or out)[-2000:]
    shutil.rmtree(work, ignore_errors=True)
    return record


def child(tool: str, data: str, model: str, workers: int, output: str) -> None:
    """Run in the measured process (the tool's own python): preprocess once, print the time."""
    import preprocess_time

    config = {**CONFIG, "dataset_dir": data, "model_name_or_path": model, "output_dir": output}
    if workers > 1 or tool == "lathe":  # lathe: 1 asks for one process; LLaMA-Factory: unset is one
        config["preprocessing_num_workers"] = workers
    seconds, samples = {"lathe": preprocess_time.lathe, "llamafactory": preprocess_time.llamafactory}[tool](config)
    print(f"PREPROCESS_SECONDS {seconds:.3f} SAMPLES {samples}", flush=True)


def summary(rows: int, runs: list[dict]) -> str:
    lines = [f"{rows:,} distinct alpaca-like rows, SFT, cold preprocessing (one run each)", "",
             ("| tool | workers | preprocess s | whole command s | peak RSS MiB (tree) | peak PSS MiB (tree) | "
              "load before -> after |"), "|---|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        lines.append(f"| {r['tool']} | {r['workers']} | {r.get('preprocess_s', 'error')} | {r['wall_s']} | "
                     f"{r['peak_rss_mib']} | {r['peak_pss_mib']} | {r['load_before']} -> {r['load_after']} |")
    by = {(r["tool"], r["workers"]): r for r in runs if "preprocess_s" in r}
    ratios = []
    for (tool, workers), r in by.items():
        peer = by.get(("llamafactory", workers))
        if tool == "lathe" and peer:
            ratios.append(f"- {workers} worker(s): lathe {peer['preprocess_s'] / r['preprocess_s']:.2f}x faster, "
                          f"peak PSS {r['peak_pss_mib'] / peer['peak_pss_mib']:.2f}x LLaMA-Factory's")
    return "\n".join(lines + ([""] + ratios if ratios else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2,cores", help="comma list; `cores`: the cores available")
    parser.add_argument("--peer", action="store_true", help="also LLaMA-Factory 0.9.5")
    parser.add_argument("--child", nargs=5, metavar=("TOOL", "DATA", "MODEL", "WORKERS", "OUT"), help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        tool, data, model, workers, out = ns.child
        child(tool, data, model, int(workers), out)
        return
    base, model = compare_peer.prepare()
    data = generate(ns.rows, compare_peer.WORK / f"million-data-{ns.rows}", base / "alpaca_en_demo.json")
    cores = len(os.sched_getaffinity(0))
    counts = list(dict.fromkeys(cores if w == "cores" else int(w) for w in ns.workers.split(",")))
    tools = ["lathe", "llamafactory"] if ns.peer else ["lathe"]
    env = compare_peer.benchmark_env(threads=1)
    info = compare_peer.machine()
    info.update(cores_available=cores, uptime_before=subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip())
    runs = []
    for workers in counts:
        for tool in tools:  # alternating, so a change in the machine's load hits both alike
            runs.append(run_one(tool, data, model, workers, env))
            print(json.dumps(runs[-1])[:600], flush=True)
    info["uptime_after"] = subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()
    compare_peer.RESULTS.mkdir(exist_ok=True)
    stem = "tokenize_million" if ns.rows == 1_000_000 else f"tokenize_million_{ns.rows}"
    (compare_peer.RESULTS / f"{stem}.json").write_text(json.dumps({"machine": info, "rows": ns.rows, "runs": runs}, indent=2))
    text = summary(ns.rows, runs) + f"\n\nMachine: {info['cpu']}, {cores} cores available; {info['uptime_before']} " \
                                    f"(before), {info['uptime_after']} (after).\n"
    (compare_peer.RESULTS / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
