"""Peak memory of each fine-tuning method, lathe against LLaMA-Factory, on the run of compare_peer.py.

    .venv/bin/python benchmarks/compare_methods.py --methods full,freeze,lora,galore,qlora --rounds 1

Issue 9's memory target: "peak memory of each method not above the peer's for the same run".
Each method runs compare_peer.py's SFT run (the tiny llama, 80 alpaca samples, one epoch, batch 4,
cutoff 512, fp32) with LLaMA-Factory's keys for the method, in both tools with their defaults,
one process per run, alternating; peak RSS of the whole command comes from /usr/bin/time. Each
trained model (or adapter) is then scored by the same code (`lathe eval --ppl`): loss per learned
token of the 80 samples, so the tools are also seen to learn the same.
GaLore and QLoRA need galore-torch and bitsandbytes in both environments (they are optional
extras of either tool):

    benchmarks/peers/.venv-llamafactory/bin/pip install -c .venv/torch-constraints.txt galore-torch bitsandbytes
    benchmarks/work/venv-lathe/bin/pip install -c .venv/torch-constraints.txt galore-torch bitsandbytes

Results: benchmarks/results/compare_methods.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import statistics
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare_peer  # noqa: E402  (the shared benchmark setup: model, data, environments, timing)

LORA_KEYS = ("lora_rank", "lora_target")
TRAINING_ONLY = ("use_galore", "galore_target", "galore_rank", "optim")  # not options of `lathe eval`
# LLaMA-Factory's keys for each method; lathe reads the same ones.
METHODS = {
    "full": {"finetuning_type": "full"},
    "freeze": {"finetuning_type": "freeze"},  # the last 2 layers train (freeze_trainable_layers: 2)
    "lora": {"finetuning_type": "lora"},
    # LLaMA-Factory's GaLore takes adamw_torch, adamw_8bit or adafactor, not transformers 5's default
    # adamw_torch_fused ("NotImplementedError: Unknown optim"), so both tools get adamw_torch.
    "galore": {"finetuning_type": "full", "use_galore": True, "galore_target": "all", "galore_rank": 16,
               "optim": "adamw_torch"},
    "qlora": {"finetuning_type": "lora", "quantization_bit": 4},
}


NEEDS = {"galore": "galore_torch", "qlora": "bitsandbytes"}  # optional extras of both tools
PYTHONS = {"lathe": compare_peer.VENV / "bin" / "python", "llamafactory": compare_peer.PEER_VENV / "bin" / "python"}


def missing_extras(methods: list[str]) -> list[str]:
    """'tool: module (method)' for every extra a method needs that a tool's environment lacks."""
    out = []
    for method in methods:
        module = NEEDS.get(method)
        for tool, python in PYTHONS.items() if module else ():
            probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
            if subprocess.run([str(python), "-c", probe]).returncode:
                out.append(f"{tool}: {module} ({method})")
    return out


def write_config(method: str, data: Path, model: Path, run_dir: Path) -> Path:
    settings = dict(compare_peer.RUN)
    if METHODS[method]["finetuning_type"] != "lora":
        for key in LORA_KEYS:
            settings.pop(key)
    config = {"model_name_or_path": str(model), "dataset_dir": str(data), **settings, **METHODS[method],
              "output_dir": str(run_dir / "out")}
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def one_run(tool: str, method: str, data: Path, model: Path, round_: int, env: dict) -> dict:
    run_dir = compare_peer.WORK / "runs" / f"method-{method}-{tool}-{round_}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = write_config(method, data, model, run_dir)
    wall, rss, rc = compare_peer.timed([*compare_peer.TOOLS[tool], "train", str(config)], run_dir / "log.txt", env)
    record = {"tool": tool, "method": method, "round": round_, "wall_s": round(wall, 2), "max_rss": rss, "rc": rc,
              "load": compare_peer.load()}
    results = run_dir / "out" / "train_results.json"
    if rc or not results.exists():
        record["error"] = (run_dir / "log.txt").read_text(errors="replace")[-1500:]
        return record
    metrics = json.loads(results.read_text())
    record.update(train_runtime=metrics.get("train_runtime"), train_loss=metrics.get("train_loss"))
    record["loss_per_token"] = score(config, run_dir / "out", env)
    return record


def score(config: Path, out: Path, env: dict) -> float | None:
    """Loss per learned token of the run's samples under the trained model or adapter in `out`."""
    settings = {k: v for k, v in yaml.safe_load(config.read_text()).items() if k not in TRAINING_ONLY}
    settings["adapter_name_or_path" if settings["finetuning_type"] == "lora" else "model_name_or_path"] = str(out)
    settings["output_dir"] = str(out.parent / "score")
    scoring = config.with_name("score.yaml")
    scoring.write_text(yaml.safe_dump(settings, sort_keys=False))
    proc = subprocess.run([*compare_peer.LATHE, "eval", str(scoring), "--ppl"], capture_output=True, text=True, env=env)
    m = re.search(r"perplexity ([\d.e+]+) over", proc.stdout)
    if not m:
        print(proc.stderr[-2000:], file=sys.stderr)
    return math.log(float(m.group(1))) if m else None


def summary(runs: list[dict], methods: list[str]) -> str:
    def med(tool, method, key):
        values = [r[key] for r in runs if r["tool"] == tool and r["method"] == method and r.get(key) is not None
                  and "error" not in r]
        return statistics.median(values) if values else None

    lines = ["| method | lathe peak RSS MiB | LLaMA-Factory peak RSS MiB | lathe / peer | lathe loop s | "
             "LLaMA-Factory loop s | lathe loss per learned token | LLaMA-Factory loss per learned token |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method in methods:
        ours, theirs = med("lathe", method, "max_rss"), med("llamafactory", method, "max_rss")
        cells = [f"{ours / 2**20:.0f}" if ours else "failed", f"{theirs / 2**20:.0f}" if theirs else "failed",
                 f"{ours / theirs:.2f}" if ours and theirs else "-"]
        for key, fmt in (("train_runtime", "{:.2f}"), ("loss_per_token", "{:.4f}")):
            cells += [fmt.format(v) if (v := med(tool, method, key)) is not None else "-" for tool in ("lathe", "llamafactory")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    errors = [f"- {r['tool']} {r['method']} round {r['round']}: rc {r['rc']}, log tail: "
              f"{r['error'].strip().splitlines()[-1] if r['error'].strip() else ''}" for r in runs if "error" in r]
    if errors:
        lines += ["", "Failed runs:", *errors]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="full,freeze,lora,galore,qlora")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for both tools (0: torch's default)")
    ns = parser.parse_args()
    methods = ns.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    missing = missing_extras(methods)
    if missing:
        parser.error("missing in the environments: " + "; ".join(missing) + ". Install them as this script's "
                     "docstring shows, or leave those methods out of --methods.")
    data, model = compare_peer.prepare()
    env = compare_peer.benchmark_env(ns.threads)
    info = {**compare_peer.machine(), "load_before": compare_peer.load(), "omp_num_threads": env.get("OMP_NUM_THREADS")}
    runs = []
    for round_ in range(ns.rounds):
        for method in methods:
            for tool in ("lathe", "llamafactory"):
                runs.append(one_run(tool, method, data, model, round_, env))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "error"}), flush=True)
    info["load_after"] = compare_peer.load()
    compare_peer.RESULTS.mkdir(exist_ok=True)
    (compare_peer.RESULTS / "compare_methods.json").write_text(json.dumps({"machine": info, "runs": runs}, indent=2))
    text = f"machine: {json.dumps(info)}\n\n" + summary(runs, methods)
    (compare_peer.RESULTS / "compare_methods.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
