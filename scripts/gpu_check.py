"""Speed and memory of the GPU-only methods on one ~0.5B model: a table of peak memory and tokens/s.

Each method trains `--steps` steps of continued pre-training (packed rows of `--seq` tokens of
the repo's lathe_docs) in a process of its own, so peak memory and global patches (liger) never
leak from one method into the next. Methods whose package is missing are listed as skipped.

    python scripts/gpu_check.py                 # on a CUDA machine (scripts/gpu_check.sh runs this)
    python scripts/gpu_check.py --cpu-smoke     # the same path on a tiny model, 2 steps, CPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ~0.49B parameters: 32 layers of hidden 1024 (16 heads, 4 KV heads), MLP 4096.
MODEL_SIZES = {
    "gpu": {"hidden_size": 1024, "num_layers": 32, "num_heads": 16, "num_kv_heads": 4, "intermediate_size": 4096},
    "smoke": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2},
}

# method -> (extra config, package it needs or None, needs CUDA)
METHODS = {
    "lora_sdpa": ({"flash_attn": "sdpa"}, None, False),
    "lora_fa2": ({"flash_attn": "fa2"}, "flash_attn", True),
    "qlora_4bit": ({"quantization_bit": 4, "flash_attn": "sdpa"}, "bitsandbytes", False),
    "unsloth": ({"use_unsloth": True}, "unsloth", True),
    "liger": ({"enable_liger_kernel": True, "flash_attn": "sdpa"}, "liger_kernel", True),
    # memory for long sequences (docs/efficiency.md): every layer checkpointed, then its inputs in host
    # memory, then the MLP in tiles; each should cost less GPU memory than the one before it
    "lora_gc_all": ({"flash_attn": "sdpa", "disable_gradient_checkpointing": False}, None, False),
    "lora_offload": ({"flash_attn": "sdpa", "offload_activations": True}, None, True),
    "lora_offload_tiled": ({"flash_attn": "sdpa", "offload_activations": True, "tiled_mlp": True}, None, True),
}


def build_model(size: str) -> Path:
    from lathe.testing.tiny import build_tiny_model

    return build_tiny_model("llama", None, **MODEL_SIZES[size])


def run_one(method: str, model: str, steps: int, seq: int, batch: int, out: str, cpu: bool) -> dict:
    """Train one method; return its numbers (run in a child process)."""
    import torch

    from lathe.config import build_config
    from lathe.train import run_stage

    extra, _, _ = METHODS[method]
    raw = {
        "model_name_or_path": model, "stage": "pt", "do_train": True, "finetuning_type": "lora", "lora_target": "all",
        "dataset": "lathe_docs", "dataset_dir": str(ROOT / "data"), "cutoff_len": seq, "packing": True,
        "output_dir": out, "overwrite_output_dir": True, "per_device_train_batch_size": batch, "max_steps": steps,
        "learning_rate": 1e-4, "logging_steps": max(1, steps // 4), "save_strategy": "no", "report_to": "none",
        "disable_tqdm": True, "bf16": not cpu, "include_effective_tokens_per_second": True, **extra,
    }
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run_stage(build_config(raw))
    seconds = time.perf_counter() - start
    m = result.metrics
    tokens_per_s = m.get("effective_tokens_per_sec") or m.get("train_tokens_per_second") or 0.0
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else "-"
    return {"method": method, "status": "ok", "peak_gib": peak, "tokens_per_s": round(float(tokens_per_s), 1),
            "train_loss": round(float(m.get("train_loss", float("nan"))), 4), "wall_s": round(seconds, 1)}


def skip_reason(method: str, cpu: bool) -> str | None:
    _, package, needs_cuda = METHODS[method]
    if needs_cuda and cpu:
        return "needs CUDA"
    if package and importlib.util.find_spec(package) is None:
        return f"{package} not installed"
    return None


def table(rows: list[dict]) -> str:
    lines = ["| method | status | peak GPU memory (GiB) | tokens/s | train loss | wall s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['status']} | {r.get('peak_gib', '-')} | {r.get('tokens_per_s', '-')} | "
                     f"{r.get('train_loss', '-')} | {r.get('wall_s', '-')} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model, 2 steps, on CPU: checks the script itself")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seq", type=int)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: run one method, print its JSON
    parser.add_argument("--model", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    steps = args.steps or (2 if args.cpu_smoke else 20)
    seq = args.seq or (64 if args.cpu_smoke else 1024)

    if args.one:
        with tempfile.TemporaryDirectory() as out:
            row = run_one(args.one, args.model, steps, seq, args.batch, out, args.cpu_smoke)
        print("GPU_CHECK_ROW " + json.dumps(row), flush=True)
        return 0

    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --cpu-smoke to check the script on CPU", file=sys.stderr)
        return 2
    model = str(build_model("smoke" if args.cpu_smoke else "gpu"))
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        reason = skip_reason(method, args.cpu_smoke)
        if reason:
            rows.append({"method": method, "status": f"skipped ({reason})"})
            continue
        cmd = [sys.executable, __file__, "--one", method, "--model", model, "--steps", str(steps), "--seq", str(seq),
               "--batch", str(args.batch)] + (["--cpu-smoke"] if args.cpu_smoke else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        found = [line for line in proc.stdout.splitlines() if line.startswith("GPU_CHECK_ROW ")]
        if proc.returncode == 0 and found:
            rows.append(json.loads(found[-1].split(" ", 1)[1]))
        else:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:150]
            rows.append({"method": method, "status": f"failed: {last}"})
        print(f"gpu_check: {method}: {rows[-1]['status']}", flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(not r["status"].startswith("failed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
