"""What memory this machine and its processes have, read from /proc and the memory cgroup, without torch.

model/memory.py (how much a run may use: `free_memory`) and the Board's watch (board/watch.py: how
much a run uses, against what it may) read the same files; here they are read once, in a module
the Board can import without loading torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

GiB, MiB = 1024**3, 1024**2
PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


def size(n: int) -> str:
    """Bytes as "1.50G" (from a tenth of a GiB up) or "12.3M"."""
    return f"{n / GiB:.2f}G" if n >= GiB / 10 else f"{n / MiB:.1f}M"


def kib_fields(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """`Name:  123 kB` lines of /proc/meminfo or /proc/<pid>/status, in bytes; the names absent or
    unreadable (no such process, not Linux) are left out."""
    found: dict[str, int] = {}
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in names:
                    try:
                        found[name] = int(rest.split()[0]) * 1024
                    except (ValueError, IndexError):
                        continue
    except OSError:
        pass
    return found


def meminfo(name: str, path: Path = PROC / "meminfo") -> int | None:
    """One /proc/meminfo field in bytes (MemTotal, MemAvailable, ...); None where it is not there."""
    return kib_fields(path, (name,)).get(name)


def process_rss(pid: int | str, proc: Path = PROC) -> int:
    """Bytes of RAM one process holds now (VmRSS of /proc/<pid>/status); 0 when it is gone.

    The status file is a few counters the kernel keeps (cheap, unlike smaps_rollup, which walks
    every mapping under the process's mmap lock). Shared pages count in full in each process that
    maps them: forked workers' copy-on-write pages, shared libraries, a memory-mapped checkpoint.
    """
    return kib_fields(proc / str(pid) / "status", ("VmRSS",)).get("VmRSS", 0)


# ---------------------------------------------------------------- the memory cgroup (v1 or v2)


def _memory_cgroup(proc_cgroup: Path) -> tuple[Path, str, str, str, str] | None:
    """(hierarchy root, this cgroup's path in it, limit file, usage file, memory.stat's inactive-cache key)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if "memory" in controllers.split(","):  # v1: the memory hierarchy
            return "memory", path, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"
    for line in lines:
        if line.startswith("0::"):  # v2: the unified hierarchy
            return "", line[3:], "memory.max", "memory.current", "inactive_file"
    return None


def _limited(root: Path, proc_cgroup: Path) -> Iterator[tuple[Path, int, str, str]]:
    """(folder, limit, usage file, inactive key) of this process's memory cgroup and each parent that sets a limit."""
    found = _memory_cgroup(proc_cgroup)
    if found is None:
        return
    sub, path, limit_file, usage_file, inactive_key = found
    base = root / sub if sub else root
    parts = [p for p in path.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        folder = base.joinpath(*parts[:depth])
        try:
            raw = (folder / limit_file).read_text().strip()
            if raw == "max" or int(raw) >= NO_LIMIT:
                continue
        except (OSError, ValueError):
            continue
        yield folder, int(raw), usage_file, inactive_key


def cgroup_limit(proc_cgroup: Path = PROC / "self" / "cgroup", root: Path = CGROUP_ROOT) -> int | None:
    """The tightest memory limit of this process's cgroup and its parents; None without one."""
    limits = [limit for _, limit, _, _ in _limited(root, proc_cgroup)]
    return min(limits) if limits else None


def cgroup_available(proc_cgroup: Path = PROC / "self" / "cgroup", root: Path = CGROUP_ROOT) -> int | None:
    """Bytes the process's memory cgroup (and its parents) still allow: the smallest limit minus usage,
    counting inactive page cache as free (the kernel reclaims it before it kills); None without a limit."""
    best = None
    for folder, limit, usage_file, inactive_key in _limited(root, proc_cgroup):
        try:
            usage = int((folder / usage_file).read_text())
            stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines() if " " in line)
            headroom = limit - usage + int(stat.get(inactive_key, 0))
        except (OSError, ValueError):
            continue
        best = headroom if best is None else min(best, headroom)
    return None if best is None else max(0, best)


def machine_memory(meminfo_path: Path = PROC / "meminfo") -> int | None:
    """The RAM a process here may use at most: MemTotal, capped by the memory cgroup's limit."""
    total, limit = meminfo("MemTotal", meminfo_path), cgroup_limit()
    return limit if total is None else total if limit is None else min(total, limit)


def available_memory(meminfo_path: Path = PROC / "meminfo") -> int | None:
    """The RAM free for a process here now: MemAvailable, capped by what the memory cgroup still allows."""
    free, allowed = meminfo("MemAvailable", meminfo_path), cgroup_available()
    return allowed if free is None else free if allowed is None else min(free, allowed)
