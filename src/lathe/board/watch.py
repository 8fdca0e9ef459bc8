"""What a training run uses while it trains: memory, tokens/s, and for GRPO / RLOO the rewards and samples.

The Train tab's timer asks `Watch.update` once a second. Everything it shows is read from outside
the run, so a run started from a shell shows the same as one the Board started:
- memory: the run's processes (the one started and all its descendants: torchrun's workers, data
  workers) from /proc; on a GPU the memory `nvidia-smi` reports for those processes, else their
  resident memory against the machine's memory (or the memory cgroup's limit, in a container);
- tokens/s: the `throughput` field of the newest record of `trainer_log.jsonl`;
- rewards and samples: the `reward` and `rewards/<function>/mean` fields of that log, and the last
  logging step's sampled completions in `completions.jsonl` (train/grpo.py writes both; monitor.py
  reads these files, this module the processes and draws the components).

A run the Board did not start has no process handle; `find_run_pid` looks for a `lathe train`
process of this user whose config (or `output_dir=` override) names the folder. Nothing here
needs psutil or a GPU library: /proc and, where installed, the `nvidia-smi` command.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .locales import t
from .monitor import completions_frame, latest_completions, log_is_live, read_log, reward_frame, throughput_text
from .runner import CONFIG_NAME

RUN_CONFIG = "lathe_config.yaml"  # train/base.py's CONFIG_FILE: the resolved config a run writes to output_dir
PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63
GiB, MiB = 1024**3, 1024**2
SMI_TIMEOUT = 3.0  # seconds; a hung driver must not hang the Board's timer


# ---------------------------------------------------------------- processes and memory


def _children(proc: Path = PROC) -> dict[int, list[int]]:
    """parent pid -> child pids, from every /proc/<pid>/stat (read once per call)."""
    out: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after its last ")"
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1].isdigit():
            out.setdefault(int(fields[1]), []).append(int(entry.name))
    return out


def process_tree(pid: int, proc: Path = PROC) -> list[int]:
    """`pid` and all its descendants that are alive now; [] when `pid` is gone."""
    if not (proc / str(pid)).is_dir():
        return []
    children, tree, todo = _children(proc), [], [pid]
    while todo:
        current = todo.pop()
        if current in tree:
            continue
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def process_memory(pid: int, proc: Path = PROC) -> int:
    """Bytes one process holds in RAM: its proportional share (Pss, so pages forked workers share are
    counted once over a tree), else its resident set (VmRSS); 0 when it is gone or unreadable."""
    for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            for line in (proc / str(pid) / name).read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return 0


def process_tree_rss(pid: int, proc: Path = PROC) -> int:
    """Bytes in RAM of `pid` and all its descendants (see `process_memory`)."""
    return sum(process_memory(p, proc) for p in process_tree(pid, proc))


def cgroup_limit(proc_cgroup: Path = PROC / "self" / "cgroup", root: Path = CGROUP_ROOT) -> int | None:
    """The tightest memory limit of this process's cgroup and its parents (v1 or v2); None without one.

    (`lathe.model.memory.cgroup_available` gives the headroom left; the gauge needs the limit itself.)
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    where = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            where = (root / "memory", path, "memory.limit_in_bytes")
    if where is None:
        v2 = [line[3:] for line in lines if line.startswith("0::")]
        if not v2:
            return None
        where = (root, v2[0], "memory.max")
    base, path, limit_file = where
    parts = [p for p in path.strip("/").split("/") if p]
    best = None
    for depth in range(len(parts), -1, -1):
        try:
            raw = (base.joinpath(*parts[:depth]) / limit_file).read_text().strip()
            if raw == "max" or int(raw) >= NO_LIMIT:
                continue
        except (OSError, ValueError):
            continue
        best = int(raw) if best is None else min(best, int(raw))
    return best


def machine_memory(meminfo: Path = PROC / "meminfo") -> int | None:
    """The RAM a run here may use: the machine's MemTotal, capped by the memory cgroup's limit."""
    total = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    limit = cgroup_limit()
    if limit is not None:
        total = limit if total is None else min(total, limit)
    return total


def nvidia_smi(args: list[str]) -> str | None:
    """`nvidia-smi <args>`'s output; None where it is not installed, fails or hangs (no GPU, no driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *args], check=False, capture_output=True, text=True, timeout=SMI_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _csv_rows(text: str | None) -> list[list[str]]:
    return [[cell.strip() for cell in line.split(",")] for line in (text or "").splitlines() if line.strip()]


_GPU_TOTALS: dict[str, int] = {}  # GPU uuid -> bytes


def gpu_memory(pids: list[int], query: Callable[[list[str]], str | None] = nvidia_smi) -> tuple[int, int] | None:
    """(bytes used by `pids`, bytes on the GPUs they use), from nvidia-smi; None when none of them holds
    GPU memory, or there is no nvidia-smi (a CPU machine), or it fails.

    Inside a container whose pid namespace differs from the driver's, nvidia-smi reports pids this
    Board cannot match: then this is None too, and the gauge shows RAM.
    """
    wanted = {str(p) for p in pids}
    if not wanted:
        return None
    apps = _csv_rows(query(["--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv,noheader,nounits"]))
    used, gpus = 0, set()
    for row in apps:
        if len(row) >= 3 and row[0] in wanted and row[2].isdigit():
            used += int(row[2]) * MiB
            gpus.add(row[1])
    if not gpus:
        return None
    if not gpus <= _GPU_TOTALS.keys():  # a GPU's size does not change: asked once per GPU, not every second
        _GPU_TOTALS.update({row[0]: int(row[1]) * MiB for row in _csv_rows(query([
            "--query-gpu=uuid,memory.total", "--format=csv,noheader,nounits"])) if len(row) >= 2 and row[1].isdigit()})
    total = sum(_GPU_TOTALS.get(g, 0) for g in gpus)
    return used, total or None


# ---------------------------------------------------------------- finding a run started from a shell


def lathe_train_args(argv: list[str]) -> list[str] | None:
    """The arguments after `lathe train` in a command line (`lathe train`, `python -m lathe train`,
    torchrun's `... -m lathe train`); None for any other command."""
    for i in range(1, len(argv)):
        if argv[i] == "train" and Path(argv[i - 1]).name == "lathe":
            return argv[i + 1:]
    return None


def train_output_dir(args: list[str], cwd: Path) -> Path | None:
    """The output_dir `lathe train <args>` writes, run in `cwd`: an `output_dir=` override, else the
    config file's key (both relative to `cwd`); None when neither says."""
    args = [a for a in args if not a.startswith("--")]
    config = args[0] if args and "=" not in args[0] else None
    found = None
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key.strip() == "output_dir":
            found = value.strip()
    if found is None and config:
        try:
            data = yaml.safe_load((cwd / config).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            return None
        found = data.get("output_dir") if isinstance(data, dict) else None
    if not found:
        return None
    return (cwd / Path(str(found)).expanduser()).resolve()


_OUTPUT_OF: dict[tuple[int, bytes], Path | None] = {}  # (pid, cmdline) -> its output_dir: a config is read once


def find_run_pid(output_dir: str | Path, proc: Path = PROC) -> int | None:
    """The pid of a `lathe train` process of this user writing `output_dir` (the outermost one when
    a launcher and its workers all match); None when there is none.

    Only this user's processes are looked at, and of those only command lines naming `lathe` and
    `train`; their config files are read with yaml.safe_load, once per process.
    """
    target = Path(output_dir).expanduser().resolve()
    uid, matches = os.getuid(), {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"lathe" not in raw or b"train" not in raw:
            continue
        pid, cache_key = int(entry.name), (int(entry.name), raw)
        if cache_key not in _OUTPUT_OF:
            args = lathe_train_args([a.decode(errors="replace") for a in raw.split(b"\0") if a])
            try:
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:
                continue
            if len(_OUTPUT_OF) > 512:
                _OUTPUT_OF.clear()
            _OUTPUT_OF[cache_key] = None if args is None else train_output_dir(args, cwd)
        if _OUTPUT_OF[cache_key] == target:
            try:
                stat = (entry / "stat").read_text()
                matches[pid] = int(stat.rsplit(")", 1)[-1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    roots = [pid for pid, parent in matches.items() if parent not in matches]
    return min(roots) if roots else None


def folder_is_live(output_dir: str | Path | None) -> bool:
    """Whether some run writes `output_dir` now (a shell's, another Board's): its log is live, or a
    `lathe train` process names it (still loading the model, or between two slow logging steps)."""
    if not output_dir:
        return False
    return log_is_live(output_dir) or find_run_pid(output_dir) is not None


# ---------------------------------------------------------------- what the tab shows


def size_text(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def gauge_html(used: int | None, total: int | None, label: str, lang: str = "en", source: str = "",
               peak: int | None = None) -> str:
    """A memory bar: `label: used / total (share)`; `used` None shows that nothing is measured now.

    The numbers are kept as data attributes (bytes; empty when unknown) for scripts and the browser
    test: data-used, data-total, data-peak, data-source (gpu, ram or none).
    """
    share = used / total * 100 if used is not None and total else 0.0
    if used is None:
        text = f"{label}: {t('watch_unknown', lang)}"
    else:
        text = f"{label}: {size_text(used)}" + (f" / {size_text(total)} ({share:.0f}%)" if total else "")
        if peak:
            text += f" · {t('watch_peak', lang)} {size_text(peak)}"
    color = "#16a34a" if share < 75 else "#d97706" if share < 90 else "#dc2626"
    attrs = {"used": used, "total": total, "peak": peak, "source": source or ("none" if used is None else "")}
    data = " ".join(f'data-{k}="{html.escape("" if v is None else str(v))}"' for k, v in attrs.items())
    return (
        f'<div class="lathe-gauge" {data}>'
        f'<div style="background:#e5e7eb;border-radius:4px;height:10px">'
        f'<div style="background:{color};width:{min(max(share, 0.0), 100.0):.1f}%;height:10px;border-radius:4px">'
        f"</div></div><div>{html.escape(text)}</div></div>"
    )


def scores_samples(stage: str | None) -> bool:
    """Whether a stage samples completions and scores them with reward functions (GRPO, RLOO): the
    stages whose own options include `reward_funcs`, asked of the registry rather than named here."""
    from ..registry import STAGES

    return bool(stage) and stage in STAGES and "reward_funcs" in STAGES[stage].options


_STAGE_OF: dict[tuple[str, float], str | None] = {}


def config_stage(path: Path) -> str | None:
    """`stage` of a config file (the Board's config.yaml or a run's lathe_config.yaml); None without one."""
    try:
        key = (str(path), path.stat().st_mtime)
    except OSError:
        return None
    if key not in _STAGE_OF:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            data = None
        if len(_STAGE_OF) > 256:
            _STAGE_OF.clear()
        _STAGE_OF[key] = str(data["stage"]) if isinstance(data, dict) and data.get("stage") else None
    return _STAGE_OF[key]


# ---------------------------------------------------------------- the components


@dataclass
class Watch:
    """The Train tab's run gauges; `update` returns one update per component, in `outputs` order."""

    memory: Any
    throughput: Any
    rewards: Any
    samples: Any
    peaks: dict[str, int] = field(default_factory=dict)  # output folder -> the most memory seen, this Board's life

    @property
    def outputs(self) -> list[Any]:
        return [self.memory, self.throughput, self.rewards, self.samples]

    def memory_html(self, pid: int | None, folder: str | None, lang: str) -> str:
        if pid is None:
            peak = self.peaks.get(folder or "")
            return gauge_html(None, None, t("watch_memory", lang), lang, peak=peak)
        tree = process_tree(pid)
        gpu = gpu_memory(tree) if tree else None
        if gpu is not None:
            used, total, label, source = gpu[0], gpu[1], t("watch_gpu_memory", lang), "gpu"
        else:
            used, total, label, source = sum(process_memory(p) for p in tree), machine_memory(), \
                t("watch_ram", lang), "ram"
        if folder:
            self.peaks[folder] = max(self.peaks.get(folder, 0), used)
        return gauge_html(used, total, label, lang, source, self.peaks.get(folder or ""))

    def update(self, run: Any, output_dir: str | None, stage: str | None = None, lang: str = "en") -> list[Any]:
        """Updates for `outputs`. `run` is the Board's Run (None for a run started elsewhere: its
        process is then looked up by folder); `stage` (the form's) is used when no config of the run
        says it."""
        import gradio as gr

        folder = run.key if run is not None else (str(Path(output_dir).expanduser().resolve()) if output_dir else None)
        if folder is None:
            return [gauge_html(None, None, t("watch_memory", lang), lang), "—", gr.update(visible=False),
                    gr.update(visible=False)]
        records = read_log(folder)
        if run is not None:
            pid = run.process.pid if run.running() else None
            stage = config_stage(run.folder / CONFIG_NAME) or stage
        else:
            pid = find_run_pid(folder)
            stage = config_stage(Path(folder) / RUN_CONFIG) or stage
        out = [self.memory_html(pid, folder, lang), throughput_text(records)]
        if scores_samples(stage):
            out += [gr.update(value=reward_frame(records), visible=True),
                    gr.update(value=completions_frame(latest_completions(folder)), visible=True)]
        else:
            out += [gr.update(visible=False), gr.update(visible=False)]
        return out


def build_watch(ctx: Any) -> Watch:
    """The gauges, placed where this is called (the Train tab, under the progress bar)."""
    import gradio as gr

    w, lang = ctx.w, ctx.w.lang
    with gr.Row():
        memory = gr.HTML(gauge_html(None, None, t("watch_memory", lang), lang), elem_id="watch-memory")
        throughput = w.ui(gr.Textbox("—", label=t("watch_throughput", lang), interactive=False, max_lines=1,
                                     elem_id="watch-throughput"), "watch_throughput")
    with gr.Row():
        rewards = w.ui(gr.LinePlot(reward_frame([]), x="step", y="reward", color="series",
                                   label=t("watch_rewards", lang), elem_id="reward-plot", height=260, visible=False),
                       "watch_rewards")
        samples = w.ui(gr.Dataframe(completions_frame([]), label=t("watch_samples", lang), elem_id="grpo-completions",
                                    interactive=False, wrap=True, visible=False), "watch_samples")
    return Watch(memory, throughput, rewards, samples)
