"""lathe at a git revision against lathe in this working tree, on compare_peer.py's job, alternating.

    .venv/bin/python benchmarks/compare_versions.py --base ae4f1b3 [--rounds 5] [--modes defaults]

For a change that must not slow lathe down or change what it learns (a refactor): the same run
(compare_peer.py's issue-9 job: tiny llama, LoRA SFT on alpaca_en_demo) with both versions,
alternating inside each round so a change in the machine's load hits both alike, then the
medians of the whole command, the training loop, the peak RSS and the loss per learned token
(scored by each version's own `lathe eval --ppl`). The revision is checked out with
`git worktree` into benchmarks/work/ and imported in place of the working tree through
PYTHONPATH (same virtual environment, same libraries). Results:
benchmarks/results/compare_versions.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare_peer as cp  # noqa: E402  (the job, its data, model and measurements)


def checkout(revision: str) -> Path:
    """The revision's source tree (a git worktree under benchmarks/work), made once."""
    folder = cp.WORK / f"lathe-{revision}"
    if not (folder / "src" / "lathe").is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run(["git", "-C", str(cp.ROOT), "worktree", "add", "--detach", str(folder), revision], check=True)
    return folder / "src"


def one_run(version: str, mode: str, data: Path, model: Path, round_: int, env: dict) -> dict:
    """compare_peer's lathe run with this version's environment (its run folder is reused by the other version)."""
    return {"version": version, **cp.one_run("lathe", mode, data, model, round_, env)}


def summary(runs: list[dict], base: str) -> str:
    lines = ["| mode | version | runs | whole command s | loop s | peak RSS MiB | train loss | loss per learned token |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for mode in dict.fromkeys(r["mode"] for r in runs):
        for version in (base, "working tree"):
            ok = [r for r in runs if r["mode"] == mode and r["version"] == version and "error" not in r]
            if not ok:
                lines.append(f"| {mode} | {version} | 0 | - | - | - | - | - |")
                continue
            med = {k: statistics.median(r[k] for r in ok) for k in ("wall_s", "train_runtime", "max_rss", "train_loss",
                                                                     "loss_per_token")}
            lines.append(f"| {mode} | {version} | {len(ok)} | {med['wall_s']:.2f} | {med['train_runtime']:.2f} | "
                         f"{med['max_rss'] / 2**20:.0f} | {med['train_loss']:.6f} | {med['loss_per_token']:.6f} |")
    lines += ["", "Medians over the rounds; the two versions alternate inside each round."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare against (e.g. a commit id)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default="defaults", help=f"comma list of {', '.join(cp.MODES)}")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS (0: torch's default)")
    ns = parser.parse_args()
    data, model = cp.prepare()
    env = cp.benchmark_env(ns.threads)
    versions = {ns.base: {**env, "PYTHONPATH": str(checkout(ns.base))}, "working tree": env}
    runs = []
    info = {**cp.machine(), "load_before": cp.load()}
    for round_ in range(ns.rounds):
        order = list(versions) if round_ % 2 == 0 else list(reversed(versions))
        for mode in ns.modes.split(","):
            for version in order:
                record = one_run(version, mode, data, model, round_, versions[version])
                record["load"] = cp.load()
                runs.append(record)
                print(json.dumps(record)[:400], flush=True)
    info["load_after"] = cp.load()
    cp.RESULTS.mkdir(exist_ok=True)
    (cp.RESULTS / "compare_versions.json").write_text(json.dumps({"machine": info, "base": ns.base, "runs": runs},
                                                                 indent=2))
    text = f"machine: {json.dumps(info)}\n\n" + summary(runs, ns.base)
    (cp.RESULTS / "compare_versions.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
