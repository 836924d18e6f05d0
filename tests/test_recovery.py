"""Crash recovery helpers on real processes and cgroups."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import cgroup_mode_or_skip

from runner import kill_leftovers, sweep_orphan_cgroups
from runner._cgroup_v1 import parent_dir
from runner._tree import COOKIE_VARIABLE


def _dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


def test_kill_leftovers_finds_processes_by_their_cookie() -> None:
    run_id = f"{_dead_pid()}-1-cookie"
    stray = subprocess.Popen(["sleep", "60"], env={**os.environ, COOKIE_VARIABLE: run_id})
    try:
        killed = kill_leftovers(run_id, None, None, [])
        assert killed == [stray.pid]
        assert stray.wait(timeout=10) == -9
    finally:
        stray.kill()
        stray.wait()


def test_a_reused_pid_is_not_killed() -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        assert kill_leftovers("nobody-1-x", bystander.pid, pid_start_ticks=1, cgroups=[]) == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_cgroups_of_a_dead_supervisor_are_swept() -> None:
    if str(cgroup_mode_or_skip()) != "cgroup1":
        pytest.skip("the sweep test builds a v1 cgroup by hand")
    path = os.path.join(parent_dir("memory"), f"{_dead_pid()}-1-orphan")
    os.mkdir(path)
    stray = subprocess.Popen(["sleep", "60"])
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as procs:
            procs.write(str(stray.pid))
        swept = sweep_orphan_cgroups()
        # A governor serve started by a test running in parallel may sweep it first.
        assert swept.get(path, [stray.pid]) == [stray.pid]
        assert stray.wait(timeout=10) == -9
        assert not os.path.exists(path)
    finally:
        stray.kill()
        stray.wait()
        if os.path.isdir(path):
            os.rmdir(path)
