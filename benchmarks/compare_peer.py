"""lathe against LLaMA-Factory 0.9.5 and a plain transformers + peft script, same run, alternating.

    bash benchmarks/peers/setup_llamafactory.sh         # once: the peer in its own venv
    .venv/bin/python benchmarks/compare_peer.py [--rounds 3] [--only lathe,llamafactory,plain]

The run (issue 9): a random-init llama (hidden 256, 4 layers, 4 heads, 2 KV heads, vocab 8000,
built with lathe's tiny-model builder and a BPE tokenizer trained on the alpaca data), SFT with
LoRA rank 8 on every linear layer, `alpaca_en_demo` (80 samples, one epoch), `template:
default`, cutoff_len 512, batch 4, fp32, on the CPU. The same YAML (LLaMA-Factory's keys) goes
to `lathe train`, `llamafactory-cli train` and benchmarks/plain_hf.py.

Modes: `defaults` (each tool as it ships), `same` (gradient checkpointing on and no packing
written out for all), `fast` (lathe and the plain script with `padding_free: true`, the same
batches flattened without padding, and no checkpointing; LLaMA-Factory has no such option),
`packed` (lathe with neat_packing and no checkpointing). Tools run alternately inside each
round so that a change in the machine's load hits all of them alike.

Per run: whole-command wall time; training-loop effective tokens/s (the non-padding tokens of
the epoch over the Trainer's train_runtime); peak resident memory of the whole command
(/usr/bin/time's maximum RSS); and the loss per learned token of the 80 samples under the
trained adapter, scored for every tool by the same code (`lathe eval --ppl`). Then the data
preprocessing time of each tool (identity + alpaca_en_demo for SFT), cold and from its cache,
by benchmarks/preprocess_time.py. Results: benchmarks/results/compare_peer.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work"  # git-ignored: model, tokenizer, data copy, runs
RESULTS = HERE / "results"
SHARED_DATA = Path(os.environ.get("LATHE_SHARED_DATA", ROOT.parent / "shared" / "data"))
# lathe as `pip install lathe` installs it (no optional extras: hqq, torchao, deepspeed add seconds
# to every import of transformers), made by benchmarks/setup_lathe.sh; else the dev environment.
BASE_VENV = WORK / "venv-lathe"
VENV = BASE_VENV if (BASE_VENV / "bin" / "lathe").exists() else ROOT / ".venv"
LATHE = [str(VENV / "bin" / "lathe")]
PEER_VENV = HERE / "peers" / ".venv-llamafactory"
PEER = [str(PEER_VENV / "bin" / "llamafactory-cli")]
PLAIN = [str(VENV / "bin" / "python"), str(HERE / "plain_hf.py")]

MODEL = dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2)
VOCAB = 8000
RUN = {
    "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_rank": 8, "lora_target": "all",
    "dataset": "alpaca_en_demo", "template": "default", "cutoff_len": 512, "max_samples": 80,
    "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 5.0e-4,
    "num_train_epochs": 1, "lr_scheduler_type": "cosine", "logging_steps": 1, "save_strategy": "no",
    "report_to": "none", "overwrite_output_dir": True, "include_effective_tokens_per_second": True, "seed": 42,
}
MODES = {
    "defaults": {},
    "same": {"packing": False, "disable_gradient_checkpointing": False},  # + padding_free: false for lathe
    "fast": {"padding_free": True, "disable_gradient_checkpointing": True},
    "packed": {"neat_packing": True, "disable_gradient_checkpointing": True},
}
TOOLS = {"lathe": LATHE, "llamafactory": PEER, "plain": [*PLAIN]}


def prepare() -> tuple[Path, Path]:
    """The data folder (alpaca_en_demo + identity) and the model folder, built once under benchmarks/work."""
    sys.path.insert(0, str(ROOT / "src"))
    from lathe.testing.demo_tokenizer import train_tokenizer, wrap
    from lathe.testing.tiny import build_tiny_model

    data = WORK / "data"
    data.mkdir(parents=True, exist_ok=True)
    info = json.loads((SHARED_DATA / "dataset_info.json").read_text())
    for name in ("alpaca_en_demo", "identity"):
        shutil.copy(SHARED_DATA / info[name]["file_name"], data / info[name]["file_name"])
    (data / "dataset_info.json").write_text(json.dumps({n: info[n] for n in ("alpaca_en_demo", "identity")}, indent=2))
    model = WORK / "model"
    if not (model / "config.json").exists():
        tok_dir = WORK / "tokenizer"
        raw = train_tokenizer(data, vocab_size=VOCAB)  # the BPE recipe of lathe's demo tokenizer, on this data
        wrap(raw).save_pretrained(tok_dir)
        built = build_tiny_model("llama", tok_dir, **MODEL)
        shutil.copytree(built, model, dirs_exist_ok=True)
    return data, model


def write_config(tool: str, mode: str, data: Path, model: Path, run_dir: Path) -> Path:
    config = {"model_name_or_path": str(model), "dataset_dir": str(data), **RUN, **MODES[mode],
              "output_dir": str(run_dir / "out")}
    if mode == "same" and tool == "lathe":
        config["padding_free"] = False  # lathe's own key: padded batches, as the others compute them
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def timed(command: list[str], log: Path, env: dict) -> tuple[float, int, int]:
    """(wall seconds, max RSS in bytes, return code) of one command under /usr/bin/time."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M", *command], stdout=out, stderr=subprocess.STDOUT,
                              env=env)
    wall = time.perf_counter() - start
    rss = re.findall(r"MAXRSS_KB (\d+)", log.read_text(errors="replace"))
    return wall, int(rss[-1]) * 1024 if rss else 0, proc.returncode


def score(config: Path, out: Path, env: dict) -> tuple[float | None, int]:
    """(loss per learned token, learned tokens) of the configured samples under the adapter in `out`."""
    settings = yaml.safe_load(config.read_text())
    settings.pop("padding_free", None)  # a training-batch layout; scoring runs its own batches
    scoring = config.with_name("score.yaml")
    scoring.write_text(yaml.safe_dump(settings, sort_keys=False))
    proc = subprocess.run([*LATHE, "eval", str(scoring), "--ppl", f"adapter_name_or_path={out}"],
                          capture_output=True, text=True, env=env)
    m = re.search(r"perplexity ([\d.e+]+) over ([\d,]+) tokens", proc.stdout)
    if not m:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None, 0
    return math.log(float(m.group(1))), int(m.group(2).replace(",", ""))


def one_run(tool: str, mode: str, data: Path, model: Path, round_: int, env: dict) -> dict:
    run_dir = WORK / "runs" / f"{mode}-{tool}-{round_}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = write_config(tool, mode, data, model, run_dir)
    command = TOOLS[tool] + (["train"] if tool != "plain" else []) + [str(config)]
    wall, rss, rc = timed(command, run_dir / "log.txt", env)
    record = {"tool": tool, "mode": mode, "round": round_, "wall_s": round(wall, 2), "max_rss": rss, "rc": rc}
    results = run_dir / "out" / "train_results.json"
    if rc or not results.exists():
        record["error"] = (run_dir / "log.txt").read_text(errors="replace")[-1500:]
        return record
    metrics = json.loads(results.read_text())
    record.update(train_runtime=metrics.get("train_runtime"), tokens_per_s=metrics.get("effective_tokens_per_sec"),
                  train_loss=metrics.get("train_loss"))
    record["loss_per_token"], record["scored_tokens"] = score(config, run_dir / "out", env)
    return record


def preprocess(tool: str, data: Path, model: Path, env: dict) -> dict:
    """Cold then cached preprocessing of identity + alpaca_en_demo, each in a fresh process."""
    python = str((PEER_VENV if tool == "llamafactory" else ROOT / ".venv") / "bin" / "python")
    cache = WORK / "cache" / tool
    shutil.rmtree(cache, ignore_errors=True)
    cache_env = {**env, "HF_HOME": str(cache / "hf"), "HF_DATASETS_CACHE": str(cache / "hf" / "datasets"),
                 "XDG_CACHE_HOME": str(cache / "xdg")}
    out = {}
    for kind in ("cold", "cached"):
        proc = subprocess.run([python, str(HERE / "preprocess_time.py"), tool, str(data), str(model),
                               str(WORK / "runs" / f"preprocess-{tool}")], capture_output=True, text=True, env=cache_env)
        m = re.search(r"PREPROCESS_SECONDS ([\d.]+) SAMPLES (\d+)", proc.stdout)
        out[kind] = float(m.group(1)) if m else None
        out["samples"] = int(m.group(2)) if m else None
        if not m:
            out["error"] = proc.stderr[-1500:]
    return out


def benchmark_env(threads: int) -> dict:
    """The environment every tool runs in: offline, and `threads` OpenMP threads (0: torch's default)."""
    env = dict(os.environ)
    env.update(DISABLE_VERSION_CHECK="1", HF_HUB_OFFLINE="1")
    env.pop("TOKENIZERS_PARALLELISM", None)  # each tool's own choice (lathe tokenizes batches on every core)
    if threads:  # one thread each: OpenMP threads that spin slow down many-fold when other jobs share the cores
        env["OMP_NUM_THREADS"] = str(threads)
    else:
        env.pop("OMP_NUM_THREADS", None)
    return env


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def summary(runs: list[dict], prep: dict) -> str:
    def med(tool, mode, key):
        values = [r[key] for r in runs if r["tool"] == tool and r["mode"] == mode and r.get(key) is not None]
        return statistics.median(values) if values else None

    lines = ["| mode | tool | runs | whole command s | loop s | effective tokens/s | loss per learned token | "
             "peak RSS MiB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    combos = sorted({(r["mode"], r["tool"]) for r in runs}, key=lambda c: (list(MODES).index(c[0]), list(TOOLS).index(c[1])))
    for mode, tool in combos:
        n = sum(1 for r in runs if r["tool"] == tool and r["mode"] == mode and "error" not in r)
        cells = [med(tool, mode, k) for k in ("wall_s", "train_runtime", "tokens_per_s", "loss_per_token", "max_rss")]
        fmt = ["-" if c is None else f"{c:.2f}" if i < 2 else f"{c:.0f}" if i == 2 else f"{c:.4f}" if i == 3
               else f"{c / 2**20:.0f}" for i, c in enumerate(cells)]
        lines.append(f"| {mode} | {tool} | {n} | " + " | ".join(fmt) + " |")
    lines += ["", "Medians over the rounds. Ratios (lathe / LLaMA-Factory, LLaMA-Factory with its defaults):", ""]
    base_wall, base_tps = med("llamafactory", "defaults", "wall_s"), med("llamafactory", "defaults", "tokens_per_s")
    for mode in MODES:
        wall, tps = med("lathe", mode, "wall_s"), med("lathe", mode, "tokens_per_s")
        if wall and base_wall:
            lines.append(f"- lathe `{mode}`: whole command {base_wall / wall:.2f}x faster, loop "
                         f"{tps / base_tps:.2f}x the effective tokens/s")
    same_wall, same_tps = med("llamafactory", "same", "wall_s"), med("llamafactory", "same", "tokens_per_s")
    if same_wall and med("lathe", "same", "wall_s"):
        lines.append(f"- both forced to the same settings: whole command {same_wall / med('lathe', 'same', 'wall_s'):.2f}x, "
                     f"loop {med('lathe', 'same', 'tokens_per_s') / same_tps:.2f}x")
    if prep:
        lines += ["", "| preprocessing (identity + alpaca_en_demo, SFT) | cold s | cached s | cold / cached |",
                  "|---|---:|---:|---:|"]
        for tool, p in prep.items():
            ratio = p["cold"] / p["cached"] if p.get("cold") and p.get("cached") else None
            lines.append(f"| {tool} ({p.get('samples')} samples) | {p.get('cold') or '-'} | {p.get('cached') or '-'} | "
                         f"{f'{ratio:.1f}x' if ratio else '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="lathe,llamafactory,plain", help="tools to run")
    parser.add_argument("--modes", default="defaults,same,fast")
    parser.add_argument("--no-preprocess", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every tool (0: torch's default)")
    ns = parser.parse_args()
    tools = ns.only.split(",")
    if "llamafactory" in tools and not Path(PEER[0]).exists():
        sys.exit(f"{PEER[0]} is missing: run bash benchmarks/peers/setup_llamafactory.sh first")
    data, model = prepare()
    env = benchmark_env(ns.threads)
    runs = []
    info = machine()
    info["load_before"] = load()
    info["omp_num_threads"] = env.get("OMP_NUM_THREADS", "torch default")
    for round_ in range(ns.rounds):
        for mode in ns.modes.split(","):
            for tool in tools:
                if (mode == "fast" and tool == "llamafactory") or (mode == "packed" and tool != "lathe"):
                    continue
                record = one_run(tool, mode, data, model, round_, env)
                record["load"] = load()
                runs.append(record)
                print(json.dumps(record)[:400], flush=True)
    prep = {} if ns.no_preprocess else {t: preprocess(t, data, model, env) for t in tools if t != "plain"}
    info["load_after"] = load()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compare_peer.json").write_text(json.dumps({"machine": info, "runs": runs, "preprocess": prep}, indent=2))
    text = f"machine: {json.dumps(info)}\n\n" + summary(runs, prep)
    (RESULTS / "compare_peer.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
