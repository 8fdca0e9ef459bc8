"""CPU threads for torch's kernels: one per core this process may use, waiting without spinning.

Two defaults of the OpenMP runtime under torch go wrong on a shared machine:

- after each parallel region its threads spin-wait for the next one (libgomp's default wait
  policy). On a machine where another CPU-bound process runs, the spinning threads take the
  cores the working ones need, and a step that takes 4 s alone takes 20-45 s (measured on this
  project's 2-core machine: a 300-step 512-wide MLP loop, 4.0 s with `OMP_WAIT_POLICY=PASSIVE`
  against 20.7-44.0 s with the default while other work ran; `make demo`'s loop took 286 s
  instead of 20 s the same way). Passive waiting puts idle threads to sleep at once;
- the thread count follows the machine's cores, not the ones this process may run on (a
  container's CPU set or quota, `taskset`), so a 2-core container on a 64-core host oversubscribes.

`configure()` runs first thing in the CLI, before torch is imported (the runtime reads its
environment once, when it loads), and sets both where the user has not: `OMP_WAIT_POLICY=PASSIVE`
and `OMP_NUM_THREADS` = the cores available. Child processes inherit them; the torchrun launcher
divides the cores among its workers (`threads_per_process`). A value the user set is never changed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CHOSEN = "LATHE_CHOSE_OMP_THREADS"  # set when OMP_NUM_THREADS is lathe's choice, not the user's
CGROUP_ROOT = Path("/sys/fs/cgroup")


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


def configure(environ: dict | None = None, cores: int | None = None) -> None:
    """Set the OpenMP wait policy and thread count where the user has not (see the module docstring)."""
    env = os.environ if environ is None else environ
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(cores or available_cores())
        env[CHOSEN] = "1"


def threads_per_process(processes: int, environ: dict | None = None) -> str:
    """OMP_NUM_THREADS for each of `processes` local workers: the user's value as given, else the
    available cores shared out (at least one each)."""
    env = os.environ if environ is None else environ
    if "OMP_NUM_THREADS" in env and not env.get(CHOSEN):
        return env["OMP_NUM_THREADS"]
    return str(max(1, available_cores() // max(1, processes)))
