"""The leak guard itself must be able to fail: it sees a stray child, a stray execution
process, a stray cgroup, and an error a scheduler loop caught."""

from __future__ import annotations

import os
import subprocess

import conftest
import pytest

from runner._tree import COOKIE_VARIABLE


def test_guard_sees_a_stray_child_and_an_execution_process() -> None:
    env = {**os.environ, COOKIE_VARIABLE: f"{os.getpid()}-999-test"}
    stray = subprocess.Popen(["sleep", "60"], env=env)
    try:
        conftest.wait_until(lambda: stray.pid in {p.pid for p in conftest._leaked_children()})
        conftest.wait_until(lambda: stray.pid in {p.pid for p in conftest._our_execution_processes()})
    finally:
        stray.kill()
        stray.wait()
    assert stray.pid not in {p.pid for p in conftest._leaked_children()}


def test_guard_sees_a_stray_cgroup() -> None:
    parents = [p for p in conftest._governor_parents() if p.is_dir()]
    if not parents:
        pytest.skip("no writable cgroup hierarchy on this host")
    stray = parents[0] / f"{os.getpid()}-999-test"
    stray.mkdir()
    try:
        assert str(stray) in conftest._our_cgroups()
    finally:
        stray.rmdir()
    assert str(stray) not in conftest._our_cgroups()


class _BrokenTrigger:
    """A custom trigger with a bug: it raises when asked when it fires."""

    def next_fire(self, after: object) -> object:
        raise RuntimeError("bug in a trigger")


@pytest.mark.loop_errors(1)
def test_guard_counts_an_error_the_loop_carried_on_from() -> None:
    from governor import Scheduler, Task
    from governor.scheduling._loop import loop_errors

    before = loop_errors()
    with Scheduler(1) as scheduler:
        scheduler.add_task(Task("broken", ["true"], triggers=[_BrokenTrigger()]))
        assert scheduler.wait(lambda: scheduler.loop_errors == 1, 10)
        assert scheduler.sync() and scheduler.snapshot()["loop_errors"] == 1  # the loop lives on
    assert loop_errors() == before + 1
