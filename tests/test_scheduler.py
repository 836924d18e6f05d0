"""The scheduler on real child processes; schedule logic driven by a fake clock.

Includes the Go package's own cases: add and remove; a one-time task runs once and is
removed; priority order when the queue is full; concurrency never above max_running_tasks;
one execution per attempt with the errors on the failed ones; stop before the first fire
means no run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import task_helpers as th
from conftest import wait_until
from guards import guard

from governor import (
    EventTrigger,
    FakeClock,
    Limits,
    OneTimeTrigger,
    Outcome,
    PeriodicTrigger,
    RetryPolicy,
    Scheduler,
    Task,
)
from governor.scheduling._supervision import Supervision
from policies import UsageEstimator
from runner._wire import Wakeup

MiB = 1 << 20
GUARD = guard(30)  # seconds: a deadlock guard, never a delay


class Gate:
    """A FIFO a child blocks on until the test releases it."""

    def __init__(self, directory: Path, name: str = "gate") -> None:
        self.path = str(directory / name)
        os.mkfifo(self.path)

    def release(self) -> None:
        with open(self.path, "wb"):
            pass  # opening and closing the write end ends the reader's read()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 1, 12, 3, tzinfo=UTC))


@pytest.fixture
def scheduler(clock: FakeClock) -> Iterator[Scheduler]:
    with Scheduler(2, clock=clock, aging_per_second=0.0) as running:
        yield running


def ran(task: Task, count: int) -> bool:
    return len(task.executions) >= count


def idle(scheduler: Scheduler, task: Task, runs: int) -> bool:
    """After the loop has caught up with the clock: ``task`` has exactly ``runs`` runs and
    nothing of it is running or starting (a negative check without sleeping)."""
    assert scheduler.sync()
    return len(task.executions) == runs and scheduler.running_tasks_count() == 0


def test_add_get_remove(scheduler: Scheduler) -> None:
    task = scheduler.add_task(Task("noop", th.add, args=(1, 2)))
    assert task.id is not None
    assert scheduler.get_task(task.id) is task
    assert scheduler.tasks() == [task]
    scheduler.remove_task(task.id)
    assert scheduler.get_task(task.id) is None
    with pytest.raises(KeyError, match="no task with id"):
        scheduler.remove_task(task.id)


def test_one_time_task_runs_once_and_is_removed(scheduler: Scheduler) -> None:
    task = scheduler.add_task(Task("once", th.add, args=(2, 3), triggers=[OneTimeTrigger(delay=0)]))
    assert scheduler.wait(lambda: ran(task, 1), GUARD)
    assert scheduler.wait(lambda: scheduler.get_task(task.id) is None, GUARD)  # type: ignore[arg-type]
    assert [e.result for e in task.executions] == [5]


def test_one_time_delay_waits_for_the_clock(scheduler: Scheduler, clock: FakeClock) -> None:
    task = scheduler.add_task(Task("later", th.add, args=(1, 1), triggers=[OneTimeTrigger(delay=60)]))
    clock.advance(59)
    assert idle(scheduler, task, 0)
    clock.advance(1)
    assert scheduler.wait(lambda: ran(task, 1), GUARD)


def test_priority_order_when_the_queue_is_full(clock: FakeClock, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    ready = str(tmp_path / "ready")
    with Scheduler(1, clock=clock, aging_per_second=0.0) as scheduler:
        blocker = scheduler.add_task(Task("blocker", th.wait_for_release, args=(gate.path, ready)))
        scheduler.fire(blocker.id)  # type: ignore[arg-type]
        wait_until(lambda: Path(ready).exists(), GUARD)
        tasks = [
            scheduler.add_task(Task(f"p{p}-{n}", th.add, args=(p, 0), priority=p))
            for n, p in enumerate((1, 5, 3, 5))
        ]
        for task in tasks:
            scheduler.fire(task.id)  # type: ignore[arg-type]
        gate.release()
        assert scheduler.wait(lambda: all(ran(t, 1) for t in tasks), GUARD)
    order = sorted(tasks, key=lambda t: t.executions[0].started_at)
    assert [t.name for t in order] == ["p5-1", "p5-3", "p3-2", "p1-0"]  # priority, then arrival


def test_concurrency_never_exceeds_max_running_tasks(clock: FakeClock) -> None:
    seen: list[int] = []
    with Scheduler(2, clock=clock) as scheduler:
        tasks = [scheduler.add_task(Task(f"t{i}", th.sleep, args=(0.2,))) for i in range(6)]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.append(scheduler.running_tasks_count())
                stop.wait(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        for task in tasks:
            scheduler.fire(task.id)  # type: ignore[arg-type]
        assert scheduler.wait(lambda: all(ran(t, 1) for t in tasks), GUARD)
        stop.set()
        watcher.join()
    assert max(seen) == 2
    spans = [(t.executions[0].started_at, t.executions[0].ended_at) for t in tasks]
    for start, _ in spans:
        overlapping = sum(1 for s, e in spans if s <= start < e)
        assert overlapping <= 2


def test_one_execution_per_attempt_with_errors_on_failed_ones(scheduler: Scheduler, tmp_path: Path) -> None:
    counter = str(tmp_path / "calls")
    task = scheduler.add_task(
        Task("flaky", th.fail_until, args=(counter, 2), retry_policy=RetryPolicy(max_retries=3))
    )
    scheduler.fire(task.id)  # type: ignore[arg-type]
    assert scheduler.wait(lambda: ran(task, 3), GUARD)
    outcomes = [(e.attempt, e.outcome) for e in task.executions]
    assert outcomes == [(1, Outcome.FAILED), (2, Outcome.FAILED), (3, Outcome.SUCCEEDED)]
    assert "attempt 1 fails" in task.executions[0].error.message  # type: ignore[union-attr]
    assert task.executions[2].result == 3 and task.executions[2].error is None


def test_retry_delay_follows_the_clock(scheduler: Scheduler, clock: FakeClock, tmp_path: Path) -> None:
    counter = str(tmp_path / "calls")
    policy = RetryPolicy(max_retries=1, delay=30)
    task = scheduler.add_task(Task("flaky", th.fail_until, args=(counter, 1), retry_policy=policy))
    scheduler.fire(task.id)  # type: ignore[arg-type]
    assert scheduler.wait(lambda: ran(task, 1), GUARD)
    assert idle(scheduler, task, 1)  # the retry waits for the clock
    clock.advance(30)
    assert scheduler.wait(lambda: ran(task, 2), GUARD)
    assert task.executions[1].outcome is Outcome.SUCCEEDED


def test_memory_limit_grows_on_retry(scheduler: Scheduler) -> None:
    policy = RetryPolicy(max_retries=1, retry_on=("memory_exceeded",), memory_growth=4.0)
    task = Task(
        "hungry", th.hold_memory, args=(120 * MiB,), limits=Limits(memory="64MiB"), retry_policy=policy
    )
    scheduler.add_task(task)
    scheduler.fire(task.id)  # type: ignore[arg-type]
    assert scheduler.wait(lambda: ran(task, 2), GUARD)
    first, second = task.executions
    assert first.outcome is Outcome.MEMORY_EXCEEDED and first.limits.memory == 64 * MiB
    assert second.outcome is Outcome.SUCCEEDED and second.limits.memory == 256 * MiB


def test_stop_before_the_first_fire_means_no_run(clock: FakeClock) -> None:
    scheduler = Scheduler(1, clock=clock)
    task = scheduler.add_task(Task("hourly", th.add, args=(1, 1), triggers=[PeriodicTrigger(interval=3600)]))
    scheduler.start()
    scheduler.stop()
    clock.advance(7200)
    assert task.executions == []


def test_cron_fires_on_the_fake_clock(scheduler: Scheduler, clock: FakeClock) -> None:
    task = scheduler.add_task(
        Task("cron", th.add, args=(1, 1), triggers=[PeriodicTrigger(cron="*/5 * * * *")])
    )
    clock.advance(timedelta(minutes=1, seconds=59))  # 12:04:59
    assert idle(scheduler, task, 0)
    clock.advance(1)  # 12:05
    assert scheduler.wait(lambda: ran(task, 1), GUARD)
    clock.advance(timedelta(minutes=5))  # 12:10
    assert scheduler.wait(lambda: ran(task, 2), GUARD)
    assert len(task.executions) == 2


def test_missed_fires_coalesce_into_one_run(scheduler: Scheduler, clock: FakeClock) -> None:
    task = scheduler.add_task(Task("every10s", th.add, args=(1, 1), triggers=[PeriodicTrigger(interval=10)]))
    clock.advance(100)  # ten fires were due at once
    assert scheduler.wait(lambda: ran(task, 1), GUARD)
    assert idle(scheduler, task, 1)
    clock.advance(10)
    assert scheduler.wait(lambda: ran(task, 2), GUARD)


def test_event_burst_while_full_runs_every_event(clock: FakeClock, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    ready = str(tmp_path / "ready")
    log = str(tmp_path / "log")
    event = EventTrigger()
    with Scheduler(1, clock=clock) as scheduler:
        blocker = scheduler.add_task(Task("blocker", th.wait_for_release, args=(gate.path, ready)))
        scheduler.fire(blocker.id)  # type: ignore[arg-type]
        wait_until(lambda: Path(ready).exists(), GUARD)
        task = scheduler.add_task(
            Task("on-event", th.append_line, args=(log, "run"), triggers=[event], payload_kwarg="payload")
        )
        for n in range(3):
            event.fire(payload=n)
        gate.release()
        assert scheduler.wait(lambda: ran(task, 3), GUARD)
    assert sorted(Path(log).read_text().split()) == ["run:0", "run:1", "run:2"]


def test_a_task_does_not_overlap_itself(scheduler: Scheduler) -> None:
    event = EventTrigger()
    task = scheduler.add_task(Task("serial", th.sleep, args=(0.2,), triggers=[event]))
    event.fire()
    event.fire()
    assert scheduler.wait(lambda: ran(task, 2), GUARD)
    first, second = sorted(task.executions, key=lambda e: e.started_at)
    assert second.started_at >= first.ended_at


def test_pause_skips_fires_and_keeps_events(scheduler: Scheduler, clock: FakeClock) -> None:
    event = EventTrigger()
    task = scheduler.add_task(
        Task("pausable", th.add, args=(1, 1), triggers=[PeriodicTrigger(interval=10), event])
    )
    scheduler.pause_task(task.id)  # type: ignore[arg-type]
    clock.advance(10)
    event.fire()
    assert idle(scheduler, task, 0)
    scheduler.resume_task(task.id)  # type: ignore[arg-type]
    assert scheduler.wait(lambda: ran(task, 1), GUARD)  # the event, not the missed fire
    assert idle(scheduler, task, 1)


def test_custom_trigger_is_polled(clock: FakeClock) -> None:
    class FlagTrigger:
        def __init__(self) -> None:
            self.flag = False

        def is_ready(self) -> bool:
            return self.flag

        def reset(self) -> None:
            self.flag = False

    trigger = FlagTrigger()
    with Scheduler(1, clock=clock, poll_interval=5) as scheduler:
        task = scheduler.add_task(Task("custom", th.add, args=(1, 1), triggers=[trigger]))
        trigger.flag = True
        clock.advance(5)
        assert scheduler.wait(lambda: ran(task, 1), GUARD)
        assert trigger.flag is False


def test_stop_cancels_running_executions_and_is_repeatable(clock: FakeClock, tmp_path: Path) -> None:
    ready = str(tmp_path / "ready")
    scheduler = Scheduler(1, clock=clock)
    scheduler.start()
    task = scheduler.add_task(Task("forever", th.wait_for_ever, args=(ready,)))
    scheduler.fire(task.id)  # type: ignore[arg-type]
    wait_until(lambda: Path(ready).exists(), GUARD)
    started = time.monotonic()
    scheduler.stop(cancel=True)
    assert time.monotonic() - started < GUARD
    assert [e.outcome for e in task.executions] == [Outcome.CANCELLED]
    scheduler.stop()  # harmless
    scheduler.start()  # restartable
    scheduler.fire(task.id)  # type: ignore[arg-type]
    Path(ready).unlink()
    wait_until(lambda: Path(ready).exists(), GUARD)
    scheduler.stop(timeout=0.1)  # the grace runs out: cancelled
    assert [e.outcome for e in task.executions] == [Outcome.CANCELLED, Outcome.CANCELLED]


def test_stop_waits_for_running_executions(clock: FakeClock) -> None:
    scheduler = Scheduler(1, clock=clock)
    scheduler.start()
    task = scheduler.add_task(Task("short", th.sleep, args=(0.2,)))
    scheduler.fire(task.id)  # type: ignore[arg-type]
    assert scheduler.wait(lambda: scheduler.running_tasks_count() == 1 or ran(task, 1), GUARD)
    scheduler.stop()
    assert [e.outcome for e in task.executions] == [Outcome.SUCCEEDED]


def test_bad_definitions_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="max_running_tasks"):
        Scheduler(0)
    with pytest.raises(ValueError, match="argv must not be empty"):
        Task("empty", [])
    with pytest.raises(ValueError, match="name"):
        Task("", th.add)
    with pytest.raises(ValueError, match="priority"):
        Task("p", th.add, priority="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cron"):
        PeriodicTrigger(cron="61 * * * *")
    with pytest.raises(ValueError, match="interval"):
        PeriodicTrigger(interval=-5)
    with pytest.raises(ValueError, match="delay"):
        OneTimeTrigger(delay=-1)
    with pytest.raises(TypeError):
        Task("bad trigger", th.add, triggers=[object()])


def test_a_task_that_cannot_start_is_recorded_and_the_loop_goes_on(scheduler: Scheduler) -> None:
    from runner._enforcement import cgroup_unavailable

    missing = next((m for m in ("cgroup2", "cgroup1") if cgroup_unavailable(m) is not None), None)  # type: ignore[arg-type]
    if missing is None:
        pytest.skip("this host has every cgroup mode")
    broken = scheduler.add_task(Task("broken", th.add, args=(1, 1), enforcement=missing))
    healthy = scheduler.add_task(Task("healthy", th.add, args=(1, 1)))
    scheduler.fire(broken.id)  # type: ignore[arg-type]
    scheduler.fire(healthy.id)  # type: ignore[arg-type]
    assert scheduler.wait(lambda: ran(broken, 1) and ran(healthy, 1), GUARD)
    assert broken.executions[0].outcome is Outcome.CRASHED
    assert "could not start" in broken.executions[0].error.message  # type: ignore[union-attr]
    assert healthy.executions[0].outcome is Outcome.SUCCEEDED


def test_admission_holds_a_task_back_until_memory_frees(tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    ready = str(tmp_path / "ready")
    with Scheduler(2, memory_budget="300MiB") as scheduler:
        # No history yet: each estimate is the declared limit; together they exceed the budget.
        big = scheduler.add_task(
            Task("big", th.wait_for_release, args=(gate.path, ready), limits=Limits(memory="250MiB"))
        )
        second = scheduler.add_task(Task("second", th.add, args=(1, 1), limits=Limits(memory="200MiB")))
        scheduler.fire(big.id)  # type: ignore[arg-type]
        wait_until(lambda: Path(ready).exists(), GUARD)
        scheduler.fire(second.id)  # type: ignore[arg-type]
        assert scheduler.sync()
        assert (
            scheduler.running_tasks_count() == 1 and second.executions == []
        )  # a slot is free, memory is not
        status = scheduler.snapshot()
        assert [q["task"] for q in status["queued"]] == ["second"]
        # The default pressure says what it reads: PSI of our own cgroup on v2, CPU time elsewhere.
        assert status["pressure_readings"]["source"] in ("cpu time", "cgroup2 psi")
        gate.release()
        assert scheduler.wait(lambda: ran(second, 1), GUARD)
    assert second.executions[0].started_at >= big.executions[0].ended_at
    reason = second.executions[0].wait_reason
    assert reason is not None and "200.0 MiB" in reason and "250.0 MiB" not in reason
    assert second.executions[0].queued_at < second.executions[0].started_at  # type: ignore[operator]


@pytest.mark.parametrize("memory_budget", ["1GiB", None], ids=["admission", "no-admission"])
def test_a_run_queued_behind_full_slots_says_so(tmp_path: Path, memory_budget: str | None) -> None:
    gate = Gate(tmp_path)
    ready = str(tmp_path / "ready")
    with Scheduler(1, memory_budget=memory_budget, cpu_budget=None) as scheduler:
        holder = scheduler.add_task(Task("holder", th.wait_for_release, args=(gate.path, ready)))
        waiter = scheduler.add_task(Task("waiter", th.add, args=(1, 1)))
        scheduler.fire(holder.id)  # type: ignore[arg-type]
        wait_until(lambda: Path(ready).exists(), GUARD)
        try:
            scheduler.fire(waiter.id)  # type: ignore[arg-type]  # queued once every slot is taken
            assert scheduler.sync()
            assert [(q["task"], q["wait_reason"]) for q in scheduler.snapshot()["queued"]] == [
                ("waiter", "no free slot")
            ]
        finally:
            gate.release()  # the holder is reading it: this never blocks
        assert scheduler.wait(lambda: ran(waiter, 1), GUARD)
    assert waiter.executions[0].wait_reason == "no free slot"


def test_a_run_that_outgrows_its_estimate_is_evicted_and_runs_again_when_memory_frees(
    tmp_path: Path,
) -> None:
    estimator = UsageEstimator()
    for name in ("grower", "steady"):  # both ran at 100 MiB before: both are admitted together
        estimator.observe(name, peak_memory_bytes=100 * MiB, cpu_seconds=0.1, wall_seconds=1.0)
    grower_gate, steady_gate = Gate(tmp_path, "grower"), Gate(tmp_path, "steady")
    grower_ready, steady_ready = tmp_path / "grower-ready", tmp_path / "steady-ready"
    order = Gate(tmp_path, "steady-has-grown")  # the grower grows only once the steady one has
    with Scheduler(2, memory_budget="450MiB", estimator=estimator, pressure=lambda: 0.0) as scheduler:
        limits = Limits(memory="1GiB")
        grower = scheduler.add_task(
            Task(
                "grower",
                th.hold_memory_until_released,
                args=(400 * MiB, grower_gate.path, str(grower_ready)),
                kwargs={"after": order.path},
                limits=limits,
            )
        )
        steady = scheduler.add_task(
            Task(
                "steady",
                th.hold_memory_until_released,
                args=(150 * MiB, steady_gate.path, str(steady_ready)),
                kwargs={"then": order.path},
                limits=limits,
            )
        )
        scheduler.fire(grower.id)  # type: ignore[arg-type]
        scheduler.fire(steady.id)  # type: ignore[arg-type]
        # Together they grow past the 450 MiB budget once the grower passes ~290 MiB, well past the
        # steady one's 150 MiB: the one furthest past its estimate goes.
        assert scheduler.wait(lambda: ran(grower, 1), GUARD)
        evicted = grower.executions[0]
        assert evicted.outcome is Outcome.EVICTED and steady.executions == []
        assert "evicted to keep within the memory budget" in evicted.error.message  # type: ignore[union-attr]
        assert scheduler.sync() and scheduler.queued_tasks_count() == 1  # queued again, waiting for memory
        assert scheduler.estimator.estimate("grower", memory_limit=1 << 30).source == "evicted"
        steady_gate.release()
        order.release()  # returns once the second attempt has started and waits to grow
        grower_gate.release()
        assert scheduler.wait(lambda: ran(grower, 2) and ran(steady, 1), GUARD)
    again = grower.executions[1]
    assert (again.outcome, again.attempt, again.result) == (Outcome.SUCCEEDED, 2, 400 * MiB)
    assert again.started_at >= steady.executions[0].ended_at  # it waited for memory to free
    assert again.wait_reason is not None and "waits for" in again.wait_reason
    assert steady.executions[0].outcome is Outcome.SUCCEEDED


def test_estimates_are_learned_from_measured_runs() -> None:
    with Scheduler(1, memory_budget="1GiB") as scheduler:
        task = scheduler.add_task(
            Task("learn", th.hold_memory, args=(50 * MiB,), limits=Limits(memory="900MiB"))
        )
        scheduler.fire(task.id)  # type: ignore[arg-type]
        assert scheduler.wait(lambda: ran(task, 1), GUARD)
        estimate = scheduler._estimator.estimate("learn", memory_limit=900 * MiB)
    assert estimate.source == "history"
    assert 50 * MiB <= estimate.memory_bytes < 200 * MiB  # type: ignore[operator]


# -- the rebuilt core: one owner of state, work-conserving admission, readable reasons ------


class _NeverReady:
    """A polled trigger (the seed's shape) that never fires: the loop asks it at every poll."""

    def is_ready(self) -> bool:
        return False

    def reset(self) -> None:
        raise AssertionError("reset without a fire")


def test_twenty_thousand_polled_tasks_while_four_threads_add_and_remove_tasks() -> None:
    """Callers never touch the loop's state: adds and removes from four threads while the loop
    walks 20,000 polled tasks at every poll raise nothing and lose nothing."""
    with Scheduler(1, poll_interval=0.01) as scheduler:
        for n in range(20_000):
            scheduler.add_task(Task(f"polled-{n}", ["true"], triggers=[_NeverReady()]))
        errors: list[BaseException] = []

        def churn(worker: int) -> None:
            try:
                for n in range(500):
                    task = scheduler.add_task(Task(f"churn-{worker}-{n}", ["true"], triggers=[_NeverReady()]))
                    if n % 2:
                        scheduler.remove_task(task.id)  # type: ignore[arg-type]
            except BaseException as error:  # reported below: a thread's failure must fail the test
                errors.append(error)

        threads = [threading.Thread(target=churn, args=(worker,)) for worker in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(GUARD)
        assert scheduler.sync(GUARD)
        assert errors == [] and scheduler.loop_errors == 0
        assert len(scheduler.tasks()) == 20_000 + 4 * 250
        assert scheduler.snapshot()["loop_errors"] == 0


def test_a_stop_after_every_queued_run_was_withdrawn_does_not_hang(tmp_path: Path) -> None:
    """Queued calls cancelled while one runs; it ends; nothing is left: shutdown returns."""
    from governor import GovernedExecutor

    gate = Gate(tmp_path)
    ready = str(tmp_path / "ready")
    executor = GovernedExecutor(1)
    holder = executor.submit(th.wait_for_release, gate.path, ready)
    wait_until(lambda: Path(ready).exists(), GUARD)
    queued = [executor.submit(th.add, n, n) for n in range(20)]
    assert all(future.cancel() for future in queued)
    gate.release()
    assert holder.result(GUARD) == "released"
    stopping = threading.Thread(target=executor.shutdown, kwargs={"wait": True})
    stopping.start()
    stopping.join(GUARD)
    assert not stopping.is_alive(), "shutdown(wait=True) hung with nothing left to run"
    assert executor._scheduler.queued_tasks_count() == 0


def test_pressure_and_cpu_estimates_never_leave_the_pool_idle() -> None:
    """A task estimated at two cores, on a budget of one core that pressure halves: with nothing
    running it starts all the same (CPU is compressible)."""
    from policies import Pressure

    estimator = UsageEstimator()
    estimator.observe("wide", peak_memory_bytes=MiB, cpu_seconds=20.0, wall_seconds=10.0)
    assert estimator.estimate("wide").cpu_cores == 2.0
    with Scheduler(
        2, cpu_budget=1.0, memory_budget=None, estimator=estimator, pressure=lambda: Pressure(1.0, 1.0)
    ) as scheduler:
        task = scheduler.add_task(Task("wide", th.add, args=(1, 1)))
        scheduler.fire(task.id)  # type: ignore[arg-type]
        assert scheduler.wait(lambda: ran(task, 1), GUARD)
    assert task.executions[0].outcome is Outcome.SUCCEEDED


def test_runs_too_short_to_measure_a_rate_teach_no_cpu_estimate() -> None:
    with Scheduler(1) as scheduler:  # the defaults: admission on
        task = scheduler.add_task(Task("quick", th.add, args=(1, 1)))
        for _ in range(3):
            scheduler.fire(task.id)  # type: ignore[arg-type]
        assert scheduler.wait(lambda: ran(task, 3), GUARD)
    estimate = scheduler.estimator.estimate("quick")
    assert estimate.source == "history" and estimate.cpu_cores is None  # no 1.9-core trivial call


def test_wait_reasons_name_the_task_they_wait_for_and_stay_short(tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    ready = str(tmp_path / "ready")
    head_name = "nightly-" + "x" * 300  # a reason names it, within bounds
    with Scheduler(3, memory_budget="300MiB", cpu_budget=None) as scheduler:
        holder = scheduler.add_task(
            Task("holder", th.wait_for_release, args=(gate.path, ready), limits=Limits(memory="250MiB"))
        )
        head = scheduler.add_task(Task(head_name, th.add, args=(1, 1), limits=Limits(memory="200MiB")))
        behind = scheduler.add_task(Task("behind", th.add, args=(2, 2), limits=Limits(memory="100MiB")))
        scheduler.fire(holder.id)  # type: ignore[arg-type]
        wait_until(lambda: Path(ready).exists(), GUARD)
        try:
            scheduler.fire(head.id)  # type: ignore[arg-type]
            scheduler.fire(behind.id)  # type: ignore[arg-type]
            assert scheduler.sync()
            reasons = {entry["task"]: entry["wait_reason"] for entry in scheduler.snapshot()["queued"]}
        finally:
            gate.release()
        assert scheduler.wait(lambda: ran(head, 1) and ran(behind, 1), GUARD)
    assert reasons[head_name].startswith("waits for 200.0 MiB; 50.0 MiB")
    assert reasons["behind"].startswith("held back for nightly-xxx")
    assert all(len(reason) <= 200 and "Request" not in reason for reason in reasons.values())
    assert behind.executions[0].wait_reason == reasons["behind"]


def test_a_task_keeps_its_recent_executions_only() -> None:
    with Scheduler(1) as scheduler:
        task = scheduler.add_task(Task("often", th.add, args=(1, 1), keep_executions=3))
        for _ in range(5):
            scheduler.fire(task.id)  # type: ignore[arg-type]
        assert scheduler.wait(lambda: task.runs == 5, GUARD)
    assert len(task.executions) == 3 and [record.attempt for record in task.executions] == [1, 1, 1]
    with pytest.raises(ValueError, match="keep_executions"):
        Task("bad", ["true"], keep_executions=-1)


class _Handle:
    """What the loop's supervision asks of a handle, with what reading one descriptor does."""

    def __init__(self, read: Callable[[_Handle, int], None]) -> None:
        self.watched: set[int] = set()
        self.read = read
        self.seen: list[int] = []
        self.started, self.done = True, False

    def fds(self) -> list[int]:
        return sorted(self.watched)

    def deadline(self) -> float | None:
        return None

    def on_readable(self, fd: int) -> None:
        self.seen.append(fd)
        self.read(self, fd)

    def on_time(self, now: float | None = None) -> None:
        return None


class _Run:
    """A run as the supervision sees it; its hash is its place in the turn's set of runs."""

    def __init__(self, place: int, handle: _Handle) -> None:
        self.place, self.handle, self.announced = place, handle, True

    def __hash__(self) -> int:
        return self.place


def test_a_descriptor_number_closed_and_reused_in_one_turn_stays_watched_for_its_new_owner() -> None:
    """Attack (a hang under load): one handle closed a watched descriptor as it read (its pidfd,
    once the status came) and another, in the same turn, was given that number (the next
    child's pidfd, in the fork server's reply). Refreshed in that order, the first unwatched
    the second's descriptor: its child's status never woke the loop, and forgetting it raised."""
    closer_r, closer_w = os.pipe()
    opener_r, opener_w = os.pipe()
    reused: list[tuple[int, int]] = []

    def close_it(handle: _Handle, fd: int) -> None:
        handle.watched.discard(fd)
        os.close(fd)

    def open_one(handle: _Handle, fd: int) -> None:
        os.read(fd, 1)
        reused.append(os.pipe())  # the lowest free numbers: the one just closed first
        handle.watched.add(reused[0][0])

    wakeup = Wakeup()
    supervision = Supervision(wakeup)
    closer, opener = _Handle(close_it), _Handle(open_one)
    closer.watched.add(closer_r)
    opener.watched.add(opener_r)
    # Added first, the closer's event is read first; the opener, first in the set, is refreshed first.
    first, second = _Run(2, closer), _Run(1, opener)
    try:
        for run in (first, second):
            supervision.add(run)  # type: ignore[arg-type]
        os.write(closer_w, b"x")
        os.write(opener_w, b"x")
        supervision.wait(guard(10))
        assert reused and reused[0][0] == closer_r, "the number was not reused: the attack did not happen"
        os.write(reused[0][1], b"x")
        supervision.wait(guard(10))
        assert opener.seen == [opener_r, closer_r], "the opener's new descriptor was not watched"
        opener.done = closer.done = True
        for run in (first, second):
            supervision.touch(run)  # type: ignore[arg-type]
        _, ended = supervision.wait(0)
        assert set(ended) == {first, second}
    finally:
        for fd in (closer_w, opener_r, opener_w, *(reused[0] if reused else ())):
            os.close(fd)
        wakeup.close()
