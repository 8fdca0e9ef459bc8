"""Runs `lathe train | eval | export` for the Board in a child process, exactly as a shell would.

The Board writes the config to a YAML file and starts `python -m lathe <command> <file>`;
the preview shows `lathe <command> <file>`, built by the same `command()` call, so what the
user reads is what runs. Each child gets its own process group: Abort sends SIGTERM to the
whole group (torchrun's workers included), then SIGKILL after a grace period. Checkpoints the
Trainer has saved stay in output_dir, and a new run there resumes from the newest one.

Two runs in one output_dir are refused: inside this Board by a table of live runs, across
Boards and shells by a lock file (holding the child's pid) in the Board's work folder.
The Board's own files (config, log, lock) live in that work folder, not in output_dir,
because `lathe train` refuses an output_dir that holds files but no checkpoint.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LatheError
from ..process import running
from .form import to_yaml
from .launch import outer_environ

LOG_NAME = "running_log.txt"
CONFIG_NAME = "config.yaml"
GRACE_SECONDS = 10.0
TOKEN_PATTERN = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,})\b")


def redact(text: str) -> str:
    """Hide anything shaped like a hub token or API key before it reaches the browser."""
    return TOKEN_PATTERN.sub("[hidden]", text)


def command(kind: str, config_path: str | Path, extra: tuple[str, ...] = ()) -> list[str]:
    """The command as the user would type it; `launch_argv` turns it into what is executed."""
    return ["lathe", kind, str(config_path), *extra]


def job_command(kind: str, config_path: str | Path, extra: tuple[str, ...] = ()) -> list[str]:
    """The command of a Board run of `kind` (train, predict, eval, export): a prediction is `lathe train` with
    do_predict."""
    return command("train" if kind in ("train", "predict") else kind, config_path, extra)


def shell_line(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """`VAR=value ... lathe train file`: the command with the variables the Board sets for it, quoted as a shell
    takes it (a work folder with spaces pastes as one argument)."""
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()), shlex.join(cmd)])


def launch_argv(cmd: list[str]) -> list[str]:
    """`lathe ...` run with this Board's own interpreter (the same install, whatever PATH says)."""
    assert cmd[0] == "lathe"
    return [sys.executable, "-m", "lathe", *cmd[1:]]


@dataclass
class Run:
    kind: str  # train | predict | eval | export
    key: str  # the folder this run writes (output_dir / save_dir / export_dir), resolved
    folder: Path  # the Board's files for this run: config.yaml, running_log.txt
    cmd: list[str]
    process: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)  # variables set for this run (launch, hub)
    started: float = field(default_factory=time.time)
    aborted: bool = False

    @property
    def line(self) -> str:
        return shell_line(self.cmd, self.env)

    @property
    def log_path(self) -> Path:
        return self.folder / LOG_NAME

    def returncode(self) -> int | None:
        return self.process.poll()

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        # progress bars rewrite one line with \r: keep only the last state of each line
        rows = [row.rsplit("\r", 1)[-1] for row in text.splitlines()]
        return redact("\n".join(rows[-lines:]))


class Runner:
    """Starts, tracks and stops the Board's child processes."""

    def __init__(self, workdir: str | Path) -> None:
        self.workdir = Path(workdir).expanduser().resolve()
        self.runs: dict[str, Run] = {}
        self.lock = threading.Lock()
        atexit.register(self.stop_all)

    # ------------------------------------------------------------ locks

    def _lock_file(self, key: str) -> Path:
        return self.workdir / "locks" / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".json")

    def busy(self, key: str) -> str | None:
        """Why `key` cannot take a new run now, or None when it is free."""
        run = self.runs.get(key)
        if run is not None and run.running():
            return f"a {run.kind} run is still going in {key}; wait for it or abort it first."
        lock = self._lock_file(key)
        if lock.exists():
            try:
                pid = int(json.loads(lock.read_text())["pid"])
            except (ValueError, KeyError, OSError):
                pid = 0
            if pid and pid != os.getpid() and running(pid) and (run is None or run.process.pid != pid):
                return f"another process (pid {pid}) is running in {key}; wait for it or stop it first."
        return None

    # ------------------------------------------------------------ start / stop

    def start(self, kind: str, raw: dict[str, Any], target: str, extra_args: tuple[str, ...] = (),
              env: dict[str, str] | None = None) -> Run:
        """Write the config, start `lathe <command>` on it with `env` added; refuses a busy target folder."""
        key = str(Path(target).expanduser().resolve())
        with self.lock:
            reason = self.busy(key)
            if reason:
                raise LatheError(f"Refused: {reason}")
            folder = self.run_folder(key)
            folder.mkdir(parents=True, exist_ok=True)
            config_path = folder / CONFIG_NAME
            config_path.write_text(to_yaml(raw), encoding="utf-8")
            cmd = job_command(kind, config_path, extra_args)
            child_env = {**outer_environ(), **(env or {}), "PYTHONUNBUFFERED": "1"}  # not another page's hub
            log = open(folder / LOG_NAME, "w", encoding="utf-8")
            try:
                process = subprocess.Popen(
                    launch_argv(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=child_env, start_new_session=True,
                )
            finally:
                log.close()
            run = Run(kind, key, folder, cmd, process, dict(env or {}))
            self.runs[key] = run
            self._lock_file(key).parent.mkdir(parents=True, exist_ok=True)
            self._lock_file(key).write_text(json.dumps({"pid": process.pid, "target": key}))
            threading.Thread(target=self._reap, args=(run,), daemon=True).start()
            return run

    def config_path(self, target: str | Path) -> Path:
        """Where this Board writes (or wrote) the config of a run into `target`: the file its command names."""
        return self.run_folder(str(Path(target).expanduser().resolve())) / CONFIG_NAME

    def run_folder(self, key: str) -> Path:
        name = re.sub(r"[^\w.-]+", "_", Path(key).name)[:40] or "run"
        return self.workdir / "runs" / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"

    def _reap(self, run: Run) -> None:
        run.process.wait()
        lock = self._lock_file(run.key)
        try:
            if lock.exists() and json.loads(lock.read_text()).get("pid") == run.process.pid:
                lock.unlink()
        except (OSError, ValueError):
            pass

    def stop(self, run: Run, grace: float = GRACE_SECONDS) -> None:
        """SIGTERM to the run's process group, SIGKILL if it is still there after `grace` s."""
        if not run.running():
            return
        run.aborted = True
        try:
            os.killpg(run.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            run.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(run.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            run.process.wait()

    def stop_all(self) -> None:
        for run in list(self.runs.values()):
            self.stop(run, grace=3.0)

    def get(self, key: str | None) -> Run | None:
        return self.runs.get(key) if key else None
