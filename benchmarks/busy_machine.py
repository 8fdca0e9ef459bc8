"""A run on a busy machine: `make demo`'s training alone and beside a CPU-bound process, lathe and LLaMA-Factory.

    bash benchmarks/peers/setup_llamafactory.sh         # once: the peer in its own venv
    .venv/bin/python benchmarks/busy_machine.py [--rounds 3] [--epochs N]

Issue 21: a run should slow about in proportion to the cores it loses when another process shares the
machine, not many-fold (`make demo`'s loop was seen at 286 s instead of about 20 s beside other work:
OpenMP threads that spin while they wait). The job is examples/demo/lora_sft.yaml (the demo model, LoRA
on lathe_identity + lathe_numbers, chatml, cutoff 128, batch 16, 30 epochs unless --epochs); the neighbour
is one Python process spinning on one core (`stress --cpu 1`'s load). Each tool runs with its own defaults and the
machine's default threads: no OMP_NUM_THREADS or wait policy is set for either (lathe picks its own; the peer
leaves torch's). Rounds alternate tool and condition, so a change in the machine hits all alike.

Per run: the training loop's time (train_runtime from train_results.json) and the whole command's wall time;
the slowdown is busy / alone per tool (medians). With 2 cores and one taken, a run that shares fairly gets about
one core: about 2x at most for a loop that used both. Results: benchmarks/results/busy_machine.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work" / "busy"
RESULTS = HERE / "results"
PEER_VENV = HERE / "peers" / ".venv-llamafactory"
TOOLS = {"lathe": [str(ROOT / ".venv" / "bin" / "lathe"), "train"],
         "llamafactory": [str(PEER_VENV / "bin" / "llamafactory-cli"), "train"]}
NEIGHBOUR = [sys.executable, "-c", "while True: pass"]  # one core's worth of CPU-bound work


def prepare() -> Path:
    """The demo model (lathe's tiny builder, `make demo`'s preset), built once."""
    sys.path.insert(0, str(ROOT / "src"))
    from lathe.testing.demo_tokenizer import build_demo_tokenizer
    from lathe.testing.tiny import PRESETS, build_tiny_model

    return Path(build_tiny_model("llama", build_demo_tokenizer(), **PRESETS["demo"]))


def demo_config() -> dict:
    return yaml.safe_load((ROOT / "examples" / "demo" / "lora_sft.yaml").read_text())


def write_config(model: Path, run_dir: Path, epochs: int) -> Path:
    config = demo_config()
    config.update(model_name_or_path=str(model), dataset_dir=str(ROOT / "data"), output_dir=str(run_dir / "out"),
                  num_train_epochs=epochs, plot_loss=False)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def clean_env() -> dict:
    env = dict(os.environ, DISABLE_VERSION_CHECK="1", HF_HUB_OFFLINE="1")
    for var in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
        env.pop(var, None)  # each tool's own choice
    return env


def one_run(tool: str, busy: bool, model: Path, round_: int, epochs: int) -> dict:
    run_dir = WORK / f"{tool}-{'busy' if busy else 'alone'}-{round_}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = write_config(model, run_dir, epochs)
    neighbour = subprocess.Popen(NEIGHBOUR) if busy else None
    try:
        time.sleep(0.5 if busy else 0)  # the neighbour is spinning before the run starts
        start = time.perf_counter()
        with open(run_dir / "log.txt", "w") as log:
            code = subprocess.run([*TOOLS[tool], str(config)], stdout=log, stderr=subprocess.STDOUT,
                                  env=clean_env(), cwd=run_dir).returncode
        wall = time.perf_counter() - start
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    results = run_dir / "out" / "train_results.json"
    loop = json.loads(results.read_text())["train_runtime"] if results.is_file() else None
    record = {"tool": tool, "busy": busy, "round": round_, "code": code, "wall_s": round(wall, 2), "loop_s": loop,
              "load": Path("/proc/loadavg").read_text().split()[:3]}
    print(json.dumps(record), flush=True)
    if code != 0:
        print((run_dir / "log.txt").read_text()[-3000:], file=sys.stderr)
    return record


def summary(runs: list[dict], epochs: int) -> str:
    def med(tool, busy, key):
        values = [r[key] for r in runs if r["tool"] == tool and r["busy"] == busy and r.get(key) is not None]
        return statistics.median(values) if values else None

    lines = [f"`make demo`'s LoRA run ({epochs} epochs) alone and beside one CPU-bound process, "
             f"{os.cpu_count()} cores, medians of {max(r['round'] for r in runs)} alternating rounds.", "",
             "| tool | loop alone (s) | loop busy (s) | loop slowdown | command alone (s) | command busy (s) | "
             "command slowdown |", "|---|---|---|---|---|---|---|"]
    for tool in TOOLS:
        la, lb, wa, wb = (med(tool, False, "loop_s"), med(tool, True, "loop_s"), med(tool, False, "wall_s"),
                          med(tool, True, "wall_s"))
        if None in (la, lb, wa, wb):
            lines.append(f"| {tool} | failed | | | | | |")
            continue
        lines.append(f"| {tool} | {la:.1f} | {lb:.1f} | {lb / la:.2f}x | {wa:.1f} | {wb:.1f} | {wb / wa:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=demo_config()["num_train_epochs"])
    parser.add_argument("--only", default="lathe,llamafactory")
    ns = parser.parse_args()
    tools = ns.only.split(",")
    if "llamafactory" in tools and not Path(TOOLS["llamafactory"][0]).exists():
        print("LLaMA-Factory is not installed: bash benchmarks/peers/setup_llamafactory.sh", file=sys.stderr)
        return 2
    model = prepare()
    runs = []
    for round_ in range(1, ns.rounds + 1):
        order = [(t, b) for b in (False, True) for t in tools]
        if round_ % 2 == 0:
            order.reverse()
        for tool, busy in order:
            runs.append(one_run(tool, busy, model, round_, ns.epochs))
    text = summary(runs, ns.epochs)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "busy_machine.json").write_text(json.dumps({"epochs": ns.epochs, "runs": runs}, indent=1))
    (RESULTS / "busy_machine.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
