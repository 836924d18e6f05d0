"""The start path without processes: its cost follows what it starts, never the queue's length."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from governor.scheduling._starts import Starter
from governor.scheduling._task import Task
from governor.scheduling._work import Run, Work
from policies import AdmissionPolicy, Budget, ReadyQueue, RetryPolicy, UsageEstimator
from runner import ExecutionSpec

GiB = 1 << 30
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class _CountingQueue(ReadyQueue[Run]):
    taken = 0

    def take(self) -> tuple[Run, object] | None:
        found = super().take()
        self.taken += found is not None
        return found


class _Counting(Work):
    """Work that counts how many queued runs the start path takes off the ready heap."""

    def __init__(self, aging_per_second: float) -> None:
        super().__init__(aging_per_second)
        self.ready = _CountingQueue(aging_per_second)

    @property
    def taken(self) -> int:
        assert isinstance(self.ready, _CountingQueue)
        return self.ready.taken


def _queue(work: Work, count: int, memory: str | None = None, task: Task | None = None) -> None:
    from policies import Limits

    spec = ExecutionSpec(target=["true"], limits=Limits(memory=memory))
    for n in range(count):
        run = Run(spec, 0, 1, NOW, RetryPolicy(), f"call-{n % 7}", task=task, queued_mono=float(n))
        work.queue(run)


@pytest.mark.parametrize("admission", [True, False], ids=["admission", "slots only"])
def test_a_pass_over_ten_thousand_queued_runs_looks_at_what_it_starts(admission: bool) -> None:
    work = _Counting(aging_per_second=1.0)
    _queue(work, 10_000)
    starter = Starter(
        work,
        max_running=2,
        budget=Budget(8 * GiB, 2.0) if admission else Budget(),
        admission=AdmissionPolicy() if admission else None,
        estimator=UsageEstimator(),
        pressure=None,
        available_memory=None,
    )
    chosen = starter.choose(now=1.0)
    assert len(chosen) == 2 and work.taken == 2
    assert work.queued_count == 9_998


def test_a_blocked_head_costs_its_window_not_the_queue() -> None:
    work = _Counting(aging_per_second=1.0)
    _queue(work, 10_000, memory="2GiB")  # none fits beside the one that will run
    starter = Starter(
        work,
        max_running=4,
        budget=Budget(3 * GiB),
        admission=AdmissionPolicy(window=16),
        estimator=UsageEstimator(),
        pressure=None,
        available_memory=None,
    )
    assert len(starter.choose(now=1.0)) == 1  # the first starts; the second is the blocked head
    assert work.taken == 1 + 1 + 16
    assert work.queued_count == 9_999


def test_runs_of_a_task_at_its_limit_wait_parked_not_in_the_way() -> None:
    task = Task("serial", ["true"], max_instances=1)
    task.id = 1
    work = _Counting(aging_per_second=0.0)
    _queue(work, 1_000, task=task)
    starter = Starter(
        work,
        max_running=4,
        budget=Budget(),
        admission=None,
        estimator=UsageEstimator(),
        pressure=None,
        available_memory=None,
    )
    first = starter.choose(now=1.0)
    assert len(first) == 1  # one instance; the others are parked by their task as they are met
    assert work.instances(1) == 1 and work.queued_count == 999
    looked = work.taken  # each queued run was looked at once, to park it
    assert looked == 1_000
    for step in range(3):
        work.started(first[0], _Handle())
        work.ended(first[0])  # an instance ends: one parked run comes back, not all of them
        first = starter.choose(now=2.0 + step)
        assert len(first) == 1 and work.taken == looked + step + 1


class _Handle:
    """Stands in for a started handle (``Work.started`` only keeps it)."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)
