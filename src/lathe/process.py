"""Where this process stands in a launch, read from the launcher's environment variables.

torchrun (and accelerate, DeepSpeed's launcher) set RANK / LOCAL_RANK / TORCHELASTIC_RUN_ID in
every process it starts; reading them needs no process group, so any layer may ask.
"""

from __future__ import annotations

import os


def inside_launcher() -> bool:
    """True in a process that torchrun (or a compatible launcher) started."""
    return "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ


def is_main_process() -> bool:
    """True in the process that writes shared files (rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def running(pid: int) -> bool:
    """Whether process `pid` still runs. A finished child that nobody has reaped yet counts as stopped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
