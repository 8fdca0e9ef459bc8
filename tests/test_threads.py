"""CPU threads: as many as the cores free to the process, passive waiting where others run, the user's settings kept."""

from __future__ import annotations

import os
import subprocess
import sys

from lathe import threads


def test_cgroup_quota_caps_the_affinity(tmp_path):
    assert threads.available_cores(tmp_path) == len(os.sched_getaffinity(0))  # no cgroup files: affinity alone
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs of time: 2 threads
    assert threads.available_cores(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.available_cores(tmp_path) == len(os.sched_getaffinity(0))
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert threads.available_cores(v1) == 1


def test_a_quiet_machine_gets_every_core_and_the_runtimes_own_waiting():
    env: dict = {}
    threads.configure(env, cores=6, busy=0)
    assert env == {"OMP_NUM_THREADS": "6", threads.CHOSEN: "1"}  # spinning a while: fastest for small kernels


def test_a_busy_machine_gets_the_free_cores_and_passive_waiting():
    env: dict = {}
    threads.configure(env, cores=6, busy=2)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "4", threads.CHOSEN: "1"}
    env = {}
    threads.configure(env, cores=2, busy=5)
    assert env["OMP_NUM_THREADS"] == "1"  # never none


def test_the_users_settings_are_kept():
    mine = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"}
    threads.configure(mine, cores=6, busy=3)
    assert mine == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"}
    mine = {"OMP_NUM_THREADS": "3"}
    threads.configure(mine, cores=6, busy=1)
    assert mine == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}


def test_others_running_reads_the_runnable_count_less_this_process(tmp_path):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.78 1.89 1.75 3/110 19296\n")
    assert threads.others_running(loadavg, gap=0) == 2
    loadavg.write_text("0.1 0.1 0.1 1/110 19296\n")
    assert threads.others_running(loadavg, gap=0) == 0
    assert threads.others_running(tmp_path / "absent", gap=0) == 0


def test_torchrun_workers_share_the_cores_unless_the_user_said():
    cores = threads.available_cores()
    assert threads.threads_per_process(2, {}) == str(max(1, cores // 2))
    assert threads.threads_per_process(2, {"OMP_NUM_THREADS": str(cores), threads.CHOSEN: "1"}) == str(max(1, cores // 2))
    assert threads.threads_per_process(2, {"OMP_NUM_THREADS": "5"}) == "5"


def test_the_cli_sets_them_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    code = ("import os, sys; from lathe.cli import main; main(['models', 'qwen3-0.6b']); "
            "import torch; print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    chosen, used, loaded = out.splitlines()[-1].split()
    assert chosen == used and 1 <= int(used) <= threads.available_cores() and loaded == "True"
