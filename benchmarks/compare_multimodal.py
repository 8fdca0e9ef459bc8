"""lathe against LLaMA-Factory 0.9.5 on a vision-language LoRA SFT run (issue 18), alternating rounds.

    benchmarks/peers/.venv-llamafactory/bin/pip install --no-deps <torchvision 0.28 CPU wheel>   # once, see below
    .venv/bin/python benchmarks/compare_multimodal.py [--rounds 3] [--no-probe]

The run: LLaMA-Factory's `mllm_demo` (6 conversations, 1-2 photos each) repeated 50 times (300 rows, one
JSON file under benchmarks/work/mm-data with the `mllm_demo` entry of dataset_info.json and the photos
linked from the shared data), `template: qwen2_vl`, the tiny random Qwen2-VL of
`lathe.testing.tiny_vlm` (2-layer 64-wide text model, one vision block; its processor caps images at
112x112, so each demo photo becomes 10 image tokens in both tools), LoRA rank 8 on all linear layers,
20 steps of batch 2, cutoff_len 1024, fp32 on the CPU, `image_max_pixels` and
`preprocessing_num_workers` left at each tool's default. The same YAML (LLaMA-Factory's keys) goes to
`lathe train` and `llamafactory-cli train`. Every run preprocesses again: `overwrite_cache: true` (both
tools read it) and a fresh HF_DATASETS_CACHE per run (LLaMA-Factory's JSON-to-Arrow step caches there).

Per run: whole-command wall time and peak RSS (/usr/bin/time); preprocessing time (lathe: its own
`data: ... preprocessed in N s` line; LLaMA-Factory: from its `Loading dataset` line to its `training
example:` line, timed as the lines arrive); the training loop (train_runtime of train_results.json);
start-up before the data (launch to the start of preprocessing) and the rest (model load, adapter,
saving, exit). Tools alternate inside each round and swap order every round, so load on the shared
machine hits both alike; medians over rounds.

Before the rounds, one untimed probe run per tool patches Qwen2VLForConditionalGeneration.forward to
count the pixel_values, image grids and image tokens each forward receives, so the table shows both
tools trained on the images (not only on the placeholder tokens).

LLaMA-Factory's venv needs torchvision for Qwen2-VL's processor (its video processor imports it); on a
CPU machine install the local CPU wheel with --no-deps so its torch stays. lathe runs from
benchmarks/work/venv-lathe when benchmarks/setup_lathe.sh (plus torchvision, as `scripts/setup_env.sh
multimodal` installs it) made one, else the dev venv. Results: benchmarks/results/compare_multimodal.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare_peer  # the shared benchmark setup: venvs, environment, machine facts)

WORK = compare_peer.WORK
DATA = WORK / "mm-data"
MODEL = WORK / "mm-model"
DATASET = "mllm_demo_x50"
REPEAT = 50
PYTHONS = {"lathe": compare_peer.VENV / "bin" / "python", "llamafactory": compare_peer.PEER_VENV / "bin" / "python"}
COMMANDS = {"lathe": compare_peer.LATHE, "llamafactory": compare_peer.PEER}
RUN = {
    "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_rank": 8, "lora_target": "all",
    "dataset": DATASET, "template": "qwen2_vl", "cutoff_len": 1024, "overwrite_cache": True,
    "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "learning_rate": 1.0e-4, "max_steps": 20,
    "lr_scheduler_type": "cosine", "logging_steps": 1, "save_strategy": "no", "report_to": "none",
    "overwrite_output_dir": True, "seed": 42,
}
# Where preprocessing starts and ends in LLaMA-Factory's output (llamafactory/data/loader.py).
PEER_MARKS = {"data_start": "Loading dataset", "data_end": "training example:"}
LATHE_DATA = re.compile(r"data: \S+ preprocessed in ([\d.]+) s")

# Counts what each forward of the Qwen2-VL model receives, then runs the tool's own command line in-process.
PROBE = r"""
import atexit, functools, json, sys
from transformers.models.qwen2_vl import modeling_qwen2_vl as m
seen = {"forwards": 0, "with_pixel_values": 0, "pixel_patches": 0, "images": 0, "image_tokens": 0}
original = m.Qwen2VLForConditionalGeneration.forward
@functools.wraps(original)  # keeps the signature the Trainer reads to choose the batch's columns
def forward(self, *args, **kwargs):
    seen["forwards"] += 1
    ids, pixels, grid = kwargs.get("input_ids"), kwargs.get("pixel_values"), kwargs.get("image_grid_thw")
    if pixels is not None:
        seen["with_pixel_values"] += 1
        seen["pixel_patches"] += int(pixels.shape[0])
        seen["images"] += int(grid.shape[0])
    if ids is not None:
        seen["image_tokens"] += int((ids == self.config.image_token_id).sum())
    return original(self, *args, **kwargs)
m.Qwen2VLForConditionalGeneration.forward = forward
atexit.register(lambda: print("IMAGE_PROBE " + json.dumps(seen), flush=True))
tool, config = sys.argv[1], sys.argv[2]
if tool == "lathe":
    from lathe.cli import entry
    sys.argv = ["lathe", "train", config]
    sys.exit(entry())
from llamafactory.cli import main
sys.argv = ["llamafactory-cli", "train", config]
main()
"""

# Loads the model folder with the peer's transformers: the tiny model is built by lathe's transformers.
PEER_LOADS = r"""
import sys
from transformers import AutoModelForImageTextToText, AutoProcessor
processor = AutoProcessor.from_pretrained(sys.argv[1])
model = AutoModelForImageTextToText.from_pretrained(sys.argv[1])
print("PEER_LOADS", type(processor).__name__, type(model).__name__)
"""


def prepare_data() -> Path:
    """mllm_demo x REPEAT as one JSON file, its dataset_info entry and the photos (linked, else copied)."""
    info = json.loads((compare_peer.SHARED_DATA / "dataset_info.json").read_text())["mllm_demo"]
    rows = json.loads((compare_peer.SHARED_DATA / info["file_name"]).read_text())
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / f"{DATASET}.json").write_text(json.dumps(rows * REPEAT, ensure_ascii=False))
    (DATA / "dataset_info.json").write_text(json.dumps({DATASET: {**info, "file_name": f"{DATASET}.json"}}, indent=2))
    media = DATA / "mllm_demo_data"
    if not media.exists():
        try:
            media.symlink_to(compare_peer.SHARED_DATA / "mllm_demo_data", target_is_directory=True)
        except OSError:
            shutil.copytree(compare_peer.SHARED_DATA / "mllm_demo_data", media)
    return DATA


def prepare_model(env: dict) -> Path:
    """The tiny Qwen2-VL folder (lathe's builder), checked to load with the peer's transformers too."""
    if not (MODEL / "config.json").exists():
        subprocess.run([str(PYTHONS["lathe"]), "-m", "lathe.testing.tiny_vlm", "--family", "qwen2_vl", "--out",
                        str(MODEL)], check=True, env=env, stdout=subprocess.DEVNULL)
    proc = subprocess.run([str(PYTHONS["llamafactory"]), "-c", PEER_LOADS, str(MODEL)], check=False, capture_output=True, text=True,
                          env=env)
    if "PEER_LOADS" not in proc.stdout:
        hint = ("\nInstall torchvision into the peer venv (--no-deps keeps its torch): "
                f"{compare_peer.PEER_VENV}/bin/pip install --no-deps <torchvision-0.28 CPU wheel>"
                if "Torchvision" in proc.stderr else "")
        sys.exit(f"LLaMA-Factory's transformers cannot load {MODEL}:\n{proc.stderr[-1500:]}{hint}")
    return MODEL


def write_config(tool: str, run_dir: Path) -> Path:
    config = {"model_name_or_path": str(MODEL), "dataset_dir": str(DATA), **RUN, "output_dir": str(run_dir / "out")}
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_marked(command: list[str], log: Path, env: dict, marks: dict[str, str]) -> tuple[float, int, int, dict]:
    """(wall s, max RSS bytes, return code, {mark: seconds from launch to the first line holding its text})."""
    seen: dict[str, float] = {}
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(["/usr/bin/time", "-f", "MAXRSS_KB %M", *command], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env)
        for line in proc.stdout:
            now = time.perf_counter() - start
            out.write(line)
            text = line.decode(errors="replace")
            for name, needle in marks.items():
                if name not in seen and needle in text:
                    seen[name] = now
        proc.wait()
    wall = time.perf_counter() - start
    rss = re.findall(r"MAXRSS_KB (\d+)", log.read_text(errors="replace"))
    return wall, int(rss[-1]) * 1024 if rss else 0, proc.returncode, seen


def run_env(base: dict, run_dir: Path) -> dict:
    """Unbuffered output (the marks are timed as lines arrive) and a fresh datasets cache for this run."""
    return {**base, "PYTHONUNBUFFERED": "1", "HF_DATASETS_CACHE": str(run_dir / "hf-datasets")}


def one_run(tool: str, round_: int, base_env: dict) -> dict:
    run_dir = WORK / "runs" / f"mm-{tool}-{round_}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = write_config(tool, run_dir)
    marks = PEER_MARKS if tool == "llamafactory" else {"data_end": "preprocessed in"}
    wall, rss, rc, seen = run_marked([*COMMANDS[tool], "train", str(config)], run_dir / "log.txt",
                                     run_env(base_env, run_dir), marks)
    record = {"tool": tool, "round": round_, "wall_s": round(wall, 2), "max_rss": rss, "rc": rc,
              "load": compare_peer.load()}
    results = run_dir / "out" / "train_results.json"
    log = (run_dir / "log.txt").read_text(errors="replace")
    if rc or not results.exists():
        record["error"] = log[-1500:]
        return record
    metrics = json.loads(results.read_text())
    record.update(train_runtime=metrics.get("train_runtime"), train_loss=metrics.get("train_loss"))
    if tool == "lathe":
        found = LATHE_DATA.search(log)
        record["preprocess_s"] = float(found.group(1)) if found else None
        if found and "data_end" in seen:
            record["before_data_s"] = round(seen["data_end"] - record["preprocess_s"], 2)
    elif "data_start" in seen and "data_end" in seen:
        record["preprocess_s"] = round(seen["data_end"] - seen["data_start"], 3)
        record["before_data_s"] = round(seen["data_start"], 2)
    parts = [record.get(k) for k in ("before_data_s", "preprocess_s", "train_runtime")]
    if all(p is not None for p in parts):
        record["rest_s"] = round(wall - sum(parts), 2)  # model load, adapter, saving, exit
    return record


def probe(tool: str, base_env: dict) -> dict:
    """What the model's forwards received in one untimed run: pixel_values, images and image tokens."""
    run_dir = WORK / "runs" / f"mm-probe-{tool}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = write_config(tool, run_dir)
    proc = subprocess.run([str(PYTHONS[tool]), "-c", PROBE, tool, str(config)], check=False,
                          capture_output=True, text=True,
                          env=run_env(base_env, run_dir))
    (run_dir / "log.txt").write_text(proc.stdout + proc.stderr)
    found = re.search(r"IMAGE_PROBE (\{.*\})", proc.stdout)
    return json.loads(found.group(1)) if found else {"error": (proc.stdout + proc.stderr)[-1500:]}


def versions(env: dict) -> dict:
    code = ("import importlib.metadata as m, json, sys\nout = {}\nfor p in sys.argv[1:]:\n    try:\n"
            "        out[p] = m.version(p)\n    except m.PackageNotFoundError:\n        pass\nprint(json.dumps(out))")
    packages = ["torch", "transformers", "peft", "datasets", "accelerate", "torchvision", "pillow", "av"]
    out = {}
    for tool, package in (("lathe", "lathe"), ("llamafactory", "llamafactory")):
        proc = subprocess.run([str(PYTHONS[tool]), "-c", code, package, *packages], check=False, capture_output=True, text=True,
                              env=env)
        out[tool] = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-300:]}
        out[tool]["python"] = str(PYTHONS[tool])
    return out


def paired_ratios(runs: list[dict]) -> list[float]:
    """LLaMA-Factory's whole command over lathe's, within each round where both succeeded."""
    out = []
    for round_ in sorted({r["round"] for r in runs}):
        walls = {r["tool"]: r["wall_s"] for r in runs if r["round"] == round_ and "error" not in r}
        if len(walls) == 2:
            out.append(walls["llamafactory"] / walls["lathe"])
    return out


def summary(runs: list[dict], probes: dict) -> str:
    def med(tool: str, key: str):
        values = [r[key] for r in runs if r["tool"] == tool and r.get(key) is not None and "error" not in r]
        return statistics.median(values) if values else None

    keys = ("wall_s", "before_data_s", "preprocess_s", "train_runtime", "rest_s", "max_rss", "train_loss")
    lines = [("| tool | runs | whole command s | start-up before data s | preprocessing s | training loop s | "
              "rest s | peak RSS MiB | train loss |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for tool in COMMANDS:
        n = sum(1 for r in runs if r["tool"] == tool and "error" not in r)
        cells = []
        for key in keys:
            value = med(tool, key)
            cells.append("-" if value is None else f"{value / 2**20:.0f}" if key == "max_rss" else
                         f"{value:.4f}" if key == "train_loss" else f"{value:.2f}")
        lines.append(f"| {tool} | {n} | " + " | ".join(cells) + " |")
    lines += ["", ("Medians over the rounds; the parts need not add up to the median whole command. lathe's "
                   "preprocessing is its own log figure (0.1 s steps). The CPU is shared with other jobs: the load "
                   "averages are in the machine line, each run's in the JSON."), ""]
    wall, peer_wall = med("lathe", "wall_s"), med("llamafactory", "wall_s")
    rss, peer_rss = med("lathe", "max_rss"), med("llamafactory", "max_rss")
    if wall and peer_wall:
        lines.append(f"- whole command: lathe {peer_wall / wall:.2f}x faster than LLaMA-Factory "
                     f"(target 1.5x: {'met' if peer_wall / wall >= 1.5 else 'not met'})")
        paired = paired_ratios(runs)
        if paired:
            lines.append(f"- whole command, the two runs of each round paired (the load changes between rounds): "
                         f"median {statistics.median(paired):.2f}x, range {min(paired):.2f}x to {max(paired):.2f}x")
    for key, name in (("preprocess_s", "preprocessing"), ("train_runtime", "training loop"),
                      ("before_data_s", "start-up before data")):
        ours, theirs = med("lathe", key), med("llamafactory", key)
        if ours and theirs:
            lines.append(f"- {name}: lathe {theirs / ours:.2f}x faster")
    if rss and peer_rss:
        lines.append(f"- peak RSS: lathe {rss / 2**20:.0f} MiB, LLaMA-Factory {peer_rss / 2**20:.0f} MiB, "
                     f"lathe / peer {rss / peer_rss:.2f} (target <= 1: {'met' if rss <= peer_rss else 'not met'})")
    if probes:
        lines += ["", ("| probe (one untimed run each): what the model's forwards received | forwards | "
                       "with pixel_values | images | pixel patches | image tokens |"), "|---|---:|---:|---:|---:|---:|"]
        for tool, p in probes.items():
            if "error" in p:
                lines.append(f"| {tool} | probe failed | | | | |")
            else:
                lines.append(f"| {tool} | {p['forwards']} | {p['with_pixel_values']} | {p['images']} | "
                             f"{p['pixel_patches']} | {p['image_tokens']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for both tools (0: torch's default)")
    parser.add_argument("--no-probe", action="store_true", help="skip the untimed runs that count images seen")
    ns = parser.parse_args()
    if not Path(compare_peer.PEER[0]).exists():
        sys.exit(f"{compare_peer.PEER[0]} is missing: run bash benchmarks/peers/setup_llamafactory.sh first")
    env = compare_peer.benchmark_env(ns.threads)
    prepare_data()
    prepare_model(env)
    info = compare_peer.machine()
    info.update(load_before=compare_peer.load(), omp_num_threads=env.get("OMP_NUM_THREADS", "torch default"),
                versions=versions(env))
    probes = {} if ns.no_probe else {tool: probe(tool, env) for tool in COMMANDS}
    for tool, seen in probes.items():
        print(f"probe {tool}: {json.dumps(seen)[:300]}", flush=True)
    runs = []
    for round_ in range(ns.rounds):
        order = list(COMMANDS) if round_ % 2 == 0 else list(reversed(COMMANDS))  # who goes first swaps each round
        for tool in order:
            record = one_run(tool, round_, env)
            runs.append(record)
            print(json.dumps(record)[:400], flush=True)
    info["load_after"] = compare_peer.load()
    compare_peer.RESULTS.mkdir(exist_ok=True)
    commands = {tool: " ".join([*COMMANDS[tool], "train", "<run>/config.yaml"]) for tool in COMMANDS}
    config = {"model_name_or_path": str(MODEL), "dataset_dir": str(DATA), **RUN, "output_dir": "<run>/out"}
    (compare_peer.RESULTS / "compare_multimodal.json").write_text(json.dumps(
        {"machine": info, "commands": commands, "config": config, "probes": probes, "runs": runs}, indent=2))
    text = (f"machine: {json.dumps({k: v for k, v in info.items() if k != 'versions'})}\n\n"
            f"versions: {json.dumps(info['versions'])}\n\n"
            + "".join(f"- {tool}: `{command}`\n" for tool, command in commands.items())
            + f"\nconfig.yaml (both tools):\n\n```yaml\n{yaml.safe_dump(config, sort_keys=False)}```\n\n"
            + summary(runs, probes))
    (compare_peer.RESULTS / "compare_multimodal.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
