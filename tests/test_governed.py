"""The decorator and asyncio forms: ``@governed`` and ``governor.arun``, on real children."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest
import task_helpers as th
from conftest import gone, time_out_once_running, until_ready
from governed_helpers import governed_pid
from guards import guard

import governor
from governor import ExecutionFailed, GovernedFuture, Limits, Outcome
from governor._governed import close_shared_pool


def test_a_decorated_imported_function_runs_in_a_child_of_its_own() -> None:
    pid = governed_pid()
    assert pid != os.getpid() and gone(pid)
    with pytest.raises(KeyError, match="nope"):  # its own exception, as its own type
        governed_pid("nope")
    record = governed_pid.run()
    assert record.ok and record.limits == Limits(memory="256MiB", wall_time=120)
    try:
        future = governed_pid.submit()
        assert isinstance(future, GovernedFuture) and future.result(timeout=guard(60)) != os.getpid()
    finally:
        close_shared_pool()  # its scheduler thread must not outlive the test
    assert governed_pid.__name__ == "governed_pid" and "Runs governed" in (governed_pid.__doc__ or "")


def test_a_decorated_function_in_main_and_its_limits(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, governor
            from governor import Limits, ExecutionFailed

            @governor.governed(limits=Limits(memory="64MiB"))
            def hog(size):
                return len(bytearray(size))

            @governor.governed
            def where():
                return os.getpid()

            assert where() != os.getpid()
            assert hog(1 << 20) == 1 << 20
            try:
                hog(512 << 20)
            except ExecutionFailed as error:
                print("limited:", error.execution.outcome)
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=guard(120))
    assert done.returncode == 0, done.stderr
    assert "limited: memory_exceeded" in done.stdout


def test_governed_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="limits: expected a Limits"):
        governor.governed(limits={"memory": "1G"})(th.add)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a function"):
        governor.governed(42)  # type: ignore[arg-type]


def test_arun_returns_the_record_and_its_cancellation_kills_the_tree(tmp_path: Path) -> None:
    ready = tmp_path / "ready"

    async def scenario() -> tuple[governor.Execution, int]:
        record = await governor.arun(th.add, 2, 3, limits=Limits(memory="128MiB"))
        task = asyncio.ensure_future(governor.arun(th.say_pid_and_wait, str(ready)))
        await until_ready(ready, task)
        pid = int(ready.read_text())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gone(pid)  # the tree is gone by the time the cancellation arrives
        other = tmp_path / "other"
        await time_out_once_running(
            asyncio.ensure_future(governor.arun(th.say_pid_and_wait, str(other))), other
        )
        assert gone(int(other.read_text()))  # killed before the timeout went on
        return record, pid

    record, pid = asyncio.run(scenario())
    assert record.ok and record.result == 5 and record.outcome is Outcome.SUCCEEDED
    assert gone(pid)


def test_under_anyio_a_cancelled_scope_kills_the_tree_before_it_is_left(tmp_path: Path) -> None:
    """anyio's asyncio backend: a cancel scope around a task group, and ``fail_after`` due once
    the child surely runs. The README said both work; nothing had tried them."""
    ready, other = tmp_path / "ready", tmp_path / "other"

    async def cancel_once_running(scope: anyio.CancelScope, path: Path) -> None:
        deadline = time.monotonic() + guard(30)
        while not path.exists():
            assert time.monotonic() < deadline, f"{path} never appeared"
            await anyio.sleep(0.01)
        scope.deadline = anyio.current_time()  # due now: the scope cancels what it holds

    async def scenario() -> int:
        result = await governor.arun(th.add, 2, 3)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(cancel_once_running, scope, ready)
                await governor.arun(th.say_pid_and_wait, str(ready))
        assert scope.cancelled_caught and gone(int(ready.read_text()))  # gone once the scope is left
        with pytest.raises(TimeoutError):
            with anyio.fail_after(None) as deadline:
                async with anyio.create_task_group() as group:
                    group.start_soon(cancel_once_running, deadline, other)
                    await governor.arun(th.say_pid_and_wait, str(other))
        assert gone(int(other.read_text()))
        return result.result  # type: ignore[no-any-return]

    assert anyio.run(scenario, backend="asyncio") == 5


def test_the_decorators_arun_gives_the_value_or_raises() -> None:
    async def scenario() -> int:
        with pytest.raises(KeyError):
            await governed_pid.arun("no")
        return await governed_pid.arun()

    assert asyncio.run(scenario()) != os.getpid()


def test_arun_refuses_another_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        asyncio.run(governor.arun(th.add, 1, 1, backend=object()))


def test_a_failed_limit_raises_execution_failed_with_its_record() -> None:
    hog = governor.governed(limits=Limits(memory="64MiB"))(th.hold_memory)
    with pytest.raises(ExecutionFailed) as caught:
        hog(512 << 20)
    assert caught.value.execution.outcome is Outcome.MEMORY_EXCEEDED
