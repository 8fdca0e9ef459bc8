"""CPU threads for torch's kernels: as many as the cores free to this process, waiting the way the machine allows.

Two defaults of the OpenMP runtime under torch go wrong on a shared machine:

- after each parallel region its threads spin-wait for the next one (libgomp's default wait
  policy). On a machine where another CPU-bound process runs, the spinning threads take the
  cores the working ones need: a step that takes 4 s alone takes 20-45 s (measured on this
  project's 2-core machine: a 300-step 512-wide MLP loop, 4.0 s with `OMP_WAIT_POLICY=PASSIVE`
  against 20.7-44.0 s with the default while other work ran; `make demo`'s loop took 286 s
  instead of 20 s the same way; benchmarks/busy_machine.py: LLaMA-Factory's demo loop 3.8x slower
  beside one CPU-bound process). Passive waiting puts idle threads to sleep at once; but on a quiet
  machine it costs a wake-up per kernel, and a model of small kernels pays it thousands of times a
  step (the demo's loop: 13.6 s passive against 5.9 s spinning, 7.0 s on one thread);
- the thread count follows the machine's cores, not the ones this process may run on (a
  container's CPU set or quota, `taskset`), so a 2-core container on a 64-core host oversubscribes.

`configure()` runs first thing in the CLI, before torch is imported (the runtime reads its
environment once, when it loads). It counts the other processes running right now (/proc/loadavg)
and sets, where the user has not: `OMP_NUM_THREADS` = the cores available less those busy (at
least one), and, when any are busy, `OMP_WAIT_POLICY=PASSIVE`; a quiet machine keeps the runtime's
default (spin a while, then sleep), the fastest there. A neighbour that starts later finds the
threads spinning (the demo's loop: 18 s instead of 6 s); set `OMP_WAIT_POLICY=PASSIVE` yourself on
a machine whose load comes and goes. Child processes inherit both; the torchrun launcher divides
the cores among its workers (`threads_per_process`). A value the user set is never changed.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

CHOSEN = "LATHE_CHOSE_OMP_THREADS"  # set when OMP_NUM_THREADS is lathe's choice, not the user's
CGROUP_ROOT = Path("/sys/fs/cgroup")
LOADAVG = Path("/proc/loadavg")


def available_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The cores this process may use: its CPU affinity, capped by the cgroup's CPU quota if any."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs' worth of time per period the cgroup allows (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`); None: no limit."""
    try:
        v2 = root / "cpu.max"
        if v2.exists():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu" / "cpu.cfs_quota_us"
        if v1.exists():
            quota = int(v1.read_text())
            period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
            return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None
    return None


def others_running(loadavg: Path = LOADAVG, reads: int = 3, gap: float = 0.01) -> int:
    """Other processes' threads running right now: /proc/loadavg's count of runnable tasks less this one,
    the median of a few reads 10 ms apart (one read catches passing tasks); 0 where the file is not."""
    counts = []
    for i in range(reads):
        try:
            running = int(loadavg.read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        counts.append(max(0, running - 1))
        if i + 1 < reads:
            time.sleep(gap)
    return sorted(counts)[len(counts) // 2]


def configure(environ: dict | None = None, cores: int | None = None, busy: int | None = None) -> None:
    """Set the OpenMP thread count and wait policy where the user has not (see the module docstring).
    `busy`: cores other processes hold now (None: counted from /proc/loadavg)."""
    env = os.environ if environ is None else environ
    if "OMP_NUM_THREADS" in env and "OMP_WAIT_POLICY" in env:
        return
    busy = others_running() if busy is None else busy
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (cores or available_cores()) - busy))
        env[CHOSEN] = "1"
    if busy:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def threads_per_process(processes: int, environ: dict | None = None) -> str:
    """OMP_NUM_THREADS for each of `processes` local workers: the user's value as given, else the
    available cores shared out (at least one each)."""
    env = os.environ if environ is None else environ
    if "OMP_NUM_THREADS" in env and not env.get(CHOSEN):
        return env["OMP_NUM_THREADS"]
    return str(max(1, available_cores() // max(1, processes)))
