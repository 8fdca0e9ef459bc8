"""lathe against LLaMA-Factory 0.9.5 over a grid of shapes and runs, one cell at a time, results merged per cell.

    .venv/bin/python benchmarks/grid.py --hidden 256 --layers 4 --cutoff 512 --batch 1 --methods lora --stages sft
    .venv/bin/python benchmarks/grid.py --peak-only          # the machine's fp32 matmul peak, nothing else
    .venv/bin/python benchmarks/grid.py --check-flops        # the FLOP formula against torch's FlopCounterMode

Issue 21: hidden 256 / 512 / 1024 x layers 4 / 12 x cutoff 512 / 2048 x batch 1 / 4 x LoRA / full x sft / dpo
(96 cells), each tool with its own defaults and the machine's default threads (no OMP_NUM_THREADS:
compare_peer.benchmark_env(0)). Each option narrows the grid; the cells are the product. The whole grid is
hours on a 2-core machine, so results accumulate in benchmarks/results/grid.json across invocations: a
cell already there is skipped unless --redo. Inside each round the tools alternate (lathe first in even
rounds, LLaMA-Factory first in odd ones).

Model per (hidden, layers): a random llama from lathe's tiny-model builder, heads = hidden / 64, KV heads =
heads / 2 (compare_peer.py's 4 / 2 at hidden 256), intermediate = 4 x hidden (the builder's default, so
hidden 256 x 4 layers is compare_peer.py's model), vocab 8000 (compare_peer.py's BPE tokenizer), fp32.
Data per (stage, cutoff): 64 seeded alpaca rows whose prompt is a short alpaca instruction (< 40 tokens)
and whose answer (for dpo: chosen and rejected, alpaca's ranking format) is alpaca sentences drawn past
cutoff + 64 tokens, so both tools' truncation (LLaMA-Factory's infer_seqlen, lathe's split_budget: a prompt
under half the budget is kept and the answer cut) leaves every sequence exactly cutoff_len tokens. A step
trains batch x cutoff tokens (dpo: that many chosen and as many rejected). `max_samples` = batch x steps.

One YAML (LLaMA-Factory's keys) for both: template default, LoRA rank 8 on every linear layer or full,
lr 1e-4, gradient_accumulation_steps 1, max_steps --steps, logging_steps 1, save_strategy no, fp32,
pref_beta and everything else at each tool's default (LLaMA-Factory checkpoints activations; lathe only
when memory needs it). Per run: the whole command's wall time and max RSS (/usr/bin/time), the Trainer's
train_runtime (train_results.json), the tokens each tool trained on (lathe: trainer_log.jsonl's
total_tokens; LLaMA-Factory: the first example it prints), the 1-minute load before and after, and the
log's tail when it failed. Per cell: medians, whole-command ratio LF / lathe, loop ratio, memory lathe / LF.

Model FLOPs of lathe's loop, per trained token, with P_mm the weights of every matmul (q, k, v, o, gate,
up, down of each layer and the LM head; not the embedding lookup), P_lora the LoRA A and B weights
(rank x (in + out) per adapted linear), L layers, d = heads x head_dim, S = cutoff:
    attention forward  A = 2 * 2 * L * d * (S + 1) / 2        (QK^T and PV, causal: half the S x S)
    full               6 * P_mm + 3 * A                       (backward = 2 x forward)
    LoRA               4 * P_mm + 6 * P_lora + 3 * A          (backward: activation gradients through the
                                                               frozen weights, 1 x their forward; the adapters'
                                                               and attention's backward, 2 x theirs)
    dpo                chosen + rejected through the policy as above, plus the reference forward
                       (2 * P_mm + A) of both
Recomputation by gradient checkpointing is not model FLOPs. lathe's GFLOP/s = FLOPs of the steps /
train_runtime, against the machine's fp32 matmul peak (torch.mm of 2048^2 and 4096^2 fp32 matrices,
torch's default threads, warm-up then best of 5; the best measurement kept in the JSON with its date).
`--check-flops` counts one forward + backward of the hidden-256 model with torch's FlopCounterMode
(eager attention, which computes the whole S x S) and compares it with the formula at S x S.

Results: benchmarks/results/grid.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import re
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare_peer  # noqa: E402  (the shared benchmark setup: tokenizer, environments, timing, machine)

GRID = {"hidden": [256, 512, 1024], "layers": [4, 12], "cutoff": [512, 2048], "batch": [1, 4],
        "methods": ["lora", "full"], "stages": ["sft", "dpo"]}
WORK = compare_peer.WORK / "grid"  # git-ignored: models, data, runs
RESULTS_JSON = compare_peer.RESULTS / "grid.json"
RESULTS_MD = compare_peer.RESULTS / "grid.md"
TOOLS = ("lathe", "llamafactory")
ROWS = 64  # rows per data file: batch 4 x 16 steps
LORA_RANK = 8
MARGIN = 64  # answer tokens past cutoff_len, so the template's boundaries cannot leave a sample short
MAX_PROMPT_CHARS = 80


def cell_key(cell: dict) -> str:
    return "h{hidden}-l{layers}-c{cutoff}-b{batch}-{method}-{stage}".format(**cell)


def cells_of(ns: argparse.Namespace) -> list[dict]:
    """The product of the chosen axis values, smallest first."""
    axes = [sorted(int(v) for v in ns.hidden.split(",")), sorted(int(v) for v in ns.layers.split(",")),
            sorted(int(v) for v in ns.cutoff.split(",")), sorted(int(v) for v in ns.batch.split(",")),
            ns.methods.split(","), ns.stages.split(",")]
    for name, values in zip(GRID, axes):
        unknown = [v for v in values if v not in GRID[name]]
        if unknown:
            sys.exit(f"--{name}: {unknown} not in the grid {GRID[name]}")
    names = ("hidden", "layers", "cutoff", "batch", "method", "stage")
    return [dict(zip(names, values)) for values in itertools.product(*axes)]


# ---- model and data ---------------------------------------------------------------------------------------

def tokenizer_dir() -> Path:
    """compare_peer.py's BPE tokenizer (vocab 8000, trained on the alpaca data), built once."""
    compare_peer.prepare()
    tok = compare_peer.WORK / "tokenizer"
    return tok if tok.exists() else compare_peer.WORK / "model"  # the model folder holds the tokenizer too


def model_dir(hidden: int, layers: int, tok: Path) -> Path:
    sys.path.insert(0, str(compare_peer.ROOT / "src"))
    from lathe.testing.tiny import build_tiny_model

    heads = hidden // 64
    return Path(build_tiny_model("llama", tok, hidden_size=hidden, num_layers=layers, num_heads=heads,
                                 num_kv_heads=max(1, heads // 2), cache_dir=WORK / "models"))


def sentence_pool() -> tuple[list[str], list[str]]:
    """Short alpaca instructions (the prompts) and alpaca answer sentences (the answers' material)."""
    rows = json.loads((compare_peer.SHARED_DATA / "alpaca_en_demo.json").read_text())
    prompts = [r["instruction"] for r in rows if not r.get("input") and len(r["instruction"]) < MAX_PROMPT_CHARS]
    sentences = [s.strip() + "." for r in rows for s in r["output"].split(".") if len(s.strip()) > 20]
    return prompts, sentences


def long_answer(rng: random.Random, sentences: list[str], tokenizer, tokens: int) -> str:
    """Random sentences until the text is at least `tokens` tokens long."""
    text = ""
    while True:
        text += " ".join(rng.choice(sentences) for _ in range(max(8, tokens // 20))) + " "
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= tokens:
            return text.strip()


def write_data(tok: Path, cutoff: int) -> Path:
    """grid_sft_{cutoff} and grid_dpo_{cutoff} (alpaca format, dpo with "ranking": true) in WORK/data."""
    data = WORK / "data"
    data.mkdir(parents=True, exist_ok=True)
    info_path = data / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    sft, dpo = f"grid_sft_{cutoff}", f"grid_dpo_{cutoff}"
    if sft in info and dpo in info and (data / f"{dpo}.json").exists():
        return data
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok)
    prompts, sentences = sentence_pool()
    rng = random.Random(cutoff)
    sft_rows, dpo_rows = [], []
    for _ in range(ROWS):
        prompt = rng.choice(prompts)
        sft_rows.append({"instruction": prompt, "input": "", "output": long_answer(rng, sentences, tokenizer,
                                                                                   cutoff + MARGIN)})
        dpo_rows.append({"instruction": prompt, "input": "",
                         "chosen": long_answer(rng, sentences, tokenizer, cutoff + MARGIN),
                         "rejected": long_answer(rng, sentences, tokenizer, cutoff + MARGIN)})
    (data / f"{sft}.json").write_text(json.dumps(sft_rows, indent=1))
    (data / f"{dpo}.json").write_text(json.dumps(dpo_rows, indent=1))
    info[sft] = {"file_name": f"{sft}.json"}
    info[dpo] = {"file_name": f"{dpo}.json", "ranking": True,
                 "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}}
    info_path.write_text(json.dumps(info, indent=2))
    return data


def write_config(cell: dict, steps: int, data: Path, model: Path, run_dir: Path) -> Path:
    config = {"model_name_or_path": str(model), "stage": cell["stage"], "do_train": True,
              "finetuning_type": cell["method"]}
    if cell["method"] == "lora":
        config.update(lora_rank=LORA_RANK, lora_target="all")
    config.update({
        "dataset": f"grid_{cell['stage']}_{cell['cutoff']}", "dataset_dir": str(data), "template": "default",
        "cutoff_len": cell["cutoff"], "max_samples": cell["batch"] * steps,
        "per_device_train_batch_size": cell["batch"], "gradient_accumulation_steps": 1, "learning_rate": 1.0e-4,
        "max_steps": steps, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
        "overwrite_output_dir": True, "seed": 42, "output_dir": str(run_dir / "out"),
    })
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---- one run ----------------------------------------------------------------------------------------------

def loadavg() -> list[float]:
    """The 1-, 5- and 15-minute load: the machine is shared, so every run records it."""
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def others_running() -> int:
    """Other runnable tasks right now (/proc/loadavg's count less this reader): lathe reads the same count at
    start-up to choose its threads and wait policy (src/lathe/threads.py)."""
    return max(0, int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process's waited-for children)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy / 100, children.ru_utime + children.ru_stime  # USER_HZ is 100 on Linux


def trained_lengths(tool: str, log: Path, out: Path, cell: dict, steps: int) -> dict:
    """The sequence lengths each tool trained on: lathe's token count, LLaMA-Factory's first printed example."""
    if tool == "lathe":
        lines = (out / "trainer_log.jsonl").read_text().splitlines() if (out / "trainer_log.jsonl").exists() else []
        tokens = json.loads(lines[-1]).get("total_tokens") if lines else None
        per = 2 if cell["stage"] == "dpo" else 1  # chosen and rejected
        return {"total_tokens": tokens,
                "tokens_per_sequence": tokens / (steps * cell["batch"] * per) if tokens else None}
    text = log.read_text(errors="replace")
    found = {}
    for name in ("input_ids", "chosen_input_ids", "rejected_input_ids"):
        m = re.search(rf"(?m)^{name}:\n\[([\d, ]*)\]", text)
        if m:
            found[name] = len(m.group(1).split(","))
    return {"first_example_tokens": found}


def one_run(tool: str, cell: dict, steps: int, round_: int, data: Path, model: Path, env: dict) -> dict:
    run_dir = WORK / "runs" / f"{cell_key(cell)}-{tool}-{round_}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = write_config(cell, steps, data, model, run_dir)
    load_before, running = loadavg(), others_running()
    machine_before, own_before = cpu_seconds()
    wall, rss, rc = compare_peer.timed([*compare_peer.TOOLS[tool], "train", str(config)], run_dir / "log.txt", env)
    machine_after, own_after = cpu_seconds()
    own = own_after - own_before
    # Cores the command used, and cores everything else on the machine used meanwhile (the lead's work).
    contention = {"others_running_at_start": running, "own_cores": round(own / wall, 2),
                  "others_cores": round(max(0.0, machine_after - machine_before - own) / wall, 2)}
    record = {"tool": tool, "round": round_, "steps": steps, "wall_s": round(wall, 2), "max_rss": rss, "rc": rc,
              "load_before": load_before, "load_after": loadavg(), **contention,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    results = run_dir / "out" / "train_results.json"
    if rc or not results.exists():
        tail = (run_dir / "log.txt").read_text(errors="replace")[-1500:]
        record["error"] = "killed (out of memory?)\n" + tail if rc in (-9, 137) else tail
        return record
    metrics = json.loads(results.read_text())
    record.update(train_runtime=metrics.get("train_runtime"), train_loss=metrics.get("train_loss"))
    record.update(trained_lengths(tool, run_dir / "log.txt", run_dir / "out", cell, steps))
    if (run_dir / "out" / "trainer_log.jsonl").exists():  # per-step times, kept for a look at the first step
        shutil.copy(run_dir / "out" / "trainer_log.jsonl", run_dir / "trainer_log.jsonl")
    shutil.rmtree(run_dir / "out", ignore_errors=True)  # full fine-tuning leaves the whole model: disk
    return record


# ---- FLOPs and the matmul peak ----------------------------------------------------------------------------

def matmul_params(config: dict, rank: int = LORA_RANK) -> tuple[int, int]:
    """(P_mm, P_lora): weights of every matmul (layers + LM head) and of rank-`rank` LoRA on every layer linear."""
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    q = config["num_attention_heads"] * head_dim
    kv = config["num_key_value_heads"] * head_dim
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)]
    p_mm = layers * sum(a * b for a, b in shapes) + h * config["vocab_size"]
    p_lora = layers * sum(rank * (a + b) for a, b in shapes)
    return p_mm, p_lora


def attention_flops(config: dict, seq: int, causal: bool = True) -> float:
    """Forward attention FLOPs per token: QK^T and PV over (S + 1) / 2 keys on average when causal."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    keys = (seq + 1) / 2 if causal else seq
    return 2 * 2 * config["num_hidden_layers"] * config["num_attention_heads"] * head_dim * keys


def train_flops_per_token(config: dict, method: str, seq: int, causal: bool = True) -> float:
    p_mm, p_lora = matmul_params(config)
    attn = attention_flops(config, seq, causal)
    return 6 * p_mm + 3 * attn if method == "full" else 4 * p_mm + 6 * p_lora + 3 * attn


def step_flops(config: dict, cell: dict) -> float:
    """Model FLOPs of one optimizer step of the cell (formula in the module docstring)."""
    seq = cell["cutoff"]
    tokens = cell["batch"] * seq
    train = train_flops_per_token(config, cell["method"], seq)
    if cell["stage"] == "sft":
        return tokens * train
    p_mm, _ = matmul_params(config)
    reference = 2 * p_mm + attention_flops(config, seq)
    return 2 * tokens * (train + reference)  # chosen and rejected


def matmul_peak(sizes: tuple[int, ...] = (2048, 4096), repeats: int = 5) -> dict:
    """Best fp32 torch.mm GFLOP/s over square sizes, torch's default threads, after a warm-up."""
    import torch

    by_size = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        by_size[str(n)] = round(2 * n**3 / best / 1e9, 1)
    return {"gflops": max(by_size.values()), "by_size": by_size, "threads": torch.get_num_threads(), "cpu": cpu_name(),
            "load": loadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def check_flops() -> None:
    """One forward + backward of the hidden-256, 4-layer model at S = 512, counted by FlopCounterMode."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    model_path = model_dir(256, 4, tokenizer_dir())
    config = json.loads((model_path / "config.json").read_text())
    seq = 512
    ids = torch.randint(0, config["vocab_size"], (1, seq))
    for method in ("full", "lora"):
        model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="eager")
        if method == "lora":
            targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            model = get_peft_model(model, LoraConfig(r=LORA_RANK, target_modules=targets, lora_dropout=0.0))
        counter = FlopCounterMode(display=False)
        with counter:
            model(input_ids=ids, labels=ids).loss.backward()
        counted = counter.get_total_flops() / seq
        formula = train_flops_per_token(config, method, seq, causal=False)  # eager computes the whole S x S
        print(f"{method}: FlopCounterMode {counted / 1e6:.2f} MFLOP/token, formula {formula / 1e6:.2f} "
              f"({counted / formula:.4f}x); causal formula {train_flops_per_token(config, method, seq) / 1e6:.2f}")


# ---- results ----------------------------------------------------------------------------------------------

def load_results() -> dict:
    if RESULTS_JSON.exists():
        return json.loads(RESULTS_JSON.read_text())
    return {"cells": {}, "peaks": [], "machine": {}}


def cpu_name() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown")


def best_peak(results: dict, cpu: str) -> float | None:
    """The highest fp32 matmul peak measured on this CPU model (load on shared cores only lowers it; sessions
    may land on different machines, so each cell is set against the peak of the CPU it ran on)."""
    return max((p["gflops"] for p in results["peaks"] if p.get("cpu") == cpu), default=None)


def median(runs: list[dict], tool: str, key: str) -> float | None:
    values = [r[key] for r in runs if r["tool"] == tool and "error" not in r and r.get(key) is not None]
    return statistics.median(values) if values else None


def cell_summary(cell: dict, peak: float | None) -> dict:
    runs = cell["runs"]
    ours = {k: median(runs, "lathe", k) for k in ("wall_s", "train_runtime", "max_rss")}
    theirs = {k: median(runs, "llamafactory", k) for k in ("wall_s", "train_runtime", "max_rss")}
    out = {"lathe": ours, "llamafactory": theirs}
    if ours["wall_s"] and theirs["wall_s"]:
        out["ratio"] = theirs["wall_s"] / ours["wall_s"]
        out["loop_ratio"] = theirs["train_runtime"] / ours["train_runtime"]
        out["mem_ratio"] = ours["max_rss"] / theirs["max_rss"]
    if ours["train_runtime"]:
        steps = next(r["steps"] for r in runs if r["tool"] == "lathe" and "error" not in r)
        out["gflops"] = cell["step_flops"] * steps / ours["train_runtime"] / 1e9
        out["peak_fraction"] = out["gflops"] / peak if peak else None
    return out


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def reason(log_tail: str) -> str:
    """The last line of a failed run's log that says something (not /usr/bin/time's own lines)."""
    lines = [line for line in log_tail.strip().splitlines()
             if line.strip() and not line.startswith(("MAXRSS_KB", "Command exited", "Command terminated"))]
    prefix = "killed (out of memory?): " if log_tail.startswith("killed") else ""
    return prefix + (lines[-1].strip()[:200] if lines else "no output")


def markdown(results: dict) -> str:
    order = {k: i for i, k in enumerate(cell_key(c) for c in cells_of(argparse.Namespace(
        **{name: ",".join(map(str, values)) for name, values in GRID.items()})))}
    keys = sorted(results["cells"], key=lambda k: order.get(k, 1e9))
    lines = ["| hidden | layers | cutoff | batch | method | stage | steps | lathe s | LF s | ratio | loop ratio | "
             "lathe MiB | LF MiB | mem ratio | lathe GFLOP/s | % of peak | others' cores lathe / LF |",
             "|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    ratios, failures, heavy = [], [], []
    for key in keys:
        cell = results["cells"][key]
        s = cell_summary(cell, best_peak(results, cell["cpu"]))
        p = cell["params"]
        mib = [fmt(s[t]["max_rss"] and s[t]["max_rss"] / 2**20, ".0f") for t in TOOLS]
        others = [fmt(max((r["others_cores"] for r in cell["runs"] if r["tool"] == t and "others_cores" in r),
                          default=None), ".2f") for t in TOOLS]
        lines.append(f"| {p['hidden']} | {p['layers']} | {p['cutoff']} | {p['batch']} | {p['method']} | "
                     f"{p['stage']} | {cell['runs'][0]['steps']} | {fmt(s['lathe']['wall_s'], '.1f')} | "
                     f"{fmt(s['llamafactory']['wall_s'], '.1f')} | {fmt(s.get('ratio'), '.2f')} | "
                     f"{fmt(s.get('loop_ratio'), '.2f')} | {mib[0]} | {mib[1]} | {fmt(s.get('mem_ratio'), '.2f')} | "
                     f"{fmt(s.get('gflops'), '.1f')} | {fmt(s.get('peak_fraction') and 100 * s['peak_fraction'], '.0f')}"
                     f" | {' / '.join(others)} |")
        if s.get("ratio"):
            ratios.append((s["ratio"], key))
        if s.get("mem_ratio", 0) > 1.25:
            heavy.append(f"{key} ({s['mem_ratio']:.2f}x)")
        failures += [f"- {key} {r['tool']} round {r['round']}: rc {r['rc']}: {reason(r['error'])}"
                     for r in cell["runs"] if "error" in r]
    lines.append("")
    lines.append(f"Cells measured: {len(keys)} of 96 ({len(ratios)} with both tools).")
    for cpu in sorted({c["cpu"] for c in results["cells"].values()}):
        count = sum(p.get("cpu") == cpu for p in results["peaks"])
        lines.append(f"fp32 matmul peak of {cpu}: {fmt(best_peak(results, cpu), '.1f')} GFLOP/s "
                     f"(best of {count} measurements, 2048^2 and 4096^2, torch's default threads).")
    if ratios:
        geo = math.exp(sum(math.log(r) for r, _ in ratios) / len(ratios))
        low = min(ratios)
        lines.append(f"Whole-command ratio LF / lathe: geometric mean {geo:.2f}x; lowest {low[0]:.2f}x ({low[1]}).")
    if heavy:
        lines.append("Memory above 1.25x LLaMA-Factory's: " + "; ".join(heavy) + ".")
    if failures:
        lines += ["", "Failed runs:", *failures]
    return "\n".join(lines)


def save(results: dict) -> None:
    compare_peer.RESULTS.mkdir(exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(results, indent=2))
    RESULTS_MD.write_text(f"machine: {json.dumps(results['machine'])}\n\n{markdown(results)}\n")


def run_cell(cell: dict, ns: argparse.Namespace, tok: Path, env: dict) -> dict:
    model = model_dir(cell["hidden"], cell["layers"], tok)
    data = write_data(tok, cell["cutoff"])
    config = json.loads((model / "config.json").read_text())
    entry = {"params": cell, "cpu": cpu_name(), "model": model.name, "step_flops": step_flops(config, cell), "runs": []}
    for round_ in range(ns.rounds):
        for tool in TOOLS if round_ % 2 == 0 else TOOLS[::-1]:
            record = one_run(tool, cell, ns.steps, round_, data, model, env)
            entry["runs"].append(record)
            print(json.dumps({k: v for k, v in record.items() if k != "error"}), flush=True)
            if "error" in record:
                print(record["error"][-600:], file=sys.stderr, flush=True)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, values in GRID.items():
        parser.add_argument(f"--{name}", default=",".join(map(str, values)))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--redo", action="store_true", help="measure cells already in grid.json again")
    parser.add_argument("--peak-only", action="store_true", help="measure the fp32 matmul peak and stop")
    parser.add_argument("--check-flops", action="store_true", help="the FLOP formula against FlopCounterMode")
    ns = parser.parse_args()
    if ns.check_flops:
        return check_flops()
    if ns.steps * 4 > ROWS:
        parser.error(f"--steps {ns.steps}: the data holds {ROWS} rows, enough for batch 4 x {ROWS // 4} steps")
    results = load_results()
    peak = matmul_peak()
    results["peaks"].append(peak)
    print(f"fp32 matmul peak: {json.dumps(peak)}", flush=True)
    if ns.peak_only:
        return save(results)
    if not all(Path(compare_peer.TOOLS[t][0]).exists() for t in TOOLS):
        sys.exit(f"{compare_peer.PEER[0]} is missing: run bash benchmarks/peers/setup_llamafactory.sh first")
    results["machine"] = {**compare_peer.machine(), "lathe": compare_peer.LATHE[0], "omp_num_threads": "torch default"}
    tok = tokenizer_dir()
    env = compare_peer.benchmark_env(0)
    for cell in cells_of(ns):
        key = cell_key(cell)
        if key in results["cells"] and not ns.redo:
            print(f"{key}: measured already (--redo to measure again)", flush=True)
            continue
        start = time.perf_counter()
        results["cells"][key] = run_cell(cell, ns, tok, env)
        save(results)  # after every cell: an interrupted session keeps what it measured
        print(f"{key}: {time.perf_counter() - start:.0f} s", flush=True)
    save(results)
    print(markdown(results))


if __name__ == "__main__":
    main()
