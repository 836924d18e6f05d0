"""``GovernedExecutor`` as a ``concurrent.futures.Executor``, on real child processes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from pathlib import Path

import pytest
import task_helpers as th
from conftest import gone, time_out_once_running, until_ready, wait_until
from guards import guard

from governor import ExecutionFailed, GovernedExecutor, Limits, Outcome, RemoteTraceback, RetryPolicy

MiB = 1 << 20


def test_submit_and_map() -> None:
    with GovernedExecutor(2) as executor:
        assert executor.submit(th.add, 2, 3).result(timeout=30) == 5
        assert list(executor.map(th.add, range(5), range(5), timeout=60)) == [0, 2, 4, 6, 8]


def test_each_call_is_a_fresh_process() -> None:
    with GovernedExecutor(2) as executor:
        pids = {f.result(timeout=30)["pid"] for f in [executor.submit(th.describe_self) for _ in range(6)]}
    assert len(pids) == 6


def test_exception_reraises_as_its_original_type_with_the_remote_traceback() -> None:
    with GovernedExecutor(1) as executor:
        future = executor.submit(th.raise_value_error, "nope")
        with pytest.raises(ValueError, match="nope") as caught:
            future.result(timeout=30)
    assert isinstance(caught.value.__cause__, RemoteTraceback)
    assert future.execution.outcome is Outcome.FAILED  # type: ignore[attr-defined]


def test_a_crash_fails_only_its_own_call() -> None:
    with GovernedExecutor(2) as executor:
        crash = executor.submit(th.segfault)
        fine = executor.submit(th.add, 1, 1)
        with pytest.raises(ExecutionFailed, match="crashed") as caught:
            crash.result(timeout=30)
        assert fine.result(timeout=30) == 2
    assert caught.value.execution.outcome is Outcome.CRASHED


def test_a_call_whose_arguments_cannot_be_sent_settles_at_once() -> None:
    import threading

    with GovernedExecutor(1) as executor:
        future = executor.submit(th.add, threading.Lock(), 1)  # a lock cannot be pickled
        with pytest.raises(ExecutionFailed) as caught:
            future.result(timeout=30)
    assert "pickle" in str(caught.value).lower() or "lock" in str(caught.value).lower()


def test_limits_per_call_with_options() -> None:
    with GovernedExecutor(2, limits=Limits(memory="64MiB")) as executor:
        small = executor.submit(th.hold_memory, 120 * MiB)
        roomy = executor.options(limits=Limits(memory="512MiB")).submit(th.hold_memory, 120 * MiB)
        with pytest.raises(ExecutionFailed, match="memory_exceeded"):
            small.result(timeout=30)
        assert roomy.result(timeout=30) == 120 * MiB


def test_retry_policy_applies_before_the_future_settles(tmp_path: Path) -> None:
    counter = str(tmp_path / "calls")
    with GovernedExecutor(1, retry_policy=RetryPolicy(max_retries=2)) as executor:
        future = executor.submit(th.fail_until, counter, 2)
        assert future.result(timeout=30) == 3
    assert future.execution.attempt == 3  # type: ignore[attr-defined]


def test_pending_calls_can_be_cancelled(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    ready = str(tmp_path / "ready")
    os.mkfifo(gate)
    with GovernedExecutor(1) as executor:
        blocker = executor.submit(th.wait_for_release, gate, ready)
        pending = executor.submit(th.add, 1, 1)
        assert pending.cancel()
        from conftest import wait_until

        wait_until(lambda: Path(ready).exists(), timeout=guard(30))
        with open(gate, "wb"):
            pass
        assert blocker.result(timeout=30) == "released"
    assert pending.cancelled()


def _pid_from(ready: Path) -> int:
    from conftest import wait_until

    wait_until(ready.exists, timeout=guard(30))
    return int(ready.read_text())


def test_shutdown_cancel_futures_kills_what_runs_and_drops_what_has_not_started(tmp_path: Path) -> None:
    """Attack: shutdown(cancel_futures=True) once waited 29.8 s for a running call."""
    ready = tmp_path / "ready"
    executor = GovernedExecutor(1)
    running = executor.submit(th.say_pid_and_wait, str(ready))
    queued = [executor.submit(th.add, n, n) for n in range(3)]
    pid = _pid_from(ready)
    executor.shutdown(wait=True, cancel_futures=True)  # returns: the running call was killed
    assert running.cancelled() and all(f.cancelled() for f in queued)
    assert gone(pid)
    assert running.execution.outcome is Outcome.CANCELLED  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(th.add, 1, 1)


def test_cancelling_a_running_call_kills_its_tree(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    with GovernedExecutor(1) as executor:
        future = executor.submit(th.say_pid_and_wait, str(ready))
        pid = _pid_from(ready)
        assert future.running()
        assert future.cancel() and future.cancelled()  # True: the stdlib's would say False
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(timeout=guard(30))
        after = executor.submit(th.add, 1, 2)  # the slot comes back once the tree is gone
        assert after.result(timeout=guard(60)) == 3
    assert gone(pid)
    assert future.execution.outcome is Outcome.CANCELLED  # type: ignore[attr-defined]
    assert not future.cancel() or future.cancelled()  # done: cancelling again changes nothing


def test_asyncio_cancellation_and_wait_for_kill_the_call(tmp_path: Path) -> None:
    ready = tmp_path / "ready"

    async def scenario(executor: GovernedExecutor) -> int:
        task = asyncio.ensure_future(executor.asubmit(th.say_pid_and_wait, str(ready)))
        await until_ready(ready, task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await time_out_once_running(
            asyncio.ensure_future(executor.asubmit(th.say_pid_and_wait, str(other))), other
        )
        return await executor.asubmit(th.add, 2, 2)

    other = tmp_path / "other"
    with GovernedExecutor(1) as executor:
        assert asyncio.run(scenario(executor)) == 4
    assert gone(int(ready.read_text()))
    wait_until(lambda: gone(int(other.read_text())))  # the timeout killed its child too


def test_options_limits_merge_with_the_pools_field_by_field() -> None:
    with GovernedExecutor(1, limits=Limits(wall_time="1h", memory="1GiB")) as executor:
        view = executor.options(limits=Limits(memory="256MiB"))
        assert view.limits == Limits(wall_time="1h", memory="256MiB")
        future = view.submit(th.add, 1, 1)
        assert future.result(timeout=guard(30)) == 2
    assert future.execution.limits == Limits(wall_time="1h", memory="256MiB")  # type: ignore[attr-defined]


def test_shutdown_waits_for_queued_calls() -> None:
    executor = GovernedExecutor(1)
    futures = [executor.submit(th.add, n, 1) for n in range(4)]
    executor.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == [1, 2, 3, 4]


def test_priority_per_call() -> None:
    with GovernedExecutor(1) as executor:
        futures = [executor.options(priority=p).submit(th.add, p, 0) for p in (1, 2, 3)]
        concurrent.futures.wait(futures, timeout=60)
    assert all(f.done() for f in futures)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        GovernedExecutor(0)
    with GovernedExecutor(1) as executor:
        with pytest.raises(TypeError, match="callable"):
            executor.submit("not callable")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="priority"):
            executor.options(priority="high")  # type: ignore[arg-type]


def test_shutdown_waits_for_pending_retries(tmp_path: Path) -> None:
    counter = str(tmp_path / "calls")
    executor = GovernedExecutor(1, retry_policy=RetryPolicy(max_retries=2, delay=0.2))
    future = executor.submit(th.fail_until, counter, 2)
    executor.shutdown(wait=True)
    assert future.result(timeout=0) == 3
    assert future.execution.attempt == 3  # type: ignore[attr-defined]


def test_every_future_settles_when_a_scheduler_stops_mid_retry(tmp_path: Path) -> None:
    counter = str(tmp_path / "calls")
    executor = GovernedExecutor(1, retry_policy=RetryPolicy(max_retries=5, delay=3600))
    scheduler = executor._scheduler
    future = executor.submit(th.fail_until, counter, 5)
    assert scheduler.wait(lambda: Path(counter).exists() and scheduler.running_tasks_count() == 0, 30)
    scheduler.sync()
    scheduler.stop()  # not a shutdown that drains: the retry waiting out its hour is dropped
    with pytest.raises(RuntimeError, match="attempt 1 fails"):
        future.result(timeout=5)
    executor.shutdown()


def test_a_memory_budget_serialises_calls_that_would_not_fit_together(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    ready = str(tmp_path / "ready")
    os.mkfifo(gate)
    with GovernedExecutor(2, memory_budget="300MiB") as executor:
        first = executor.options(limits=Limits(memory="250MiB")).submit(th.wait_for_release, gate, ready)
        second = executor.options(limits=Limits(memory="200MiB")).submit(th.add, 1, 1)
        from conftest import wait_until

        wait_until(lambda: Path(ready).exists(), timeout=guard(30))
        assert executor._scheduler.sync()
        assert not second.running() and not second.done()  # a worker is free; the budget is not
        with open(gate, "wb"):
            pass
        assert second.result(timeout=30) == 2 and first.result(timeout=30) == "released"
    assert "waits for 200.0 MiB" in second.execution.wait_reason  # type: ignore[attr-defined]
