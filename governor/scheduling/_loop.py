"""The scheduler's loop: one thread, the only one that touches scheduling state.

    _arming (fires, retries) ─┐                 _starts: slots, admission, wait reasons
    event fired, fire() ──────┼──> _work ──choose()──> backend.start ──> _supervision ──> record
    submit() ─────────────────┘     ^                                                     │
                                    └─────────── retry after a delay (the retry policy) <─┘

A turn: apply the commands callers posted (each one a closure calling a method here); take
what is due (trigger fires, retry delays, polled triggers); start what may start; block in one
``poll`` until the nearest deadline or an event; hand the events to the running handles;
record what ended and decide its retry; evict if running work outgrew the memory budget. An
error in a turn is counted (``loop_errors``), logged, and the loop carries on: a bug must not
end supervision of running children. Every path that removes queued work is followed by the
stop check before the loop blocks again.

Missed fires (the loop was busy, the task paused, the scheduler stopped): a time trigger never
queues more than one run of its task (coalescing), and after a late fire the next one is
computed from now, so catching up is one run, never a burst. Fires while a task is paused are
skipped; events are kept and run on resume. Events are never lost: each fire is a run.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from typing import Any

from governor.abc import Backend, Clock, ExecutionListener
from governor.backends import LocalBackend
from governor.scheduling._arming import Arming, Fire
from governor.scheduling._payloads import PayloadFiles
from governor.scheduling._starts import Starter
from governor.scheduling._supervision import Supervision
from governor.scheduling._task import Catalog, Task
from governor.scheduling._triggers import EventTrigger
from governor.scheduling._work import Run, Work, describe_queued, describe_running, describe_task
from policies import NO_FREE_SLOT, UsageEstimator
from runner import Execution, Outcome, TaskError, new_execution_id
from runner._wire import Wakeup

STATUS_QUEUED_LIMIT = 1000  # queued runs a status lists (it counts them all)
_log = logging.getLogger("governor.scheduler")
_errors = itertools.count(1)
_error_total = 0  # every loop's in this process: the test suite fails a test that leaves one


def loop_errors() -> int:
    """Errors any scheduler loop of this process has caught and carried on from."""
    return _error_total


class Loop:
    """The loop thread's state and its turns (see the module docstring)."""

    def __init__(
        self,
        *,
        commands: deque[Callable[[], None]],
        wakeup: Wakeup,
        catalog: Catalog,
        changed: threading.Condition,
        clock: Clock,
        backend: Backend,
        listeners: tuple[ExecutionListener, ...],
        estimator: UsageEstimator,
        work: Work,
        starter: Starter,
        poll_interval: float,
        chance: random.Random,
    ) -> None:
        self._commands = commands
        self._catalog = catalog
        self._changed = changed
        self._clock = clock
        self.backend = backend
        # Each listener method is optional: an object without one is not told of that event.
        self._starting_hooks = _hooks(listeners, "execution_starting")
        self._started_hooks = _hooks(listeners, "execution_started")
        self._finished_hooks = _hooks(listeners, "execution_finished")
        self._estimator = estimator
        self._work = work
        self._starter = starter
        self._random = chance
        self._tasks: dict[int, Task] = {}  # the loop's own registry
        self._arming = Arming(poll_interval, chance)
        self._supervision = Supervision(wakeup)
        self._evicting: dict[Run, str] = {}  # stopped to keep within the budget -> why
        self._armed = False  # triggers fire (the loop runs and is not stopping)
        self._stopping = self._drain = self._cancel_running = self._wound_down = False
        self._ended_cpu = 0.0  # CPU seconds of every execution that has ended
        self.published = (0, 0)  # (running, queued), as of the last turn
        self.loop_errors = 0
        self.listener_errors = 0
        self.fire_lateness: deque[float] = deque(maxlen=100_000)
        self.start_lateness: deque[float] = deque(maxlen=100_000)
        self._barriers: list[threading.Event] = []
        self._payloads = PayloadFiles()

    # -- the thread -----------------------------------------------------------------------------

    def run(self) -> None:
        """Turn until stopped with nothing left; then settle what will never run."""
        self._armed = self._stopping = self._drain = self._cancel_running = self._wound_down = False
        try:
            while not self._turn():
                continue
        finally:
            for run in [*self._work.drain_queue(), *self._arming.clear()]:
                _abandon(run)
            self._publish()
            self._payloads.close()
            try:
                self.backend.close()
            except Exception:
                _log.exception("closing the backend failed")
            with self._changed:
                self._changed.notify_all()

    def _turn(self) -> bool:
        global _error_total
        try:
            while self._commands:
                self._starter.changed()  # a command may have queued, paused or resumed work
                self._commands.popleft()()
            if self._stopping and not self._wound_down:
                self._wind_down()
            if self._done():
                return True
            now = self._clock.now()
            if self._armed or self._drain:
                self._take_due(now)  # while draining, only executor retries are left
            if self._cancel_running:
                for run in self._work.running():
                    if not run.cancelling:
                        self._cancel(run)
            if not self._stopping or self._drain:
                for run in self._starter.choose(time.monotonic()):
                    self._launch(run)
            self._publish()
            while self._barriers:
                self._barriers.pop().set()
            if self._done() or self._commands:
                return False  # look again before blocking: what just changed may end the loop
            started, ended = self._supervision.wait(self._timeout(now))
            for run in started:
                self._announce(run)
            for run in ended:
                self._ended(run)
            for run, reason in self._starter.evictions(self._work.running(), len(self._evicting)):
                _log.warning("%s: %s", run.name, reason)
                self._evicting[run] = reason
                self._cancel(run)
        except Exception:  # a bug must not silently end supervision of running children
            self.loop_errors += 1
            _error_total = next(_errors)
            _log.exception("scheduler loop error; carrying on")
            with self._changed:
                self._changed.notify_all()  # a waiter may be waiting for exactly this
            time.sleep(0.01)  # keeps a persistent error from spinning a core
        return False

    def _done(self) -> bool:
        if not self._stopping or self._work.running_count:
            return False
        return not (self._drain and (self._work.queued_count or self._arming.pending_retries()))

    def _timeout(self, now: datetime) -> float | None:
        mono = time.monotonic()
        dues = (self._supervision.next_deadline(), self._starter.next_decision())
        waits = [due - mono for due in dues if due is not None]
        wakeup = self._arming.next_wakeup() if self._armed or self._drain else None
        if wakeup is not None:
            waits.append((wakeup - now).total_seconds())
        return max(0.0, min(waits)) if waits else None

    def _publish(self) -> None:
        self.published = (self._work.running_count, self._work.queued_count)

    def _cancel(self, run: Run) -> None:
        assert run.handle is not None
        run.cancelling = True
        run.handle.cancel()
        self._supervision.touch(run)  # its deadline moved: the kill protocol's grace

    def our_cpu_seconds(self) -> float:
        """CPU seconds the governor has used: this process, its fork server, and every
        execution it ran (as measured, so with their descendants)."""
        running = sum(
            reading.cpu_seconds
            for run in self._work.running()
            if run.handle is not None and (reading := run.handle.last_reading) is not None
        )
        forks = self.backend.cpu_seconds() if isinstance(self.backend, LocalBackend) else 0.0
        return sum(os.times()[:2]) + forks + self._ended_cpu + running

    # -- commands -------------------------------------------------------------------------------

    def register(self, task: Task, added: datetime) -> None:
        if not self._catalog.holds(task):
            return  # removed again before the loop got to it
        self._tasks[task.id or 0] = task
        if self._armed:
            self._arming.arm(task, added)
            self.drain_events(task)

    def unregister(self, task: Task) -> None:
        if self._tasks.get(task.id or 0) is task:
            del self._tasks[task.id or 0]
        self._arming.disarm(task.id or 0)
        self._work.drop_task(task.id or 0)

    def pause(self, task: Task) -> None:
        task.paused = True

    def resume(self, task: Task) -> None:
        task.paused = False
        self._work.release(task)
        self.drain_events(task)

    def arm_all(self, now: datetime) -> None:
        self._armed = True
        for task in list(self._tasks.values()):
            self._arming.arm(task, now)
            self.drain_events(task)

    def drain_events(self, task: Task) -> None:
        if task.paused or self._tasks.get(task.id or 0) is not task or self._stopping:
            return
        for trigger in task.triggers:
            if isinstance(trigger, EventTrigger):
                for payload, cause in trigger.take():
                    self.enqueue_task_run(task, payload=payload, cause=cause)

    def enqueue_task_run(
        self,
        task: Task,
        *,
        payload: Any = None,
        cause: str | None = None,
        scheduled_for: datetime | None = None,
        time_fire: bool = False,
    ) -> None:
        if self._stopping or self._tasks.get(task.id or 0) is not task:
            return
        spec = task.spec
        text = None
        if payload is not None and spec.is_command:
            text = json.dumps(payload, default=str)
        elif payload is not None and task.payload_kwarg is not None:
            spec = replace(spec, kwargs={**spec.kwargs, task.payload_kwarg: payload})
        run = Run(spec, task.priority, 1, self._clock.now(), task.retry_policy, task.name, task=task)
        run.payload_text, run.cause = text, cause
        run.scheduled_for, run.time_fire = scheduled_for, time_fire
        self.queue(run)

    def queue(self, run: Run) -> None:
        run.queued_mono = time.monotonic()
        self._work.queue(run)
        self._starter.changed()

    def withdraw(self, run: Run) -> None:
        if self._work.withdraw(run):
            _abandon(run)

    def cancel_call(self, run: Run) -> None:
        """Its caller cancelled a call: out of the queue, or its tree killed if it runs."""
        if not self._work.is_running(run):
            self.withdraw(run)
        elif run.handle is not None and not run.cancelling:
            self._cancel(run)

    def cancel_running_calls(self) -> None:
        """Kill every running call of an executor (``shutdown(cancel_futures=True)``)."""
        for run in self._work.running():
            if run.owner is not None:
                self.cancel_call(run)

    def cancel_queued_calls(self) -> None:
        for run in self._work.drain_queue():
            if run.owner is not None:
                _abandon(run)
            else:
                self._work.queue(run)

    def begin_stop(self, cancel: bool, drain: bool) -> None:
        self._stopping, self._drain, self._armed = True, drain, False
        self._cancel_running = self._cancel_running or cancel

    def cancel_running(self) -> None:
        self._cancel_running = True

    def barrier(self, reached: threading.Event) -> None:
        """Set ``reached`` once this turn has started what it can (``Scheduler.sync``)."""
        self._barriers.append(reached)

    # -- triggers -------------------------------------------------------------------------------

    def _take_due(self, now: datetime) -> None:
        for item in self._arming.due(now):
            if isinstance(item, Run):  # a retry's delay is over
                self._work.undelay(item)
                if item.task is None or self._tasks.get(item.task.id or 0) is item.task:
                    self.queue(item)
            elif self._armed:
                self._fired(item)
        if self._armed:
            for task in self._arming.polled(now, list(self._tasks.values())):
                self.enqueue_task_run(task)

    def _fired(self, fire: Fire) -> None:
        task = fire.task
        if self._tasks.get(task.id or 0) is not task:
            return
        # Paused: the fire is skipped. Coalesced: a task has one queued time-fired run at most.
        if not task.paused and self._work.queued_time_fires(task.id or 0) == 0:
            self.fire_lateness.append((self._clock.now() - fire.anchor).total_seconds())
            self.enqueue_task_run(task, scheduled_for=fire.anchor, time_fire=True)
        if task.one_shot:
            self._retire_if_done(task)

    # -- starting and ending --------------------------------------------------------------------

    def _launch(self, run: Run) -> None:
        if run.owner is not None and not run.owner.begin():
            self._work.ended(run)  # the caller cancelled it just now
            return
        run.wait_reason = self._starter.why_waited(run)
        run.started_mono = time.monotonic()
        run_id = new_execution_id()
        for hook in self._starting_hooks:  # before the child exists: a crash from here on is on record
            self._tell(hook, run.task, run.attempt, run_id, run.queued_at, run.cause)
        try:
            spec = run.spec
            if run.payload_text is not None:
                variables = self._payloads.environment(run_id, run.payload_text)
                spec = replace(spec, env={**(os.environ if spec.env is None else spec.env), **variables})
            handle = self.backend.start(spec, need=run.need, priority=run.priority, run_id=run_id)
        except Exception as error:  # a broken task never wedges the loop: record why, go on
            self._payloads.remove(run_id)
            self._work.ended(run)
            self._complete(run, Execution.unstarted(run.spec.limits, error, outcome=Outcome.CRASHED), run_id)
            return
        if run.scheduled_for is not None:
            self.start_lateness.append((self._clock.now() - run.scheduled_for).total_seconds())
        self._work.started(run, handle)
        if handle.done:  # it ended as it was made (its arguments would not pickle)
            self._ended(run)
            return
        self._supervision.add(run)
        if handle.started:
            run.announced = True
            self._announce(run)

    def _announce(self, run: Run) -> None:
        """The child exists: tell the listeners (the store records it in flight)."""
        handle = run.handle
        assert handle is not None
        if handle.done and handle.pid is None:
            return  # the start failed: it is told of once, as ended
        for hook in self._started_hooks:
            self._tell(hook, run.task, run.attempt, handle, run.queued_at)

    def _tell(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:  # a listener's failure must not stop the schedule
            self.listener_errors += 1
            _log.exception("execution listener failed")

    def _ended(self, run: Run) -> None:
        handle = run.handle
        assert handle is not None and handle.execution is not None
        self._work.ended(run)
        self._starter.changed()
        record = handle.execution
        reason = self._evicting.pop(run, None)
        if reason is not None and record.outcome is Outcome.CANCELLED and not self._cancel_running:
            record = replace(record, outcome=Outcome.EVICTED, error=TaskError(type="Evicted", message=reason))
        self._ended_cpu += record.usage.cpu_seconds
        self._payloads.remove(handle.id)
        self._complete(run, record, handle.id)

    def _complete(self, run: Run, record: Execution, run_id: str | None) -> None:
        """Record how a run ended, teach the estimator, and decide what follows."""
        record = replace(record, attempt=run.attempt, queued_at=run.queued_at, wait_reason=run.wait_reason)
        if record.pid is not None:  # it ran: what it measured teaches the estimator
            usage, limits = record.usage, record.limits
            self._estimator.observe(
                run.name,
                peak_memory_bytes=usage.peak_memory_bytes,
                cpu_seconds=usage.cpu_seconds,
                wall_seconds=usage.wall_seconds,
                outcome=str(record.outcome),
                memory_limit=limits.memory,
                cpu_limit=limits.cpu_rate,
            )
        task = run.task
        if task is not None:
            task._record(record)
        for hook in self._finished_hooks:
            self._tell(hook, task, run_id, record)
        # While stopping, only an executor that drains its calls (shutdown(wait=True)) retries.
        may_retry = not self._stopping or (self._drain and run.owner is not None)
        if run.owner is not None and run.owner.cancelled():
            may_retry = False  # its caller cancelled it: nothing waits for another attempt
        policy = run.retry_policy
        if may_retry and record.outcome is Outcome.EVICTED:
            # The governor stopped it, not its own failure: it queues again at its old place,
            # whatever its retry policy, and starts when its (raised) estimate fits.
            self._work.queue(_again(run, record, queued_at=self._clock.now(), evictions=run.evictions + 1))
        elif may_retry and policy.should_retry(str(record.outcome), run.attempt):
            delay = policy.delay_before(run.attempt + 1, self._random.random())
            spec = replace(run.spec, limits=policy.limits_for(str(record.outcome), run.spec.limits))
            retry = _again(run, record, spec=spec, queued_at=self._clock.now() + timedelta(seconds=delay))
            self._work.delay(retry)
            self._arming.retry(retry)
        else:
            if run.owner is not None:
                run.owner.settle(record)
            if task is not None and task.one_shot:
                self._retire_if_done(task)
        with self._changed:
            self._changed.notify_all()

    def _retire_if_done(self, task: Task) -> None:
        """A task whose triggers are all one-time leaves once nothing of it is left to run."""
        task_id = task.id or 0
        if self._arming.armed(task_id) or self._work.pending(task_id) or self._tasks.get(task_id) is not task:
            return
        del self._tasks[task_id]
        self._catalog.retire(task)

    def _wind_down(self) -> None:
        """As it stops: no more fires; queued runs are dropped (an executor draining its calls
        keeps those, and their retries). No task run is queued after this."""
        self._wound_down = True
        if not self._drain:
            for run in [*self._work.drain_queue(), *self._arming.clear()]:
                _abandon(run)
            return
        self._arming.stop_firing()
        for run in self._work.drain_queue():
            if run.owner is not None:
                self._work.queue(run)

    # -- status ---------------------------------------------------------------------------------

    def collect(self, max_running: int, tasks: list[Task]) -> dict[str, Any]:
        """What runs and what waits, as plain data (``Scheduler.snapshot``)."""
        now = self._clock.now()
        full = self._work.running_count >= max_running
        queued = [describe_queued(run, now) for run in self._work.queued(STATUS_QUEUED_LIMIT)]
        for entry in queued:
            entry["wait_reason"] = entry["wait_reason"] or (NO_FREE_SLOT if full else None)
        budget = self._starter.budget
        return {
            "running": [describe_running(run, run in self._evicting) for run in self._work.running()],
            "queued": queued,
            "queued_total": self._work.queued_count,
            "tasks": [describe_task(task) for task in tasks],
            "max_running_tasks": max_running,
            "budget": {"memory_bytes": budget.memory_bytes, "cpu_cores": budget.cpu_cores},
            "pressure": asdict(self._starter.last_pressure),
            # what the pressure was read from, and the raw figures (HostPressure's, by default)
            "pressure_readings": getattr(self._starter.pressure, "readings", None),
            "loop_errors": self.loop_errors,
        }


def _again(run: Run, record: Execution, **changes: Any) -> Run:
    """The next attempt of ``run``, after ``record`` (a retry, or a run queued again)."""
    again = replace(run, attempt=run.attempt + 1, previous=record, **changes)
    again.time_fire, again.scheduled_for, again.need, again.wait_reason = False, None, None, None
    again.handle, again.token, again.started_mono = None, None, None
    again.parked = again.cancelling = again.announced = False
    return again


def _hooks(listeners: tuple[ExecutionListener, ...], name: str) -> list[Callable[..., None]]:
    """The listeners' ``name`` methods, for those that have one of their own (the base class's
    does nothing: not worth a call on every run)."""
    unset = getattr(ExecutionListener, name)
    return [
        hook
        for listener in listeners
        if callable(hook := getattr(listener, name, None))
        and getattr(type(listener), name, None) is not unset
    ]


def _abandon(run: Run) -> None:
    """Tell whoever waits for a call that it will not run (again)."""
    if run.owner is not None:
        run.owner.abandon(run.previous)
