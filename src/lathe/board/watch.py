"""What a training run uses while it trains: memory, tokens/s, and for GRPO / RLOO the rewards and samples.

The Train tab's timer asks `Watch.update` once a second, on every open page. Everything it shows is
read from outside the run, so a run started from a shell shows the same as one the Board started:
- memory: the run's processes (the one started and all its descendants: torchrun's workers, data
  workers) from /proc; on a GPU the memory `nvidia-smi` reports for those processes, else their
  resident memory (VmRSS, summed) against the machine's memory (or the memory cgroup's limit, in a
  container). Shared pages count in each process that maps them (forked workers' copy-on-write
  pages, libraries, a memory-mapped checkpoint), so the sum can exceed what the tree really takes;
- tokens/s: the `throughput` field of the newest record of `trainer_log.jsonl`;
- rewards and samples: the `reward` and `rewards/<function>/mean` fields of that log, and the last
  logging step's sampled completions in `completions.jsonl` (train/grpo.py writes both; monitor.py
  reads these files, this module the processes and draws the components).

A run the Board did not start has no process handle; `find_run_pid` looks for a `lathe train`
process of this user whose config (or `output_dir=` override) names the folder. Nothing here
needs psutil or a GPU library: /proc and, where installed, the `nvidia-smi` command. The /proc
scans and nvidia-smi's answers are shared for a few seconds (`RECENT`): every open page's timer
asks each second, and one scan (or one nvidia-smi, which may take seconds) serves them all.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from ..config.read import parse_overrides, read_config_file, split_config_args
from ..errors import LatheError
from ..sysmem import PROC, MiB, available_memory, machine_memory, process_rss, size
from ..train.base import CONFIG_FILE  # the resolved config every run writes to output_dir
from .locales import t
from .monitor import completions_frame, latest_completions, log_is_live, read_log, reward_frame, throughput_text
from .runner import CONFIG_NAME

SMI_TIMEOUT = 3.0  # seconds; a hung driver must not hang the Board's timer
RECENT_S = 5.0  # seconds a /proc scan or an nvidia-smi answer serves every page's timer

T = TypeVar("T")


class Recent:
    """Values computed at most once every `ttl` seconds, shared by every thread that asks.

    Each key has its lock: a thread asking while another computes waits for that value rather than
    computing it again, and a slow key (nvidia-smi on a hung driver) holds up only its own askers.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._locks: dict[Hashable, threading.Lock] = {}
        self._values: dict[Hashable, tuple[float, Any]] = {}

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            hit = self._values.get(key)
            if hit is not None and time.monotonic() - hit[0] < self.ttl:
                return hit[1]
            value = compute()
            self._values[key] = (time.monotonic(), value)  # timed from the answer: a slow one is not stale at once
            return value


RECENT = Recent(RECENT_S)


# ---------------------------------------------------------------- processes and memory


def _stat_fields(pid: int | str, proc: Path) -> list[str] | None:
    """/proc/<pid>/stat's fields from the third (state) on; None when the process is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after its last ")"
    return stat.rsplit(")", 1)[-1].split()


def _scan_children(proc: Path) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name, proc)
        if fields and len(fields) > 1 and fields[1].isdigit():
            out.setdefault(int(fields[1]), []).append(int(entry.name))
    return out


def _children(proc: Path = PROC) -> dict[int, list[int]]:
    """parent pid -> child pids, from every /proc/<pid>/stat: one scan every RECENT_S seconds, shared (read only)."""
    return RECENT.get(("children", str(proc)), lambda: _scan_children(proc))


def process_tree(pid: int, proc: Path = PROC) -> list[int]:
    """`pid` and its descendants (as of the last scan, at most RECENT_S seconds old); [] when `pid` is gone."""
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


def process_start(pid: int, proc: Path = PROC) -> int | None:
    """When a process started (clock ticks after boot: /proc/<pid>/stat's 22nd field); None when it is gone.
    With the pid, it names one run: a pid the kernel hands out again starts later."""
    fields = _stat_fields(pid, proc)
    try:
        return int(fields[19]) if fields else None
    except (ValueError, IndexError):
        return None


def rss_of(pids: Iterable[int], proc: Path = PROC) -> int:
    """Bytes of RAM resident in these processes, summed (`lathe.sysmem.process_rss`: VmRSS, in which
    pages shared by several of them, like forked workers' copy-on-write pages, count in each)."""
    return sum(process_rss(p, proc) for p in pids)


def _run_nvidia_smi(args: tuple[str, ...]) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *args], check=False, capture_output=True, text=True, timeout=SMI_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def nvidia_smi(args: list[str]) -> str | None:
    """`nvidia-smi <args>`'s output; None where it is not installed, fails or hangs (no GPU, no driver).
    One answer serves every caller for RECENT_S seconds (its SMI_TIMEOUT is longer than the timer's tick)."""
    return RECENT.get(("nvidia-smi", *args), lambda: _run_nvidia_smi(tuple(args)))


def _csv_rows(text: str | None) -> list[list[str]]:
    return [[cell.strip() for cell in line.split(",")] for line in (text or "").splitlines() if line.strip()]


_GPU_TOTALS: dict[str, int] = {}  # GPU uuid -> bytes; only grows (one entry per GPU), so no lock is needed


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


def device_memory(query: Callable[[list[str]], str | None] = nvidia_smi) -> tuple[int, int, str] | None:
    """(used, total, source) of the whole device while no run of the folder goes, as LLaMA Board's footer shows
    it: every GPU's memory (nvidia-smi), else the machine's RAM in use (MemTotal less MemAvailable)."""
    rows = _csv_rows(query(["--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"]))
    gpus = [(int(r[0]) * MiB, int(r[1]) * MiB) for r in rows if len(r) >= 2 and r[0].isdigit() and r[1].isdigit()]
    if gpus:
        return sum(u for u, _ in gpus), sum(total for _, total in gpus), "device-gpu"
    total, free = machine_memory(), available_memory()
    if total and free is not None:
        return max(0, total - free), total, "device-ram"
    return None


# ---------------------------------------------------------------- finding a run started from a shell

GLOBAL_FLAGS = ("--debug",)  # what lathe.cli.main takes out of the command line (once, wherever it stands)


def lathe_train_args(argv: list[str]) -> list[str] | None:
    """The arguments after `lathe train` in a command line (`lathe train`, `lathe --debug train`,
    `python -m lathe train`, torchrun's `... -m lathe train`), less cli.main's global flags; None for
    any other command."""
    for i, word in enumerate(argv):
        if Path(word).name != "lathe":
            continue
        rest = list(argv[i + 1:])
        for flag in GLOBAL_FLAGS:
            if flag in rest:
                rest.remove(flag)
        if rest and rest[0] == "train":
            return rest[1:]
    return None


def train_output_dir(args: list[str], cwd: Path) -> Path | None:
    """The output_dir `lathe train <args>` writes, run in `cwd`: read as `lathe train` reads it (the
    config file, then the overrides as YAML values), relative to `cwd`; None when neither says, or
    the config cannot be read (that run stops at its config too)."""
    path, overrides = split_config_args(args)
    try:
        raw = read_config_file(cwd / Path(path).expanduser()) if path else {}
        raw.update(parse_overrides(overrides))
    except (LatheError, OSError, UnicodeDecodeError):
        return None
    found = raw.get("output_dir")
    if found is None or str(found).strip() == "":
        return None
    return (cwd / Path(str(found)).expanduser()).resolve()


@lru_cache(maxsize=512)
def _output_dir_of(pid: int, cmdline: bytes, cwd: str) -> Path | None:
    """A process's output_dir, its config read once per process (the pid keeps two runs of one command apart)."""
    args = lathe_train_args([a.decode(errors="replace") for a in cmdline.split(b"\0") if a])
    return None if args is None else train_output_dir(args, Path(cwd))


def _scan_train_runs(proc: Path) -> dict[Path, dict[int, int]]:
    """output_dir -> {pid: parent pid} of every `lathe train` process of this user.

    Only this user's processes are looked at, and of those only command lines naming `lathe` and
    `train`; their config files are read once per process.
    """
    uid, runs = os.getuid(), {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            raw = (entry / "cmdline").read_bytes()
            if b"lathe" not in raw or b"train" not in raw:
                continue
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        folder = _output_dir_of(int(entry.name), raw, cwd)
        fields = _stat_fields(entry.name, proc)
        if folder is not None and fields and len(fields) > 1 and fields[1].isdigit():
            runs.setdefault(folder, {})[int(entry.name)] = int(fields[1])
    return runs


def find_run_pid(output_dir: str | Path, proc: Path = PROC) -> int | None:
    """The pid of a live `lathe train` process of this user writing `output_dir` (the outermost one when
    a launcher and its workers all match); None when there is none. One /proc scan every RECENT_S
    seconds serves every folder asked about."""
    target = Path(output_dir).expanduser().resolve()
    matches = RECENT.get(("lathe train", str(proc)), lambda: _scan_train_runs(proc)).get(target, {})
    roots = [pid for pid, parent in matches.items() if parent not in matches and (proc / str(pid)).is_dir()]
    return min(roots) if roots else None


def folder_is_live(output_dir: str | Path | None) -> bool:
    """Whether some run writes `output_dir` now (a shell's, another Board's): its log is live, or a
    `lathe train` process names it (still loading the model, or between two slow logging steps)."""
    if not output_dir:
        return False
    return log_is_live(output_dir) or find_run_pid(output_dir) is not None


# ---------------------------------------------------------------- what the tab shows


def gauge_html(used: int | None, total: int | None, label: str, lang: str = "en", source: str = "",
               peak: int | None = None) -> str:
    """A memory bar: `label: used / total (share)`; `used` None shows that nothing is measured now
    (and the peak of the run measured last in the folder, where there was one).

    The numbers are kept as data attributes (bytes; empty when unknown) for scripts and the browser
    test: data-used, data-total, data-peak, data-source (gpu, ram or none).
    """
    share = used / total * 100 if used is not None and total else 0.0
    if used is None:
        text = f"{label}: {t('watch_unknown', lang)}"
    else:
        text = f"{label}: {size(used)}" + (f" / {size(total)} ({share:.0f}%)" if total else "")
    if peak:
        text += f" · {t('watch_peak', lang)} {size(peak)}"
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


def config_stage(path: Path) -> str | None:
    """`stage` of a config file (the Board's config.yaml or a run's lathe_config.yaml); None without one.
    Read again only when the file changes."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    return _stage_of(str(path), mtime)


@lru_cache(maxsize=256)
def _stage_of(path: str, mtime_ns: int) -> str | None:
    try:
        data = read_config_file(path)
    except (LatheError, OSError, UnicodeDecodeError):
        return None
    return str(data["stage"]) if data.get("stage") else None


# ---------------------------------------------------------------- the components


@dataclass
class Watch:
    """The Train tab's run gauges; `update` returns one update per component, in `outputs` order.

    One Watch serves every page of the Board (the handlers of all sessions), so `peaks` is locked.
    """

    memory: Any
    throughput: Any
    rewards: Any
    samples: Any
    # output folder -> (the run measured last there: (pid, start time), {source ("gpu" / "ram"): the most bytes seen})
    peaks: dict[str, tuple[tuple[int, int], dict[str, int]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def outputs(self) -> list[Any]:
        return [self.memory, self.throughput, self.rewards, self.samples]

    def _peak(self, folder: str, run: tuple[int, int], source: str, used: int) -> int:
        """Record `used` for this run and source; its peak. A new run in the folder starts afresh."""
        with self._lock:
            last, peaks = self.peaks.get(folder, (None, {}))
            if last != run:
                peaks = {}
                self.peaks[folder] = (run, peaks)
            peaks[source] = max(peaks.get(source, 0), used)
            return peaks[source]

    def last_peak(self, folder: str) -> int | None:
        """The peak of the run measured last in `folder`: its GPU's where it held GPU memory, else its RAM's."""
        with self._lock:
            peaks = self.peaks.get(folder, (None, {}))[1]
            return peaks.get("gpu") or peaks.get("ram")

    def memory_html(self, pid: int | None, folder: str | None, lang: str) -> str:
        """The gauge for the run `pid` (None: no process writes the folder now) writing `folder`.

        Its peak is this run's (keyed by pid and start time) and this source's: a tick where nvidia-smi
        fails measures RAM, which is no GPU peak."""
        start = process_start(pid) if pid is not None else None
        tree = process_tree(pid) if start is not None else []
        if not tree:  # no run here now: the device as a whole, with the peak of the run measured last
            device = device_memory()
            peak = self.last_peak(folder or "")
            if device is None:
                return gauge_html(None, None, t("watch_memory", lang), lang, peak=peak)
            return gauge_html(device[0], device[1], t("watch_device", lang), lang, device[2], peak)
        gpu = gpu_memory(tree)
        if gpu is not None:
            used, total, label, source = gpu[0], gpu[1], t("watch_gpu_memory", lang), "gpu"
        else:
            used, total, label, source = rss_of(tree), machine_memory(), t("watch_ram", lang), "ram"
        peak = self._peak(folder or "", (pid, start), source, used)
        return gauge_html(used, total, label, lang, source, peak)

    def update(self, run: Any, output_dir: str | None, stage: str | None = None, lang: str = "en",
               records: list[dict[str, Any]] | None = None) -> list[Any]:
        """Updates for `outputs`. `run` is the Board's Run (None for a run started elsewhere: its
        process is then looked up by folder); `stage` (the form's) is used when no config of the run
        says it; `records`: the folder's trainer_log.jsonl where the caller has read it this tick
        (else it is read here)."""
        import gradio as gr

        folder = run.key if run is not None else (str(Path(output_dir).expanduser().resolve()) if output_dir else None)
        if folder is None:
            return [self.memory_html(None, None, lang), "—", gr.update(visible=False), gr.update(visible=False)]
        if records is None:
            records = read_log(folder)
        if run is not None:
            pid = run.process.pid if run.running() else None
            stage = config_stage(run.folder / CONFIG_NAME) or stage
        else:
            pid = find_run_pid(folder)
            stage = config_stage(Path(folder) / CONFIG_FILE) or stage
        out = [self.memory_html(pid, folder, lang), throughput_text(records)]
        if scores_samples(stage):
            frame = reward_frame(records)  # None until a reward is logged: the plot's first value fixes its axes
            out += [gr.update(value=frame if len(frame) else None, visible=True),
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
        rewards = w.ui(gr.LinePlot(None, x="step", y="reward", color="series",
                                   label=t("watch_rewards", lang), elem_id="reward-plot", height=260, visible=False),
                       "watch_rewards")
        samples = w.ui(gr.Dataframe(completions_frame([]), label=t("watch_samples", lang), elem_id="grpo-completions",
                                    interactive=False, wrap=True, visible=False), "watch_samples")
    return Watch(memory, throughput, rewards, samples)
