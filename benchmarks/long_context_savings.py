"""What each long-context saving buys at one length: lathe's default decision, every layer checkpointed, and
checkpointing with the MLP in tiles, side by side (issue 20).

    .venv/bin/python benchmarks/long_context_savings.py [--length 32768] [--rounds 1] [--cap-gib 23]

The run is benchmarks/longest_cutoff.py's (a random Qwen2 with the 151,936 vocabulary, hidden
256, 4 layers, MLP 1024; LoRA r16 on every linear layer; pt on exactly `--length` tokens; one
step; fp32), measured the same way (peak RSS of the process tree, sampled every 50 ms, in a
capped cgroup). Variants differ only in the options below; with several rounds they alternate
and the medians are reported. Results: benchmarks/results/long_context_savings.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import longest_cutoff as lc  # noqa: E402  (the same model, data, configs and measurement)

VARIANTS = {
    "default (lathe decides)": {},
    "every layer checkpointed": {"disable_gradient_checkpointing": False, "tiled_mlp": False},
    "checkpointed + tiled MLP": {"disable_gradient_checkpointing": False, "tiled_mlp": True},
}


def run(name: str, overrides: dict, length: int, cap: int, round_: int) -> dict:
    run_dir = lc.RUNS_DIR / f"savings-{length}-{round_}-{list(VARIANTS).index(name)}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = lc.write_config("lathe", length, run_dir)
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), **overrides}, sort_keys=False))
    print(f"[savings] {name}, {length} tokens, round {round_}", flush=True)
    result = lc.measured([*lc.COMMANDS["lathe"], str(config)], run_dir / "log.txt", lc.run_env(), cap, 3 * 3600,
                         f"lathe-savings-{os.getpid()}")
    text = (run_dir / "log.txt").read_text(errors="replace")
    decision = next((line.split("] ", 1)[-1].split(";")[0] for line in text.splitlines()
                     if "gradient checkpointing" in line and line.startswith("[lathe]")), None)
    record = {"variant": name, "length": length, "round": round_, **result, "loss": lc.final_loss(run_dir / "out"),
              "decision": decision}
    if result["error"]:
        record["log_tail"] = text[-2000:]
    shutil.rmtree(run_dir / "out", ignore_errors=True)
    print(f"[savings]   peak {result['peak_rss'] / 2**30:.2f} GiB, {result['wall_s']} s, loss {record['loss']}, "
          f"{decision}", flush=True)
    return record


def markdown(records: list[dict], length: int) -> str:
    lines = [f"One step of pt at {length:,} tokens, LoRA r16, the 151,936-vocabulary Qwen2 of "
             "benchmarks/longest_cutoff.py; peak RSS of the process tree (median over rounds).", "",
             "| variant | peak RSS GiB | wall s | loss | lathe's log |", "|---|---:|---:|---:|---|"]
    for name in VARIANTS:
        rows = [r for r in records if r["variant"] == name and not r["error"]]
        if not rows:
            failed = next((r["error"] for r in records if r["variant"] == name), "not run")
            lines.append(f"| {name} | - | - | - | {failed} |")
            continue
        peak = statistics.median(r["peak_rss"] for r in rows) / 2**30
        wall = statistics.median(r["wall_s"] for r in rows)
        lines.append(f"| {name} | {peak:.2f} | {wall:.0f} | {rows[0]['loss']} | {rows[0]['decision']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cap-gib", type=float, default=23.0)
    parser.add_argument("--out", default=str(lc.RESULTS / "long_context_savings"))
    ns = parser.parse_args(argv)
    lc.prepare_model()
    lc.prepare_data([ns.length])
    cap = int(ns.cap_gib * 2**30)
    records = [run(name, overrides, ns.length, cap, r) for r in range(ns.rounds) for name, overrides in VARIANTS.items()]
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": lc.machine(), "records": records}, indent=1))
    out.with_suffix(".md").write_text(markdown(records, ns.length))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
