"""Cold and cached preprocessing of identity + alpaca_en_demo with the alpaca rows repeated N times.

    .venv/bin/python benchmarks/preprocess_scale.py --repeat 20

compare_peer.py times the 1,090 samples the issue names; there a fixed cost of well under a
second (reading two files, building Arrow tables, the Rust tokenizer's cold caches) is most of
either tool's time. This script shows the per-sample cost: each copy of an alpaca row gets its
copy number in the instruction, so every sample is a distinct text. Results go to
benchmarks/results/preprocess_xN.{json,md}; `--repeat 1`
is the issue's own data, timed over more rounds than compare_peer.py's single cold run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare_peer  # noqa: E402  (the shared benchmark setup: model, data copy, environments)


def scaled_data(data: Path, repeat: int) -> Path:
    """A copy of the data folder whose alpaca_en_demo holds every row `repeat` times, each copy distinct."""
    out = compare_peer.WORK / f"data-x{repeat}"
    out.mkdir(parents=True, exist_ok=True)
    info = json.loads((data / "dataset_info.json").read_text())
    for name, entry in info.items():
        rows = json.loads((data / entry["file_name"]).read_text())
        if name == "alpaca_en_demo":
            rows = [{**row, "instruction": f"{row['instruction']} (copy {k})"} for k in range(repeat) for row in rows]
        (out / entry["file_name"]).write_text(json.dumps(rows, ensure_ascii=False))
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    ns = parser.parse_args()
    data, model = compare_peer.prepare()
    scaled = scaled_data(data, ns.repeat) if ns.repeat > 1 else data
    env = compare_peer.benchmark_env(threads=1)
    results: dict[str, list[dict]] = {"lathe": [], "llamafactory": []}
    for _ in range(ns.rounds):  # alternating, like compare_peer
        for tool in results:
            results[tool].append(compare_peer.preprocess(tool, scaled, model, env))
            print(tool, results[tool][-1], flush=True)
    lines = [f"identity + alpaca_en_demo x {ns.repeat} ({results['lathe'][0].get('samples')} samples), "
             f"cold and cached preprocessing, {ns.rounds} alternating rounds (medians)", "",
             "| tool | cold s | cached s |", "|---|---:|---:|"]
    medians = {}
    for tool, runs in results.items():
        cold = sorted(r["cold"] for r in runs if r.get("cold"))
        cached = sorted(r["cached"] for r in runs if r.get("cached"))
        medians[tool] = (cold[len(cold) // 2] if cold else None, cached[len(cached) // 2] if cached else None)
        lines.append(f"| {tool} | {medians[tool][0]} | {medians[tool][1]} |")
    if all(medians[t][0] for t in medians):
        lines += ["", f"cold: lathe {medians['llamafactory'][0] / medians['lathe'][0]:.2f}x faster than LLaMA-Factory"]
    compare_peer.RESULTS.mkdir(exist_ok=True)
    (compare_peer.RESULTS / f"preprocess_x{ns.repeat}.json").write_text(json.dumps(
        {"machine": compare_peer.machine(), "repeat": ns.repeat, "runs": results}, indent=2))
    (compare_peer.RESULTS / f"preprocess_x{ns.repeat}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
