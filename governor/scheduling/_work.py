"""Queued and running work: the one registry of runs, and the only place per-task counts change.

    queue() ──> ready heap (priority + aging) ──take_startable()──> starting ──started()──> running
                    │   ^                            │    │                                   │
                    │   └────────put_back()──────────┘    └─> parked by its task              ended()
                    │                                          (paused, or at max_instances)    │
                    └── withdraw(): cancelled, task removed      ^─── unparked when it may run <┘

A run whose task may not start it now (the task is paused, or runs ``max_instances`` already)
waits in its task's own parked queue, not in the ready heap, so the start path never walks
past it; it returns to the ready heap, at its old place, when the task may run it. Parking
is lazy: a run is parked when the start path reaches it, and unparked one at a time as
instances end, so nothing here walks the whole queue. Every structure is owned by the loop
thread; callers read only the published counts.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from policies import Need, ReadyQueue, RetryPolicy
from runner import Execution, ExecutionSpec, Handle

if TYPE_CHECKING:
    from governor.scheduling._task import Task

PAUSED = "task paused"


class Owner(Protocol):
    """Whoever waits for a call's result (``GovernedExecutor``'s future): told when the call
    starts, and once, when it has its final record or will never run (again)."""

    def cancelled(self) -> bool:
        """True if the caller gave up on the call before it started."""
        ...

    def begin(self) -> bool:
        """The call starts now; ``False`` if the caller cancelled it first (it is dropped)."""
        ...

    def settle(self, record: Execution) -> None:
        """The call's final record (no retry follows)."""
        ...

    def abandon(self, last: Execution | None) -> None:
        """The call will not run (again); ``last`` is its last attempt's record, if any."""
        ...


@dataclass(eq=False)
class Run:
    """One execution waiting for a slot, or running (the work item: it stays in the supervisor)."""

    spec: ExecutionSpec
    priority: int
    attempt: int
    queued_at: datetime
    retry_policy: RetryPolicy
    name: str  # its task's name, or the call's: the estimate key and how reasons name it
    task: Task | None = None
    owner: Owner | None = None
    scheduled_for: datetime | None = None  # the fire time it answers, for lateness
    time_fire: bool = False  # queued by a time trigger (coalesced per task)
    need: Need | None = None  # its admission estimate when it was last considered
    wait_reason: str | None = None  # why it waited, the last time it was held back
    started_mono: float | None = None
    previous: Execution | None = None  # a retry's failed attempt, to settle its owner with
    payload_text: str | None = None  # a command's event payload, as JSON (written as it starts)
    cause: str | None = None  # the fire that queued it, if it was named (a service's fire id)
    evictions: int = 0  # times the governor stopped this run to keep within the memory budget
    queued_mono: float = field(default_factory=time.monotonic)
    handle: Handle | None = None  # while running
    token: object = None  # its place in the ready heap, while taken out of it
    parked: bool = False
    cancelling: bool = False  # the loop has asked its handle to stop
    announced: bool = False  # listeners have been told it started

    @property
    def task_id(self) -> int | None:
        return self.task.id if self.task is not None else None

    def __repr__(self) -> str:
        return f"Run({self.name!r}, attempt {self.attempt})"


class Work:
    """Queued and running runs (see the module docstring)."""

    def __init__(self, aging_per_second: float) -> None:
        self.ready: ReadyQueue[Run] = ReadyQueue(aging_per_second)
        self._parked: dict[int, ReadyQueue[Run]] = {}
        self._queued_of: dict[int, set[Run]] = {}  # task id -> its runs in the ready heap or parked
        self._running: dict[Run, None] = {}  # insertion-ordered set
        self._instances: Counter[int] = Counter()  # running or starting, per task
        self._time_fires: Counter[int] = Counter()  # queued time-triggered runs, per task
        self._delayed: Counter[int] = Counter()  # retries waiting out their delay, per task
        self._parked_count = 0

    # -- queueing -------------------------------------------------------------------------------

    def queue(self, run: Run) -> None:
        """Queue ``run`` (its ``queued_mono`` orders it among equals)."""
        self.ready.push(run, run.priority, run.queued_mono)
        task_id = run.task_id
        if task_id is not None:
            self._queued_of.setdefault(task_id, set()).add(run)
            self._time_fires[task_id] += run.time_fire

    def take_startable(self) -> Run | None:
        """The next run, in priority order, that its task lets start now, counted as starting
        (``put_back`` undoes that); runs of held tasks are parked on the way, runs whose
        caller gave up are dropped. ``None`` when nothing is left to start."""
        while (taken := self.ready.take()) is not None:
            run: Run = taken[0]
            run.token = taken[1]
            if run.owner is not None and run.owner.cancelled():
                run.owner.abandon(run.previous)
                continue
            task = run.task
            if task is not None and task.id is not None:
                held = self._held_by_task(task)
                if held is not None:
                    self._park(run, task.id, held)
                    continue
                self._instances[task.id] += 1
                self._leave(run, task.id)
            return run
        return None

    def put_back(self, run: Run) -> None:
        """Return a run ``take_startable`` handed out, unstarted, to its old place."""
        task_id = run.task_id
        if task_id is not None:
            self._instances[task_id] -= 1
            self._queued_of.setdefault(task_id, set()).add(run)
            self._time_fires[task_id] += run.time_fire
        self.ready.put_back(run.token)
        run.token = None

    def withdraw(self, run: Run) -> bool:
        """Take a queued run out (its caller cancelled it); ``False`` if it was not queued."""
        task_id = run.task_id
        if run.parked and task_id is not None and task_id in self._parked:
            removed = self._parked[task_id].remove(run)
            self._parked_count -= removed
        else:
            removed = self.ready.remove(run)
        if removed and task_id is not None:
            self._leave(run, task_id)
        run.parked = False
        return removed

    def drop_task(self, task_id: int) -> list[Run]:
        """Take every queued run of a task out (it was removed); returns them."""
        runs = list(self._queued_of.pop(task_id, ()))
        parked = self._parked.pop(task_id, None)
        if parked is not None:
            self._parked_count -= len(parked)
        for run in runs:
            if not run.parked:
                self.ready.remove(run)
            run.parked = False
        self._time_fires.pop(task_id, None)
        return runs

    def drain_queue(self) -> list[Run]:
        """Take every queued run out, parked ones too (the scheduler stops); returns them."""
        runs: list[Run] = [taken[0] for taken in iter(self.ready.take, None)]
        for parked in self._parked.values():
            runs.extend(parked.pop() for _ in range(len(parked)))
        self._parked.clear()
        self._parked_count = 0
        self._queued_of.clear()
        self._time_fires.clear()
        for run in runs:
            run.parked = False
        return runs

    # -- running --------------------------------------------------------------------------------

    def started(self, run: Run, handle: Handle) -> None:
        run.handle = handle
        run.token = None
        self._running[run] = None

    def ended(self, run: Run) -> None:
        """A run that started (or was taken to start) is over: its task may run another."""
        self._running.pop(run, None)
        run.handle = None
        task = run.task
        if task is not None and task.id is not None:
            self._instances[task.id] -= 1
            if not self._instances[task.id]:
                del self._instances[task.id]
            self.release(task)

    def release(self, task: Task) -> None:
        """Return the task's best parked runs to the ready heap, one per instance it may still
        start (it was resumed, or an instance ended)."""
        task_id = task.id or 0
        parked = self._parked.get(task_id)
        if not parked or task.paused:
            return
        for _ in range(min(task.max_instances - self._instances[task_id], len(parked))):
            run = parked.pop()
            self._parked_count -= 1
            run.parked = False
            self.ready.push(run, run.priority, run.queued_mono)  # its old place: the same key
        if not parked:
            del self._parked[task_id]

    def running(self) -> list[Run]:
        """Running runs, in the order they started."""
        return list(self._running)

    def is_running(self, run: Run) -> bool:
        """Whether ``run`` is running now."""
        return run in self._running

    # -- per-task counts ------------------------------------------------------------------------

    def instances(self, task_id: int) -> int:
        """Runs of the task running or starting."""
        return self._instances.get(task_id, 0)

    def queued_time_fires(self, task_id: int) -> int:
        """Queued runs of the task that a time trigger queued (at most one: coalescing)."""
        return self._time_fires.get(task_id, 0)

    def delay(self, run: Run) -> None:
        """A retry of ``run``'s task waits out its delay (it is not queued yet)."""
        if run.task_id is not None:
            self._delayed[run.task_id] += 1

    def undelay(self, run: Run) -> None:
        if run.task_id is not None:
            self._delayed[run.task_id] -= 1
            if not self._delayed[run.task_id]:
                del self._delayed[run.task_id]

    def pending(self, task_id: int) -> bool:
        """Whether anything of the task is queued, waiting to retry or running."""
        return bool(
            self._queued_of.get(task_id) or self._delayed.get(task_id) or self._instances.get(task_id)
        )

    @property
    def queued_count(self) -> int:
        return len(self.ready) + self._parked_count

    @property
    def running_count(self) -> int:
        return len(self._running)

    def queued(self, limit: int) -> Iterator[Run]:
        """Up to ``limit`` queued runs in start order (the ready heap), then parked ones."""
        shown = self.ready.ordered(limit)
        yield from shown
        left = limit - len(shown)
        for parked in self._parked.values():
            if left <= 0:
                return
            chunk = parked.ordered(left)
            left -= len(chunk)
            yield from chunk

    # -- behind it ------------------------------------------------------------------------------

    def _held_by_task(self, task: Task) -> str | None:
        if task.paused:
            return PAUSED
        if self._instances[task.id or 0] >= task.max_instances:
            return f"its task runs {task.max_instances} instance(s), its most"
        return None

    def _park(self, run: Run, task_id: int, reason: str) -> None:
        run.wait_reason = reason
        run.parked = True
        run.token = None
        self._parked.setdefault(task_id, ReadyQueue(self.ready.aging_per_second)).push(
            run, run.priority, run.queued_mono
        )
        self._parked_count += 1

    def _leave(self, run: Run, task_id: int) -> None:
        queued = self._queued_of.get(task_id)
        if queued is not None:
            queued.discard(run)
            if not queued:
                del self._queued_of[task_id]
        if run.time_fire:
            self._time_fires[task_id] -= 1
            if not self._time_fires[task_id]:
                del self._time_fires[task_id]


def describe_queued(run: Run, now: datetime) -> dict[str, Any]:
    """A queued run as ``status`` shows it."""
    reason = run.wait_reason
    if run.task is not None and run.task.paused:
        reason = PAUSED
    return {
        "task": run.task.name if run.task else None,
        "name": run.name,
        "attempt": run.attempt,
        "priority": run.priority,
        "queued_at": run.queued_at.isoformat(),
        "waited_seconds": round(max(0.0, (now - run.queued_at).total_seconds()), 3),
        "wait_reason": reason,
        "estimate_bytes": run.need.memory_bytes if run.need else None,
    }


def describe_running(run: Run, evicting: bool) -> dict[str, Any]:
    """A running run as ``status`` shows it, with its latest usage reading."""
    assert run.handle is not None
    handle, reading = run.handle, run.handle.last_reading
    return {
        "task": run.task.name if run.task else None,
        "name": run.name,
        "attempt": run.attempt,
        "run_id": handle.id,
        "pid": handle.pid,
        "started_at": handle.started_at.isoformat(),
        "memory_bytes": reading.memory_bytes if reading else None,
        "cpu_seconds": reading.cpu_seconds if reading else None,
        "limits": run.spec.limits.as_dict(),
        "estimate_bytes": run.need.memory_bytes if run.need else None,
        "evicting": evicting,
    }


def describe_task(task: Task) -> dict[str, Any]:
    """A task as ``status`` shows it."""
    return {
        "id": task.id,
        "name": task.name,
        "paused": task.paused,
        "priority": task.priority,
        "triggers": [repr(trigger) for trigger in task.triggers],
        "runs": task.runs,
        "last_outcome": str(task.executions[-1].outcome) if task.executions else None,
    }
