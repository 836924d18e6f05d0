"""The scheduler: tasks fire on triggers, queue by priority, and run as governed executions.

One loop thread owns every piece of scheduling state. Public methods never touch that state:
they append a command (a closure) to a queue and wake the loop through a pipe. The loop has
one blocking point, a ``poll`` on {the wake-up pipe, every running execution's pipes}, with
a timeout equal to the nearest deadline: the next trigger fire or retry (a heap, stale
entries skipped lazily), the next sample or kill step of a running execution, the next poll
of a custom ``is_ready()`` trigger. Idle, it sleeps; 100,000 idle periodic tasks cost a heap.

    trigger fires ─┐
    event fired ───┼──> ready queue (priority + aging) ──slot free──> Handle ──> record
    fire() / submit┘          ^                                                           │
                              └──── retry after delay (policy: outcome, backoff, memory) <┘

Missed fires (the loop was busy, the task paused, the scheduler stopped): a time trigger
never queues more than one run of its task (coalescing), and after a late fire the next fire
is computed from now, so catching up is one run, never a burst. Fires while a task is paused
are skipped; events are kept and run on resume. Events are never lost: each fire is a run.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import logging
import os
import random
import select
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from governor.abc import Backend, Clock, ExecutionListener
from governor.backends import LocalBackend, resolve_backend
from governor.scheduling._budget import HostPressure, auto_memory_budget, host_cpus
from governor.scheduling._clock import SystemClock
from governor.scheduling._task import Task, call_name
from governor.scheduling._triggers import EventTrigger, OneTimeTrigger, PeriodicTrigger, is_polled
from policies import (
    AdmissionPolicy,
    Budget,
    Need,
    Pressure,
    QueuedWork,
    ReadyQueue,
    RetryPolicy,
    RunningUsage,
    RunningWork,
    UsageEstimator,
    choose_evictions,
    parse_size,
)
from runner import Execution, ExecutionFailed, ExecutionSpec, ForkServer, Handle, Outcome, TaskError
from runner._wire import drain

PAYLOAD_VARIABLE = "GOVERNOR_EVENT_PAYLOAD"
# Admission looks at the head of the queue only (the first ADMISSION_WINDOW runs, in start
# order): backfill candidates further back wait their turn, and a long queue costs no more.
ADMISSION_WINDOW = 256
NO_FREE_SLOT = "no free slot"  # why a queued run waits when every slot is taken
# Without a change in the queue or the running set, admission is reconsidered this often
# (measurements and host pressure move by themselves).
ADMISSION_RECHECK = 0.25
_log = logging.getLogger("governor.scheduler")


@dataclass(eq=False)
class _Request:
    """One execution waiting for a slot (the work item: it stays in the supervisor)."""

    spec: ExecutionSpec
    priority: int
    attempt: int
    queued_at: datetime
    retry_policy: RetryPolicy
    task: Task | None = None
    future: Future[Any] | None = None
    scheduled_for: datetime | None = None  # the fire time it answers, for lateness
    time_fire: bool = False  # queued by a time trigger (coalesced per task)
    need: Need | None = None  # its estimate, when admission control is on
    need_version: int = -1  # the estimator's version when ``need`` was made
    wait_reason: str | None = None  # why admission held it back, the last time it did
    started_mono: float | None = None
    previous: Execution | None = None  # a retry's failed attempt, to settle its future with
    evictions: int = 0  # times the governor stopped this run to keep within the memory budget
    queued_mono: float = field(default_factory=time.monotonic)


@dataclass(order=True)
class _Due:
    """A heap entry: a trigger fire or a retry, due at ``when``."""

    when: datetime
    seq: int
    kind: str = field(compare=False)  # "fire" | "retry"
    task_id: int = field(compare=False, default=0)
    trigger: int = field(compare=False, default=0)
    generation: int = field(compare=False, default=0)
    anchor: datetime | None = field(compare=False, default=None)  # un-jittered fire time
    request: _Request | None = field(compare=False, default=None)


class Scheduler:
    """Runs tasks in isolated, governed child processes when their triggers fire.

    ``max_running_tasks`` executions run at once; more wait in a queue ordered by priority
    (higher first), arrival, and ``aging_per_second`` (waiting raises priority, so nothing
    starves). ``clock`` drives schedule logic (a ``FakeClock`` in tests). ``listener`` (one
    or a sequence) is told of every start and end. ``backend`` says where children run:
    ``"local"`` or a ``distributed.Client``. All methods are thread-safe; the scheduler is a
    context manager and can be started again after a stop.

    Admission control: a queued run starts only when its estimated need (``estimator``,
    learned from measured runs) fits ``memory_budget`` and ``cpu_budget`` minus what running
    work holds, tightened by host ``pressure`` (``policies.AdmissionPolicy``). The defaults,
    ``"auto"``, are 80% of the memory of the host or of the governor's own cgroup, and every
    CPU it may use (``governor.scheduling._budget``), with no budget on a Dask backend (the workers'
    declared resources bound what runs there); ``None`` turns a budget off. When running work
    measures more than the memory budget, runs past their estimate are evicted and queued
    again (``policies.choose_evictions``).
    """

    def __init__(
        self,
        max_running_tasks: int = 1,
        *,
        clock: Clock | None = None,
        fork_server: ForkServer | None = None,
        aging_per_second: float = 1.0,
        poll_interval: float = 1.0,
        seed: int | None = None,
        listener: ExecutionListener | Sequence[ExecutionListener] | None = None,
        memory_budget: int | str | None = "auto",
        cpu_budget: float | str | None = "auto",
        estimator: UsageEstimator | None = None,
        admission: AdmissionPolicy | None = None,
        pressure: Callable[[], float | Pressure] | None = None,
        backend: object = "local",
    ) -> None:
        if (
            isinstance(max_running_tasks, bool)
            or not isinstance(max_running_tasks, int)
            or max_running_tasks < 1
        ):
            raise ValueError(f"max_running_tasks: must be a whole number >= 1, got {max_running_tasks!r}")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval: must be a positive number of seconds, got {poll_interval!r}")
        self.max_running_tasks = max_running_tasks
        self._clock = clock or SystemClock()
        self._backend: Backend = resolve_backend(backend, fork_server)
        self._poll_interval = poll_interval
        if listener is None:
            self._listeners: tuple[ExecutionListener, ...] = ()
        elif isinstance(listener, Sequence):
            self._listeners = tuple(listener)
        else:
            self._listeners = (listener,)
        # Admission control is on when a budget is given: executions start only when their
        # estimated need (learned from measured usage) fits what running work leaves free.
        # "auto" measures this host, so on a cluster it means no budget of the governor's own:
        # each run claims its estimate as Dask resources and the workers' declarations bound them.
        local = isinstance(self._backend, LocalBackend)
        if memory_budget == "auto":
            memory: int | None = auto_memory_budget() if local else None
        else:
            memory = None if memory_budget is None else parse_size(memory_budget, field="memory_budget")
        cores = (host_cpus() if local else None) if cpu_budget == "auto" else cpu_budget
        if cores is not None and (isinstance(cores, str | bool) or not cores > 0):
            raise ValueError(f"cpu_budget: must be a positive number of cores or 'auto', got {cpu_budget!r}")
        self._budget = Budget(memory, cores)
        enabled = memory is not None or cores is not None
        self._admission = (admission or AdmissionPolicy()) if enabled else None
        self._estimator = estimator or UsageEstimator()
        # Host pressure tightens the budget, by default the host's memory PSI (with hysteresis).
        self._pressure = pressure if pressure is not None or not enabled or not local else HostPressure()
        self._random = random.Random(seed)
        self._lock = threading.RLock()  # reentrant: wait()'s predicate may call get_task()
        self._changed = threading.Condition(self._lock)
        self._tasks: dict[int, Task] = {}
        self._ids = itertools.count(1)
        self._commands: deque[Callable[[], None]] = deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._accepting = True
        self._clock.subscribe(self._wake)
        # Loop-owned state (touched only by the loop thread, or before it starts).
        self._heap: list[_Due] = []
        self._seq = itertools.count()
        self._ready: ReadyQueue[_Request] = ReadyQueue(aging_per_second)
        self._running: dict[Handle, _Request] = {}
        self._evicting: dict[Handle, str] = {}  # stopped to keep within budget -> why
        self._instances: Counter[int] = Counter()
        self._queued_time_fire: Counter[int] = Counter()
        self._generation: Counter[int] = Counter()
        self._fired_once: set[tuple[int, int]] = set()  # one-time triggers that have fired
        self._next_poll: datetime | None = None
        self._running_count = 0
        self._cancel_running = False
        self._drain_submitted = False
        self._fire_lateness: deque[float] = deque(maxlen=100_000)
        self._start_lateness: deque[float] = deque(maxlen=100_000)
        self._barriers: list[threading.Event] = []
        self._admission_due = 0.0  # monotonic; 0: something changed, decide at the next turn
        self._last_start_pass = 0.0  # monotonic end of the last pass that started work without admission
        self._last_pressure = Pressure()  # what admission last acted on

    # -- public API -----------------------------------------------------------------------

    def add_task(self, task: Task) -> Task:
        """Register ``task`` (assigns ``task.id``) and arm its triggers; returns it."""
        if not isinstance(task, Task):
            raise TypeError(f"task: expected a Task, got {task!r}")
        with self._lock:
            if task.id is not None and self._tasks.get(task.id) is task:
                raise ValueError(f"task {task.name!r} is already added (id {task.id})")
            task.id = next(self._ids)
            self._tasks[task.id] = task
        for index, trigger in enumerate(task.triggers):
            if isinstance(trigger, EventTrigger):
                trigger._attach(self._event_listener(task.id, index))
        added = self._clock.now()  # triggers count from the call, not from when the loop gets to it
        self._post(lambda: self._arm(task, added))
        return task

    def remove_task(self, task_id: int) -> None:
        """Unregister a task: no more fires, queued runs dropped; a running one finishes."""
        with self._lock:
            task = self._tasks.pop(task_id, None)
        if task is None:
            raise KeyError(f"no task with id {task_id}")
        for trigger in task.triggers:
            if isinstance(trigger, EventTrigger):
                trigger._attach(None)
        self._post(lambda: self._disarm(task_id))

    def get_task(self, task_id: int) -> Task | None:
        """The task with this id, or ``None``."""
        with self._lock:
            return self._tasks.get(task_id)

    def tasks(self) -> list[Task]:
        """Every registered task, in the order they were added."""
        with self._lock:
            return list(self._tasks.values())

    def pause_task(self, task_id: int) -> None:
        """Stop starting this task: time fires are skipped, events wait for ``resume_task``."""
        self._require(task_id).paused = True
        self._wake()

    def resume_task(self, task_id: int) -> None:
        """Let a paused task run again (its waiting events run now; missed fires do not)."""
        task = self._require(task_id)
        task.paused = False
        self._post(lambda: self._drain_events(task))

    def fire(self, task_id: int, payload: Any = None) -> None:
        """Queue one run of the task now, as if an event had fired."""
        task = self._require(task_id)
        self._post(lambda: self._enqueue_task_run(task, payload=payload))

    @property
    def estimator(self) -> UsageEstimator:
        """What the scheduler has learned of each task's needs (fed by every finished run)."""
        return self._estimator

    def running_tasks_count(self) -> int:
        """Executions running right now."""
        return self._running_count

    def queued_tasks_count(self) -> int:
        """Executions waiting for a slot (or for admission) right now."""
        return len(self._ready)

    def start(self) -> None:
        """Start the loop thread (a no-op if it is running). Triggers are armed from now."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._accepting = True
            self._cancel_running = False
            self._drain_submitted = False
            self._thread = threading.Thread(target=self._loop, name="governor-scheduler", daemon=True)
            now = self._clock.now()
            for task in self._tasks.values():
                self._commands.append(functools.partial(self._arm, task, now))
            self._thread.start()

    def stop(self, *, wait: bool = True, cancel: bool = False, timeout: float | None = None) -> None:
        """Stop triggering; then let running executions finish, or cancel them.

        With ``cancel`` they are cancelled at once (whole trees killed, outcome ``cancelled``);
        otherwise they may run until ``timeout`` seconds have passed, then are cancelled.
        Queued runs that have not started are dropped. Calling it again is harmless.
        """
        self._request_stop(cancel=cancel, drain_submitted=False)
        if wait:
            self._join(timeout)

    def wait(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until ``predicate()`` is true, re-checked whenever an execution ends or the
        scheduler's state changes; ``False`` if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def sync(self, timeout: float | None = 30.0) -> bool:
        """Wait until the loop has handled everything asked of it so far: commands, fires due
        by the clock now, and starting what can start. ``False`` if ``timeout`` passed first
        or the loop is not running. Lets a test assert that nothing ran, without sleeping."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return False
        reached = threading.Event()
        self._post(lambda: self._barriers.append(reached))
        return reached.wait(timeout)

    def snapshot(self, timeout: float = 5.0) -> dict[str, Any]:
        """What runs and what waits, as plain data (for ``governor status``): running
        executions with their current usage reading, queued runs in start order, tasks."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return self._collect()
        answer: Future[dict[str, Any]] = Future()
        self._post(lambda: answer.set_result(self._collect()))
        return answer.result(timeout)

    def _collect(self) -> dict[str, Any]:
        running = []
        for handle, request in list(self._running.items()):
            reading = handle.last_reading
            running.append({
                "task": request.task.name if request.task else None,
                "attempt": request.attempt,
                "run_id": handle.id,
                "pid": handle.pid,
                "started_at": handle.started_at.isoformat(),
                "memory_bytes": reading.memory_bytes if reading else None,
                "cpu_seconds": reading.cpu_seconds if reading else None,
                "limits": request.spec.limits.as_dict(),
                "estimate_bytes": request.need.memory_bytes if request.need else None,
                "evicting": handle in self._evicting,
            })  # fmt: skip
        # Without admission nothing decides until a slot frees: a run queued meanwhile waits for one.
        full = self._admission is None and len(self._running) >= self.max_running_tasks
        queued = [
            {
                "task": request.task.name if request.task else None,
                "attempt": request.attempt,
                "priority": request.priority,
                "queued_at": request.queued_at.isoformat(),
                "wait_reason": request.wait_reason or (NO_FREE_SLOT if full else None),
                "estimate_bytes": request.need.memory_bytes if request.need else None,
            }
            for request in self._ready_items()
        ]
        tasks = [
            {
                "id": task.id,
                "name": task.name,
                "paused": task.paused,
                "priority": task.priority,
                "triggers": [repr(t) for t in task.triggers],
                "runs": len(task.executions),
                "last_outcome": str(task.executions[-1].outcome) if task.executions else None,
            }
            for task in self.tasks()
        ]
        return {
            "running": running,
            "queued": queued,
            "tasks": tasks,
            "max_running_tasks": self.max_running_tasks,
            "budget": {"memory_bytes": self._budget.memory_bytes, "cpu_cores": self._budget.cpu_cores},
            "pressure": asdict(self._last_pressure),
        }

    def lateness(self) -> dict[str, list[float]]:
        """For time-triggered runs, seconds late against the due time: ``"fire"`` when the loop
        fired the trigger (timer precision), ``"start"`` when the child was running (adds
        queueing for a slot and the spawn). The last 100,000 of each; for benchmarks."""
        return {"fire": list(self._fire_lateness), "start": list(self._start_lateness)}

    def __enter__(self) -> Scheduler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        for fd in (getattr(self, "_wake_r", None), getattr(self, "_wake_w", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    continue

    # -- used by GovernedExecutor ---------------------------------------------------------

    def _submit(self, spec: ExecutionSpec, priority: int, retry_policy: RetryPolicy) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if not self._accepting:
                raise RuntimeError("cannot schedule new futures after shutdown")
        request = _Request(spec, priority, 1, self._clock.now(), retry_policy, future=future)
        self._post(lambda: self._push(request))
        return future

    def _shutdown(self, *, wait: bool, cancel_futures: bool) -> None:
        if cancel_futures:
            self._post(self._cancel_queued_futures)
        self._request_stop(cancel=False, drain_submitted=True)
        if wait:
            self._join(None)

    # -- commands -------------------------------------------------------------------------

    def _post(self, command: Callable[[], None]) -> None:
        self._commands.append(command)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            return  # the pipe is full: the loop is already bound to wake
        except OSError:
            return  # closed: the scheduler is being collected

    def _require(self, task_id: int) -> Task:
        task = self.get_task(task_id)
        if task is None:
            raise KeyError(f"no task with id {task_id}")
        return task

    def _request_stop(self, *, cancel: bool, drain_submitted: bool) -> None:
        with self._lock:
            self._accepting = False
            thread = self._thread
        if thread is None or not thread.is_alive():
            return

        def stop() -> None:
            self._stopping = True
            self._drain_submitted = drain_submitted
            if cancel:
                self._cancel_running = True

        self._post(stop)

    def _join(self, timeout: float | None) -> None:
        thread = self._thread
        if thread is None:
            return
        if threading.current_thread() is thread:
            raise RuntimeError("stop() cannot be called from the scheduler's own thread")
        thread.join(timeout)
        if thread.is_alive():  # the grace is over: cancel what still runs, and wait for it

            def cancel() -> None:
                self._cancel_running = True

            self._post(cancel)
            thread.join()

    def _event_listener(self, task_id: int, index: int) -> Callable[[], None]:
        def fired() -> None:
            task = self.get_task(task_id)
            if task is not None:
                self._post(lambda: self._drain_events(task))

        return fired

    # -- the loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        registered: dict[int, Handle | None] = {self._wake_r: None}
        try:
            while True:
                try:
                    self._run_commands()
                    if self._stopping:
                        self._wind_down()
                        draining = self._drain_submitted and (len(self._ready) or self._heap)
                        if not self._running and not draining:
                            return
                    now = self._clock.now()
                    if not self._stopping:
                        self._fire_due(now)
                        self._poll_custom(now)
                    elif self._drain_submitted:
                        self._fire_due(now)  # only executor retries are left in the heap
                    self._start_ready()
                    self._release_barriers()
                    self._wait(poller, registered, now)
                    self._advance_running()
                except Exception:  # a bug must not silently end supervision of running children
                    _log.exception("scheduler loop error; carrying on")
                    time.sleep(0.01)  # keeps a persistent error from spinning a core
        finally:
            self._fail_queued()
            try:
                self._backend.close()
            except Exception:
                _log.exception("closing the backend failed")
            with self._changed:
                self._changed.notify_all()

    def _release_barriers(self) -> None:
        while self._barriers:
            self._barriers.pop().set()

    def _run_commands(self) -> None:
        while self._commands:
            self._admission_due = 0.0  # a command may have queued, paused or resumed work
            self._commands.popleft()()

    def _wait(self, poller: select.poll, registered: dict[int, Handle | None], now: datetime) -> None:
        wanted: dict[int, Handle | None] = {self._wake_r: None}
        deadlines = []
        ended = False  # e.g. a handle that ended as it was made (its arguments would not pickle)
        for handle in self._running:
            ended = ended or handle.done
            for fd in handle.fds():
                wanted[fd] = handle
            deadline = handle.deadline()
            if deadline is not None:
                deadlines.append(deadline - time.monotonic())
        if self._admission is not None and len(self._ready):
            deadlines.append(self._admission_due - time.monotonic())  # recheck what waits
        for fd in registered.keys() - wanted.keys():
            poller.unregister(fd)
        for fd in wanted.keys() - registered.keys():
            poller.register(fd, select.POLLIN)
        registered.clear()
        registered.update(wanted)
        if not self._stopping or self._drain_submitted:
            if self._heap:
                deadlines.append((self._heap[0].when - now).total_seconds())
            if self._next_poll is not None:
                deadlines.append((self._next_poll - now).total_seconds())
        timeout = None if not deadlines else max(0, int(min(deadlines) * 1000) + 1)
        if self._commands or ended:
            timeout = 0
        for fd, _events in poller.poll(timeout):
            owner = wanted.get(fd)
            if owner is None:
                drain(self._wake_r)
            else:
                owner.on_readable(fd)

    def _advance_running(self) -> None:
        for handle in list(self._running):
            if self._cancel_running:
                handle.cancel()
            handle.on_time()
            if handle.done:
                self._finished(handle, self._running.pop(handle))
        self._evict_over_budget()

    def _evict_over_budget(self) -> None:
        """When running work measures more than the memory budget, stop whom the eviction
        policy picks (``policies.choose_evictions``) rather than leave it to the OOM killer."""
        budget = self._budget.memory_bytes
        if self._admission is None or budget is None or self._evicting or len(self._running) < 2:
            return  # one eviction at a time: what it frees is measured before the next
        running = []
        for handle, request in self._running.items():
            reading = handle.last_reading
            need = request.need or self._need(request)
            running.append(
                RunningUsage(
                    handle,
                    reading.memory_bytes if reading is not None else 0,
                    need.memory_bytes,
                    request.priority,
                    request.retry_policy.max_retries > 0,
                    request.evictions,
                )
            )
        for key, reason in choose_evictions(running, budget):
            handle = key  # type: ignore[assignment]  # the keys handed in are the handles
            _log.warning("%s: %s", self._estimate_key(self._running[handle]), reason)
            self._evicting[handle] = reason
            handle.cancel()

    # -- triggers -------------------------------------------------------------------------

    def _arm(self, task: Task, now: datetime) -> None:
        """(Re)arm every trigger of ``task`` from ``now``; stale heap entries die by generation."""
        if task.id is None or self._tasks.get(task.id) is not task:
            return
        self._generation[task.id] += 1
        for index, trigger in enumerate(task.triggers):
            if is_polled(trigger):
                if self._next_poll is None:
                    self._next_poll = now + timedelta(seconds=self._poll_interval)
                continue
            if isinstance(trigger, OneTimeTrigger) and (task.id, index) in self._fired_once:
                continue
            fire = trigger.next_fire(now)
            if fire is not None:
                self._schedule_fire(task, index, fire)
        self._drain_events(task)

    def _schedule_fire(self, task: Task, index: int, fire: datetime) -> None:
        assert task.id is not None
        trigger = task.triggers[index]
        due = fire
        if isinstance(trigger, PeriodicTrigger) and trigger.jitter:
            due = trigger.jittered(fire, self._random.random())
        entry = _Due(due, next(self._seq), "fire", task.id, index, self._generation[task.id], anchor=fire)
        heapq.heappush(self._heap, entry)

    def _disarm(self, task_id: int) -> None:
        self._generation[task_id] += 1
        for request in [r for r in self._ready_items() if r.task is not None and r.task.id == task_id]:
            self._ready.remove(request)
            self._queued_time_fire[task_id] -= request.time_fire

    def _fire_due(self, now: datetime) -> None:
        while self._heap and self._heap[0].when <= now:
            entry = heapq.heappop(self._heap)
            if entry.kind == "retry":
                assert entry.request is not None
                self._push(entry.request)
                continue
            task = self._tasks.get(entry.task_id)
            if task is None or entry.generation != self._generation[entry.task_id]:
                continue  # removed or re-armed since
            trigger = task.triggers[entry.trigger]
            if isinstance(trigger, OneTimeTrigger):
                self._fired_once.add((entry.task_id, entry.trigger))
            # Paused: the fire is skipped. Coalesced: a task has one queued time-fired run at most.
            if not task.paused and self._queued_time_fire[entry.task_id] == 0:
                self._fire_lateness.append((self._clock.now() - entry.when).total_seconds())
                self._enqueue_task_run(task, scheduled_for=entry.when, time_fire=True)
            if isinstance(trigger, OneTimeTrigger):
                continue
            assert entry.anchor is not None
            following = trigger.next_fire(entry.anchor)
            if following is not None and following <= now:  # we are late: skip what was missed
                following = trigger.next_fire(now)
            if following is not None:
                self._schedule_fire(task, entry.trigger, following)

    def _poll_custom(self, now: datetime) -> None:
        if self._next_poll is None or now < self._next_poll:
            return
        self._next_poll = None
        for task in self._tasks.values():
            for trigger in task.triggers:
                if not is_polled(trigger):
                    continue
                self._next_poll = now + timedelta(seconds=self._poll_interval)
                if not task.paused and trigger.is_ready():
                    trigger.reset()
                    self._enqueue_task_run(task)

    def _drain_events(self, task: Task) -> None:
        if task.paused or task.id is None or self._tasks.get(task.id) is not task or self._stopping:
            return
        for trigger in task.triggers:
            if isinstance(trigger, EventTrigger):
                for payload in trigger.drain():
                    self._enqueue_task_run(task, payload=payload)

    # -- queueing and starting ------------------------------------------------------------

    def _enqueue_task_run(
        self,
        task: Task,
        *,
        payload: Any = None,
        scheduled_for: datetime | None = None,
        time_fire: bool = False,
    ) -> None:
        if task.id is None or self._tasks.get(task.id) is not task:
            return
        spec = task.spec
        if payload is not None:
            spec = _with_payload(task, spec, payload)
        request = _Request(
            spec, task.priority, 1, self._clock.now(), task.retry_policy, task=task,
            scheduled_for=scheduled_for, time_fire=time_fire,
        )  # fmt: skip
        if time_fire:
            self._queued_time_fire[task.id] += 1
        self._push(request)

    def _push(self, request: _Request) -> None:
        request.queued_mono = time.monotonic()
        self._ready.push(request, request.priority, request.queued_mono)
        self._admission_due = 0.0

    def _ready_items(self) -> list[_Request]:
        return list(self._ready.ordered())

    def _start_ready(self) -> None:
        if self._stopping and not self._drain_submitted:
            return
        if self._admission is not None:
            self._start_admitted()
            return
        held: list[_Request] = []
        waited_since = self._last_start_pass  # what queued before the last pass waited for a slot
        while len(self._running) < self.max_running_tasks and len(self._ready):
            request = self._ready.pop()
            task = request.task
            if task is not None:
                if self._stopping or self._tasks.get(task.id or 0) is not task:
                    continue  # removed while it waited
                reason = self._why_held(request)
                if reason is not None:
                    request.wait_reason = reason
                    held.append(request)  # keeps its place; others may pass meanwhile
                    continue
                self._queued_time_fire[task.id or 0] -= request.time_fire
            elif (
                request.future is not None
                and not request.future.running()  # a retry's future is running already
                and not request.future.set_running_or_notify_cancel()
            ):
                continue  # the caller cancelled it while it waited
            if request.wait_reason is None and request.queued_mono <= waited_since:
                request.wait_reason = NO_FREE_SLOT
            self._start(request)
        for request in held:
            self._ready.push(request, request.priority, request.queued_mono)
        self._last_start_pass = time.monotonic()

    def _why_held(self, request: _Request, instances: Counter[int] | None = None) -> str | None:
        """Why ``request``'s own task keeps it waiting, whatever the slots and the budget, with
        ``instances`` of each task running (default: those running now)."""
        task = request.task
        if task is None:
            return None
        if task.paused:
            return "task paused"
        if (self._instances if instances is None else instances)[task.id or 0] >= task.max_instances:
            return f"its task runs {task.max_instances} instance(s), its most"
        return None

    def _start_admitted(self) -> None:
        """Start what the admission policy admits, in priority order, with backfilling."""
        assert self._admission is not None
        now = time.monotonic()
        if now < self._admission_due:
            return  # nothing changed since the last decision, and it is not time to recheck
        self._admission_due = now + ADMISSION_RECHECK
        eligible: list[_Request] = []
        instances = Counter(self._instances)  # as if every eligible run started
        for request in self._ready.ordered(ADMISSION_WINDOW):
            task = request.task
            if task is not None:
                if self._stopping or self._tasks.get(task.id or 0) is not task:
                    self._ready.remove(request)  # removed while it waited
                    self._queued_time_fire[task.id or 0] -= request.time_fire
                    continue
                reason = self._why_held(request, instances)  # counting those about to start
                if reason is not None:
                    request.wait_reason = reason
                    continue  # keeps its place; others may pass meanwhile
                instances[task.id or 0] += 1
            elif request.future is not None and request.future.cancelled():
                self._ready.remove(request)
                continue
            if request.need is None or request.need_version != self._estimator.version:
                request.need = self._need(request)  # again once the estimator has learned more
                request.need_version = self._estimator.version
            eligible.append(request)
        slots = self.max_running_tasks - len(self._running)
        if slots <= 0:
            for request in eligible:
                request.wait_reason = NO_FREE_SLOT
            return
        if not eligible:
            return
        running = [self._running_work(handle, request) for handle, request in self._running.items()]
        queued = [QueuedWork(r, r.need or Need(), self._duration(r)) for r in eligible]
        pressure: float | Pressure = self._pressure() if self._pressure is not None else 0.0
        self._last_pressure = pressure if isinstance(pressure, Pressure) else Pressure(pressure, pressure)
        decision = self._admission.decide(
            now=now, slots=slots, budget=self._budget, running=running, queue=queued, pressure=pressure
        )
        for key, reason in decision.waiting.items():
            key.wait_reason = reason  # type: ignore[attr-defined]
        for key in decision.start:
            request = key  # type: ignore[assignment]
            assert isinstance(request, _Request)
            self._ready.remove(request)
            if request.task is not None:
                self._queued_time_fire[request.task.id or 0] -= request.time_fire
            elif (
                request.future is not None
                and not request.future.running()
                and not request.future.set_running_or_notify_cancel()
            ):
                continue
            self._start(request)

    def _estimate_key(self, request: _Request) -> str:
        return request.task.name if request.task is not None else call_name(request.spec.target)

    def _need(self, request: _Request) -> Need:
        limits = request.spec.limits
        estimate = self._estimator.estimate(
            self._estimate_key(request), memory_limit=limits.memory, cpu_limit=limits.cpu_rate
        )
        return Need(estimate.memory_bytes, estimate.cpu_cores)

    def _duration(self, request: _Request) -> float | None:
        return self._estimator.estimate(self._estimate_key(request)).duration_seconds

    def _running_work(self, handle: Handle, request: _Request) -> RunningWork:
        reading = handle.last_reading
        duration = self._duration(request)
        end = None if duration is None or request.started_mono is None else request.started_mono + duration
        memory = reading.memory_bytes if reading is not None else 0
        return RunningWork(handle, request.need or self._need(request), memory, 0.0, end)

    def _learn(self, request: _Request, record: Execution) -> None:
        """Feed a finished execution's measured usage to the estimator."""
        if record.pid is None:
            return  # never ran: nothing was measured
        usage = record.usage
        self._estimator.observe(
            self._estimate_key(request),
            peak_memory_bytes=usage.peak_memory_bytes,
            cpu_seconds=usage.cpu_seconds,
            wall_seconds=usage.wall_seconds,
            memory_exceeded=record.outcome is Outcome.MEMORY_EXCEEDED,
            memory_limit=record.limits.memory,
            evicted=record.outcome is Outcome.EVICTED,
        )

    def _start(self, request: _Request) -> None:
        request.started_mono = time.monotonic()
        try:
            handle = self._backend.start(request.spec, need=request.need, priority=request.priority)
            if request.scheduled_for is not None:
                late = self._clock.now() - request.scheduled_for
                self._start_lateness.append(late.total_seconds())
        except Exception as error:  # a broken task never wedges the loop: record why, go on
            record = Execution.unstarted(request.spec.limits, error, outcome=Outcome.CRASHED)
            self._complete(request, record, None)
            return
        if request.task is not None and request.task.id is not None:
            self._instances[request.task.id] += 1
        self._running[handle] = request
        self._running_count = len(self._running)
        if not handle.done:
            for listener in self._listeners:
                started = listener.execution_started
                self._tell(started, request.task, request.attempt, handle, request.queued_at)

    @staticmethod
    def _tell(hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:  # a listener's failure must not stop the schedule
            _log.exception("execution listener failed")

    # -- ending ---------------------------------------------------------------------------

    def _finished(self, handle: Handle, request: _Request) -> None:
        self._running_count = len(self._running)
        self._admission_due = 0.0
        if request.task is not None and request.task.id is not None:
            self._instances[request.task.id] -= 1
        assert handle.execution is not None
        record = handle.execution
        reason = self._evicting.pop(handle, None)
        if reason is not None and record.outcome is Outcome.CANCELLED and not self._cancel_running:
            record = replace(record, outcome=Outcome.EVICTED, error=TaskError(type="Evicted", message=reason))
        self._complete(request, record, handle.id)

    def _complete(self, request: _Request, record: Execution, run_id: str | None) -> None:
        record = replace(
            record, attempt=request.attempt, queued_at=request.queued_at, wait_reason=request.wait_reason
        )
        self._learn(request, record)
        task = request.task
        if task is not None:
            task._record(record)
        for listener in self._listeners:
            self._tell(listener.execution_finished, task, run_id, record)
        policy = request.retry_policy
        # While stopping, only an executor that drains its calls (shutdown(wait=True)) retries.
        may_retry = not self._stopping or (self._drain_submitted and request.future is not None)
        if may_retry and record.outcome is Outcome.EVICTED:
            # The governor stopped it, not its own failure: it queues again at its old place,
            # whatever its retry policy, and starts when its (raised) estimate fits.
            again = replace(request, attempt=request.attempt + 1, evictions=request.evictions + 1)
            again.queued_at = self._clock.now()
            again.time_fire = False
            again.need = None
            again.wait_reason = None
            again.previous = record
            again.started_mono = None
            self._ready.push(again, again.priority, request.queued_mono)
        elif may_retry and policy.should_retry(str(record.outcome), request.attempt):
            attempt = request.attempt + 1
            limits = policy.limits_for(str(record.outcome), request.spec.limits)
            delay = policy.delay_before(attempt, self._random.random())
            retry = replace(request, spec=replace(request.spec, limits=limits), attempt=attempt)
            retry.queued_at = self._clock.now() + timedelta(seconds=delay)
            retry.time_fire = False
            retry.scheduled_for = None
            retry.need = None  # estimate again: a memory kill raised it
            retry.wait_reason = None
            retry.previous = record
            entry = _Due(retry.queued_at, next(self._seq), "retry", request=retry)
            heapq.heappush(self._heap, entry)
        else:
            if request.future is not None:
                _resolve(request.future, record)
            if task is not None and task.one_shot and task.id is not None:
                self._retire_if_done(task)
        with self._changed:
            self._changed.notify_all()

    def _retire_if_done(self, task: Task) -> None:
        """A task whose triggers are all one-time leaves once nothing of it is left to run."""
        task_id = task.id
        pending_fire = any(
            e.kind == "fire" and e.task_id == task_id and e.generation == self._generation[task_id or 0]
            for e in self._heap
        )
        pending_retry = any(
            e.kind == "retry" and e.request is not None and e.request.task is task for e in self._heap
        )
        queued = any(r.task is task for r in self._ready_items())
        if pending_fire or pending_retry or queued or self._instances[task_id or 0]:
            return
        with self._lock:
            if task_id is not None and self._tasks.get(task_id) is task:
                del self._tasks[task_id]

    def _wind_down(self) -> None:
        """While stopping: no more fires; queued runs are dropped (unless an executor drains)."""
        if not self._drain_submitted:
            self._fail_queued()
            self._heap.clear()
        else:
            self._heap = [e for e in self._heap if e.kind == "retry" and e.request and e.request.future]
            heapq.heapify(self._heap)
            for request in self._ready_items():
                if request.future is None:
                    self._ready.remove(request)
        self._next_poll = None

    def _fail_queued(self) -> None:
        for request in self._ready_items():
            self._ready.remove(request)
            if request.task is not None and request.task.id is not None:
                self._queued_time_fire[request.task.id] -= request.time_fire
            _abandon(request)
        for entry in self._heap:
            if entry.request is not None:
                _abandon(entry.request)

    def _cancel_queued_futures(self) -> None:
        for request in self._ready_items():
            if request.future is not None:
                self._ready.remove(request)
                request.future.cancel()


def _abandon(request: _Request) -> None:
    """Settle the future of a call that will not run (again): cancelled if it never started,
    else with the record of its last attempt (a running future cannot be cancelled)."""
    future = request.future
    if future is None or future.done():
        return
    if future.running() and request.previous is not None:
        _resolve(future, request.previous)
    else:
        future.cancel()


def _resolve(future: Future[Any], record: Execution) -> None:
    """Settle an executor's future from the final record of its call."""
    future.execution = record  # type: ignore[attr-defined]
    if future.done():
        return
    if record.ok:
        future.set_result(record.result)
    elif record.error is not None and record.error.pickled is not None:
        future.set_exception(record.error.exception())
    else:
        future.set_exception(ExecutionFailed(record))


def _with_payload(task: Task, spec: ExecutionSpec, payload: Any) -> ExecutionSpec:
    if spec.is_command:
        env = dict(os.environ if spec.env is None else spec.env)
        env[PAYLOAD_VARIABLE] = json.dumps(payload, default=str)
        return replace(spec, env=env)
    if task.payload_kwarg is not None:
        return replace(spec, kwargs={**spec.kwargs, task.payload_kwarg: payload})
    return spec
