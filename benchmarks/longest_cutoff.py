"""The longest `cutoff_len` lathe and LLaMA-Factory 0.9.5 each train for one step under a memory cap (issue 20).

    bash benchmarks/peers/setup_llamafactory.sh         # once: the peer in its own venv
    .venv/bin/python benchmarks/longest_cutoff.py [--cap-gib 23] [--tools lathe,peer] [--resume]
    .venv/bin/python benchmarks/longest_cutoff.py --lengths 4096,8192 --cap-gib 12     # a quick check

The run: a random-init Qwen2 (hidden 256, 4 layers, 4 heads, 2 KV heads, MLP 1024) with the real
Qwen vocabulary size 151,936 (the output layer is what long contexts make big: its logits are
length x 151,936 floats), fp32 on the CPU, LoRA rank 16 on every linear layer, stage `pt`, batch
1, one step, one packed sample of exactly `cutoff_len` tokens (the data of each length holds
exactly that many tokens, as both tools count them: text + eos per row). Everything else is each
tool's own default: neither config names gradient checkpointing or any other memory option
(LLaMA-Factory checkpoints by default; lathe decides itself).

A run is over the limit when it dies (out of memory, killed, nonzero exit) or when the resident
memory of its whole process tree, sampled every 50 ms, passes `--cap-gib`; the tree is killed at
that moment. Each run also sits in a cgroup v1 memory group capped at the same size, so no run
can take the machine down even between two samples (this needs root and /sys/fs/cgroup/memory).

Search: lathe doubles from 4,096 up to 65,536 (and stops there); the peer doubles from 4,096
and then bisects between its last fit and its first failure to 512 tokens. lathe is then also run
at the peer's longest length, to compare the two peaks there. `--resume` keeps the runs already
in the JSON that were made under the same cap. Results: benchmarks/results/longest_cutoff.{json,md}
and docs/images/longest_cutoff.png (peak memory against length).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work"
MODEL_DIR = WORK / "longctx-model"
DATA_DIR = WORK / "longctx-data"
RUNS_DIR = WORK / "longctx-runs"
RESULTS = HERE / "results"
PLOT = ROOT / "docs" / "images" / "longest_cutoff.png"
TOKENIZER = Path(os.environ.get("LATHE_SHARED_TOKENIZERS", ROOT.parent / "shared" / "tokenizers")) / \
    "qwen2-instruct-boundless"
PEER_VENV = HERE / "peers" / ".venv-llamafactory"
COMMANDS = {
    "lathe": [str(ROOT / ".venv" / "bin" / "python"), "-m", "lathe", "train"],
    "peer": [str(PEER_VENV / "bin" / "llamafactory-cli"), "train"],
}
NAMES = {"lathe": "lathe", "peer": "LLaMA-Factory 0.9.5"}
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")

MODEL = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 1024}
VOCAB = 151_936  # Qwen2 / Qwen2.5's embedding rows (the tokenizer's 151,646 tokens, padded)
MAX_POSITIONS = 131_072  # room for every searched length, so no tool rescales RoPE or refuses the length
RUN = {
    "stage": "pt", "do_train": True, "finetuning_type": "lora", "lora_rank": 16, "lora_target": "all",
    "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "max_steps": 1, "learning_rate": 1.0e-4,
    "logging_steps": 1, "save_strategy": "no", "report_to": "none", "overwrite_output_dir": True, "seed": 42,
}
START, LATHE_MAX, RESOLUTION = 4096, 65_536, 512
SAMPLE_S = 0.05


# ---------------------------------------------------------------- model and data

def prepare_model() -> Path:
    """The random-init Qwen2 with its tokenizer, built once (lathe's tiny-model builder, cached)."""
    if (MODEL_DIR / "config.json").exists():
        return MODEL_DIR
    sys.path.insert(0, str(ROOT / "src"))
    from lathe.testing.tiny import build_tiny_model

    built = build_tiny_model("qwen2", TOKENIZER, **MODEL, vocab_size=VOCAB, max_position_embeddings=MAX_POSITIONS)
    tmp = MODEL_DIR.with_name(MODEL_DIR.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(built, tmp)
    tmp.rename(MODEL_DIR)
    return MODEL_DIR


def paragraphs() -> list[str]:
    """Plain English text to train on: the paragraphs of the repository's docs, in a fixed order."""
    texts = []
    for path in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]:
        texts += [p.strip() for p in path.read_text().split("\n\n") if len(p.strip()) > 40]
    return texts


def prepare_data(lengths: list[int]) -> Path:
    """One dataset per length whose rows hold exactly `length` tokens in all, each row counted as text + eos.

    Both tools tokenize a pt row the same way for this tokenizer (no bos; the text's tokens,
    then eos) and cut the concatenation into blocks of cutoff_len, so each tool sees exactly
    one block of exactly `length` tokens. The last row is a filler of single-token words that
    makes the total exact; the totals are checked by encoding the rows as each tool does.
    """
    from transformers import AutoTokenizer

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    info_path = DATA_DIR / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    tok = None
    for length in lengths:
        name, file = f"longctx_{length}", DATA_DIR / f"longctx_{length}.jsonl"
        if name in info and file.exists():
            continue
        tok = tok or AutoTokenizer.from_pretrained(MODEL_DIR)
        rows, total = [], 0
        for text in itertools.cycle(paragraphs()):
            n = len(tok(text, add_special_tokens=True)["input_ids"]) + 1
            if length - total - n < 3:  # room left for a filler row of at least one word + eos
                break
            rows.append(text)
            total += n
        left = length - total - 1  # filler words, then its eos
        rows.append("the" + " the" * (left - 1))
        lathe_count = sum(len(tok(t, add_special_tokens=True)["input_ids"]) + 1 for t in rows)
        peer_count = sum(len(tok(t + tok.eos_token, add_special_tokens=False)["input_ids"]) for t in rows)
        if lathe_count != length or peer_count != length:
            raise RuntimeError(f"{file}: rows hold {lathe_count} (lathe) / {peer_count} (peer) tokens, not {length}")
        file.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
        info[name] = {"file_name": file.name, "columns": {"prompt": "text"}}
        info_path.write_text(json.dumps(info, indent=2))
    return DATA_DIR


def write_config(tool: str, length: int, run_dir: Path) -> Path:
    config = {"model_name_or_path": str(MODEL_DIR), "dataset_dir": str(DATA_DIR), "dataset": f"longctx_{length}",
              "cutoff_len": length, **RUN, "output_dir": str(run_dir / "out")}
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---------------------------------------------------------------- one capped, measured run

class MemoryCgroup:
    """A cgroup v1 memory group with a hard limit: the kernel's backstop behind the sampling monitor."""

    def __init__(self, name: str, limit: int):
        if not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
            raise SystemExit(f"no cgroup v1 memory controller at {CGROUP_ROOT}: this benchmark caps every run with one")
        self.path = CGROUP_ROOT / name
        if self.path.exists():
            self.path.rmdir()
        try:
            self.path.mkdir()
        except PermissionError as err:
            raise SystemExit(f"cannot create {self.path} ({err}); run as root") from err
        (self.path / "memory.limit_in_bytes").write_text(str(limit))
        memsw = self.path / "memory.memsw.limit_in_bytes"
        if memsw.exists():  # no swapping past the cap either
            memsw.write_text(str(limit))

    def join(self) -> None:
        """Run in the child between fork and exec: move it (and so all it starts) into the group."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def stats(self) -> dict:
        oom = (self.path / "memory.oom_control").read_text()
        kills = re.search(r"oom_kill (\d+)", oom)
        return {"cgroup_max_usage": int((self.path / "memory.max_usage_in_bytes").read_text()),
                "cgroup_oom_kills": int(kills.group(1)) if kills else None}

    def remove(self) -> None:
        for _ in range(50):  # the killed tree leaves the group a moment after it exits
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def tree_rss(root) -> int:
    """Resident bytes of a process and all its descendants."""
    import psutil

    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def kill_tree(root) -> None:
    import psutil

    procs = [root]
    try:
        procs += root.children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def measured(command: list[str], log: Path, env: dict, cap: int, timeout: float, group: str) -> dict:
    """Run `command` in a capped cgroup; sample its tree's RSS every 50 ms and kill it past `cap` or `timeout`."""
    import psutil

    cgroup = MemoryCgroup(group, cap)
    peak, verdict = 0, None
    start = time.perf_counter()
    try:
        with open(log, "w") as out:
            # preexec_fn: the child must be in the group before it allocates anything (this process runs no threads)
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=cgroup.join, start_new_session=True)  # noqa: PLW1509
            root = psutil.Process(proc.pid)
            while proc.poll() is None:
                try:
                    rss = tree_rss(root)
                except psutil.NoSuchProcess:
                    break
                peak = max(peak, rss)
                if rss > cap:
                    verdict = f"over the cap: tree RSS {rss / 2**30:.2f} GiB > {cap / 2**30:g} GiB (killed)"
                elif time.perf_counter() - start > timeout:
                    verdict = f"timed out after {timeout:.0f} s (killed)"
                if verdict:
                    kill_tree(root)
                    break
                time.sleep(SAMPLE_S)
            rc = settle(proc)
        wall = time.perf_counter() - start
        stats = cgroup.stats()
    finally:
        cgroup.remove()
    return {"rc": rc, "wall_s": round(wall, 1), "peak_rss": peak, **stats, "error": outcome(verdict, stats, rc, cap)}


def settle(proc: subprocess.Popen) -> int:
    """Wait for the run, then kill anything it left behind in its session; its exit code."""
    rc = proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return rc


def outcome(verdict: str | None, stats: dict, rc: int, cap: int) -> str | None:
    """Why a run is over the limit (the monitor's verdict, the kernel's OOM kill, a failed exit), or None."""
    if verdict is None and stats["cgroup_oom_kills"]:
        return f"killed by the kernel at the cgroup limit ({cap / 2**30:g} GiB)"
    if verdict is None and rc:
        return f"exit code {rc}"
    return verdict


def final_loss(out: Path) -> float | None:
    results = out / "train_results.json"
    if results.exists():
        loss = json.loads(results.read_text()).get("train_loss")
        if loss is not None:
            return round(float(loss), 4)
    log = out / "trainer_log.jsonl"
    if log.exists():
        losses = [json.loads(line).get("loss") for line in log.read_text().splitlines() if line.strip()]
        losses = [x for x in losses if x is not None]
        return round(float(losses[-1]), 4) if losses else None
    return None


def one_run(tool: str, length: int, cap: int, timeout: float, env: dict) -> dict:
    run_dir = RUNS_DIR / f"{tool}-{length}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = write_config(tool, length, run_dir)
    log = run_dir / "log.txt"
    print(f"[longest_cutoff] {tool} {length}: running ({run_dir})", flush=True)
    result = measured([*COMMANDS[tool], str(config)], log, env, cap, timeout, f"lathe-longctx-{os.getpid()}-{tool}")
    text = log.read_text(errors="replace")
    examples = re.findall(r"Num examples = ([\d,]+)|\[lathe\] data: ([\d,]+) samples", text)
    seen = re.findall(r"num_input_tokens_seen\W+(\d+)", text)
    lathe_sample = re.search(r"\[lathe\] data: [\d,]+ samples, ([\d,]+) tokens", text)
    peer_sample = re.search(r"input_ids:\n\[([\d, ]+)\]", text)  # the peer prints its first sample
    sample = int(lathe_sample.group(1).replace(",", "")) if lathe_sample else \
        len(peer_sample.group(1).split(",")) if peer_sample else None
    record = {"tool": tool, "length": length, "cap_gib": cap / 2**30, **result,
              "fits": result["error"] is None and result["peak_rss"] <= cap, "loss": final_loss(run_dir / "out"),
              "examples": int("".join(examples[-1]).replace(",", "")) if examples else None,
              "tokens_seen": int(seen[-1]) if seen else None, "sample_tokens": sample,
              "gradient_checkpointing": checkpointing(tool, text)}
    if record["error"]:
        record["log_tail"] = text[-2500:]
    shutil.rmtree(run_dir / "out", ignore_errors=True)  # the adapter; the log and config stay
    print(f"[longest_cutoff] {tool} {length}: {'fits' if record['fits'] else 'OVER: ' + str(record['error'])}, "
          f"peak {record['peak_rss'] / 2**30:.2f} GiB, {record['wall_s']} s, loss {record['loss']}", flush=True)
    return record


def checkpointing(tool: str, log: str) -> bool | None:
    """Whether the run used gradient checkpointing, as its log says."""
    if tool == "lathe":
        m = re.search(r"gradient checkpointing (on|off|enabled|disabled)", log)
        return m.group(1) in ("on", "enabled") if m else None
    if "Gradient checkpointing enabled" in log:
        return True
    return False if "Gradient checkpointing" not in log else None


# ---------------------------------------------------------------- search

class Runner:
    """Runs (tool, length) once per cap, reusing resumed records, and saves after every run."""

    def __init__(self, cap: int, timeout: float, env: dict, records: list[dict], save):
        self.cap, self.timeout, self.env, self.records, self.save = cap, timeout, env, records, save

    def find(self, tool: str, length: int) -> dict | None:
        return next((r for r in self.records if r["tool"] == tool and r["length"] == length
                     and abs(r["cap_gib"] - self.cap / 2**30) < 1e-9), None)

    def fits(self, tool: str, length: int) -> bool:
        record = self.find(tool, length)
        if record is None:
            prepare_data([length])
            record = one_run(tool, length, self.cap, self.timeout, self.env)
            self.records.append(record)
            self.save()
        return record["fits"]


def search_lathe(runner: Runner, top: int = LATHE_MAX) -> None:
    length = START
    while length <= top and runner.fits("lathe", length):
        length *= 2


def search_peer(runner: Runner) -> int | None:
    """Double from 4,096 until a failure, then bisect to RESOLUTION; below 4,096 if 4,096 already fails."""
    fit, fail, length = None, None, START
    while fail is None:
        if runner.fits("peer", length):
            fit, length = length, length * 2
        else:
            fail = length
    if fit is None:  # 4,096 fails: halve until something fits
        length = fail // 2
        while length >= RESOLUTION and not runner.fits("peer", length):
            fail, length = length, length // 2
        fit = length if length >= RESOLUTION else None
        if fit is None:
            return None
    while fail - fit > RESOLUTION:
        mid = (fit + fail) // 2 // RESOLUTION * RESOLUTION
        if runner.fits("peer", mid):
            fit = mid
        else:
            fail = mid
    return fit


def longest(records: list[dict], tool: str, cap_gib: float) -> dict | None:
    fitting = [r for r in records if r["tool"] == tool and r["fits"] and abs(r["cap_gib"] - cap_gib) < 1e-9]
    return max(fitting, key=lambda r: r["length"]) if fitting else None


def summarize(records: list[dict], cap_gib: float, full_search: bool) -> dict:
    lathe, peer = longest(records, "lathe", cap_gib), longest(records, "peer", cap_gib)
    out = {"full_search": full_search, "cap_gib": cap_gib,
           "lathe_longest": lathe and lathe["length"], "peer_longest": peer and peer["length"],
           "lathe_capped_by_search": bool(lathe and lathe["length"] >= LATHE_MAX)}
    if lathe and peer:
        out["ratio"] = round(lathe["length"] / peer["length"], 2)
        at = next((r for r in records if r["tool"] == "lathe" and r["length"] == peer["length"] and r["fits"]
                   and abs(r["cap_gib"] - cap_gib) < 1e-9), None)
        if at:
            out["lathe_peak_at_peer_longest"] = at["peak_rss"]
            out["peer_peak_at_peer_longest"] = peer["peak_rss"]
            out["memory_ratio_at_peer_longest"] = round(at["peak_rss"] / peer["peak_rss"], 3)
        out["targets"] = {"ratio >= 4": out["ratio"] >= 4,
                          "memory ratio <= 0.5": out.get("memory_ratio_at_peer_longest", 1e9) <= 0.5}
    return out


# ---------------------------------------------------------------- report

def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(total / 2**30, 1), "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load": os.getloadavg()}


def markdown(doc: dict) -> str:
    s = doc["summary"]
    def gib(b: int | None) -> str:
        return f"{b / 2**30:.2f}" if b else "-"

    lines = [
        f"machine: {json.dumps(doc['machine'])}", "",
        (f"Model: random-init Qwen2 ({', '.join(f'{k} {v}' for k, v in MODEL.items())}, vocab {VOCAB:,}), fp32, CPU; "
         f"LoRA r16 on all linear layers; stage pt, batch 1, one step on one packed sample of exactly cutoff_len "
         f"tokens; each tool's own defaults otherwise. Over the limit: died, or process-tree RSS > {s['cap_gib']:g} GiB."),
        "" if s["full_search"] else "**Not a full search**: only the lengths listed were run.", "",
        "| tool | longest cutoff_len that fits |", "|---|---:|",
        f"| lathe | {s['lathe_longest'] or '-'}{' (the search stops at 65,536)' if s['lathe_capped_by_search'] else ''} |",
        f"| {NAMES['peer']} | {s['peer_longest'] or '-'} |", "",
    ]
    if "ratio" in s:
        among = "" if s["full_search"] else " among the lengths run"
        lines.append(f"- lathe / peer longest length{among}: **{s['ratio']}x** (target >= 4x)")
    if "memory_ratio_at_peer_longest" in s:
        lines.append(f"- peak memory at the peer's longest length ({s['peer_longest']}): lathe "
                     f"{gib(s['lathe_peak_at_peer_longest'])} GiB vs peer {gib(s['peer_peak_at_peer_longest'])} GiB = "
                     f"**{s['memory_ratio_at_peer_longest']}x** (target <= 0.5x)")
    header = ("| tool | cutoff_len | fits | peak tree RSS GiB | cgroup max usage GiB | wall s | loss | "
              "tokens in the sample | grad. checkpointing | error |")
    lines += ["", header, "|---|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in sorted(doc["runs"], key=lambda r: (r["tool"], r["length"])):
        lines.append(f"| {r['tool']} | {r['length']} | {'yes' if r['fits'] else 'no'} | {gib(r['peak_rss'])} | "
                     f"{gib(r.get('cgroup_max_usage'))} | {r['wall_s']} | {r['loss']} | {r.get('sample_tokens') or '-'} | "
                     f"{r.get('gradient_checkpointing')} | {r['error'] or ''} |")
    lines += ["", ("Peak tree RSS: the resident memory of the tool's whole process tree, sampled every 50 ms (pages "
                   "shared by two processes count twice). The cgroup's maximum usage counts shared pages once but adds "
                   "page cache (the model and data files read), so the two differ a little.")]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for tool, color in (("lathe", "tab:blue"), ("peer", "tab:orange")):
        runs = sorted((r for r in doc["runs"] if r["tool"] == tool), key=lambda r: r["length"])
        ok = [r for r in runs if r["fits"]]
        bad = [r for r in runs if not r["fits"]]
        ax.plot([r["length"] for r in ok], [r["peak_rss"] / 2**30 for r in ok], "o-", color=color, label=NAMES[tool])
        if bad:
            ax.plot([r["length"] for r in bad], [max(r["peak_rss"], 0) / 2**30 for r in bad], "x", color=color,
                    markersize=9, label=f"{NAMES[tool]}: over the limit")
    ax.axhline(doc["summary"]["cap_gib"], color="gray", linestyle="--", label=f"cap {doc['summary']['cap_gib']:g} GiB")
    ax.set_xscale("log", base=2)
    lengths = sorted({r["length"] for r in doc["runs"]})
    ax.set_xticks(lengths, [f"{n:,}" for n in lengths], rotation=45 if len(lengths) > 6 else 0, fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("cutoff_len (tokens, one packed sample)")
    ax.set_ylabel("peak memory, process tree RSS (GiB)")
    ax.set_title("One LoRA step, Qwen2 vocab 151,936, fp32 CPU")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- main

def run_env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", DISABLE_VERSION_CHECK="1")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM"):  # each tool's own default
        env.pop(name, None)
    return env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", help="comma list: run only these lengths (no search)")
    parser.add_argument("--tools", default="lathe,peer", help="comma list of lathe, peer")
    parser.add_argument("--cap-gib", type=float, default=23.0, help="memory limit per run (GiB)")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds before a run is killed")
    parser.add_argument("--resume", action="store_true", help="reuse the runs in the JSON made under the same cap")
    parser.add_argument("--out", type=Path, default=RESULTS / "longest_cutoff.json", help="results JSON (md beside)")
    parser.add_argument("--plot", type=Path, default=PLOT, help="the PNG of peak memory against length")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if unknown := set(tools) - set(COMMANDS):
        raise SystemExit(f"--tools: unknown {sorted(unknown)}; choose from {sorted(COMMANDS)}")
    if "peer" in tools and not Path(COMMANDS["peer"][0]).exists():
        raise SystemExit(f"{COMMANDS['peer'][0]} is missing: run benchmarks/peers/setup_llamafactory.sh first")
    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else None
    cap = int(args.cap_gib * 2**30)
    os.environ["HF_HUB_OFFLINE"] = "1"

    records: list[dict] = []
    if args.resume and args.out.exists():
        records = json.loads(args.out.read_text()).get("runs", [])
    doc = {"machine": machine(), "setup": {"model": MODEL, "vocab": VOCAB, "run": RUN, "commands": COMMANDS},
           "runs": records, "summary": {}}

    def save() -> None:
        doc["summary"] = summarize(records, cap / 2**30, lengths is None and set(tools) == set(COMMANDS))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1))
        args.out.with_suffix(".md").write_text(markdown(doc))
        plot(doc, args.plot)

    prepare_model()
    runner = Runner(cap, args.timeout, run_env(), records, save)
    if lengths:
        for tool in tools:
            for length in lengths:
                runner.fits(tool, length)
    else:
        peer_longest = search_peer(runner) if "peer" in tools else None
        if "lathe" in tools:
            search_lathe(runner)
            if peer_longest:  # lathe's memory where the peer stops
                runner.fits("lathe", peer_longest)
    save()
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
