"""`lathe plan` against measured peak memory on a ~500M-parameter random llama (the large check of issue 9).

    .venv/bin/python benchmarks/plan_vs_measured.py [--methods lora,freeze,full] [--steps 2]

The model (hidden 1536, 20 layers, 12 heads, 4 KV heads, MLP 4096, lathe's demo vocabulary:
~507M parameters) is built once with lathe's tiny-model builder (cached, ~2 GB). Each method
trains `--steps` steps of 2 x 256 packed tokens in its own process through `lathe bench`'s worker
(the `lathe train` path), exactly as tests/efficiency/test_plan_vs_measured.py does at ~100M.
Results: benchmarks/results/plan_vs_measured.{json,md}. galore and qlora work too but are slow
here (GaLore's first step runs an SVD of every matrix); pass them in --methods to include them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

SIZE = dict(hidden_size=1536, num_layers=20, num_heads=12, num_kv_heads=4, intermediate_size=4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="lora,freeze,full")
    parser.add_argument("--steps", type=int, default=2)
    ns = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from lathe.config import load_config
    from lathe.efficiency.bench import parse_methods, run_method
    from lathe.efficiency.plan import meta_model, plan_totals
    from lathe.efficiency.variants import VARIANTS
    from lathe.model.memory import model_shape
    from lathe.testing.demo_tokenizer import build_demo_tokenizer
    from lathe.testing.tiny import build_tiny_model

    model = build_tiny_model("llama", build_demo_tokenizer(), **SIZE)
    work = Path(tempfile.mkdtemp(prefix="lathe-pvm-"))
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(model), "stage": "pt", "dataset": "lathe_docs", "dataset_dir": str(ROOT / "data"),
        "cutoff_len": 256, "per_device_train_batch_size": 2, "learning_rate": 1e-4, "output_dir": str(work / "out"),
    }))
    params = model_shape(meta_model(load_config(str(config)))).total
    rows = []
    for name in parse_methods(ns.methods):
        start = time.perf_counter()
        measured = run_method(name, str(config), [], ns.steps, work, perplexity=False)
        cfg = load_config(str(config), [f"{k}={v}" for k, v in VARIANTS[name].overrides.items()])
        plan = plan_totals(cfg, [name])[name]
        row = {"method": name, "plan": plan, "seconds": round(time.perf_counter() - start, 1),
               "load": os.getloadavg()[0], **measured}
        if "peak_memory" in measured:
            row["ratio"] = round(measured["peak_memory"] / plan, 3)
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("method", "plan", "peak_memory", "ratio", "seconds", "error")}),
              flush=True)
    lines = [f"model: {params:,} parameters ({', '.join(f'{k} {v}' for k, v in SIZE.items())}); "
             f"{ns.steps} steps of 2 x 256 packed tokens, fp32, one process per method", "",
             "| method | plan MiB | measured MiB (RSS over baseline) | measured / plan |", "|---|---:|---:|---:|"]
    for r in rows:
        measured = f"{r['peak_memory'] / 2**20:.0f}" if "peak_memory" in r else f"not run: {r.get('error')}"
        lines.append(f"| {r['method']} | {r['plan'] / 2**20:.0f} | {measured} | {r.get('ratio', '-')} |")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "plan_vs_measured.json").write_text(json.dumps({"parameters": params, "rows": rows}, indent=2))
    (out / "plan_vs_measured.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
