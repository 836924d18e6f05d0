"""``Scheduler``: the public face of the scheduling loop, safe to call from any thread.

Every method that changes something (add, remove, pause, resume, fire, submit, cancel, stop)
hands a command to the loop (``_loop.Loop``) and wakes it; the loop thread is the only one that
touches scheduling state. What a caller reads is what the loop publishes: the running and
queued counts as of its last turn, the catalog of tasks, and answers the loop gives to a
command (``snapshot``, ``lateness``).
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from governor.abc import Backend, Clock, ExecutionListener
from governor.backends import LocalBackend, resolve_backend
from governor.scheduling._budget import HostPressure, auto_memory_budget, available_memory, host_cpus
from governor.scheduling._clock import SystemClock
from governor.scheduling._loop import Loop
from governor.scheduling._starts import Starter
from governor.scheduling._task import Catalog, Task, call_name
from governor.scheduling._triggers import EventTrigger
from governor.scheduling._work import Owner, Run, Work
from policies import AdmissionPolicy, Budget, Pressure, RetryPolicy, UsageEstimator, parse_size
from runner import ExecutionSpec, ForkServer
from runner._wire import Wakeup

T = TypeVar("T")


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
    work holds, and what the host has available, the CPU budget tightened by what others keep
    busy (``pressure``; see ``policies.AdmissionPolicy``). The defaults, ``"auto"``, are 80% of
    the memory of the host or of the governor's own cgroup, and every CPU it may use, with no
    budget on a Dask backend (the workers' declared resources bound what runs there); ``None``
    turns a budget off. With nothing running, the head of the queue always starts once its
    memory fits what the host has. When running work measures more than the memory budget,
    runs past their estimate are evicted and queued again (``policies.choose_evictions``).
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
        whole = isinstance(max_running_tasks, int) and not isinstance(max_running_tasks, bool)
        if not whole or max_running_tasks < 1:
            raise ValueError(f"max_running_tasks: must be a whole number >= 1, got {max_running_tasks!r}")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval: must be a positive number of seconds, got {poll_interval!r}")
        self.max_running_tasks = max_running_tasks
        self._clock = clock or SystemClock()
        chosen: Backend = resolve_backend(backend, fork_server)
        # "auto" measures this host, so on a cluster it means no budget of the governor's own:
        # each run claims its estimate as Dask resources and the workers' declarations bound them.
        local = isinstance(chosen, LocalBackend)
        if memory_budget == "auto":
            memory: int | None = auto_memory_budget() if local else None
        else:
            memory = None if memory_budget is None else parse_size(memory_budget, field="memory_budget")
        cores = (host_cpus() if local else None) if cpu_budget == "auto" else cpu_budget
        if cores is not None and (isinstance(cores, str | bool) or not cores > 0):
            raise ValueError(f"cpu_budget: must be a positive number of cores or 'auto', got {cpu_budget!r}")
        enabled = memory is not None or cores is not None
        self._estimator = estimator or UsageEstimator(max_cores=host_cpus() if local else None)
        work = Work(aging_per_second)
        starter = Starter(
            work,
            max_running=max_running_tasks,
            budget=Budget(memory, cores),
            admission=(admission or AdmissionPolicy()) if enabled else None,
            estimator=self._estimator,
            pressure=pressure,
            available_memory=available_memory if enabled and local else None,
        )
        self._lock = threading.RLock()  # the thread; reentrant for wait()'s predicate
        self._changed = threading.Condition(self._lock)
        self._catalog = Catalog()
        self._commands: deque[Callable[[], None]] = deque()
        self._wakeup = Wakeup()
        self._thread: threading.Thread | None = None
        self._accepting = True
        self._clock.subscribe(self._wakeup.wakeup)
        if listener is None:
            listeners: tuple[ExecutionListener, ...] = ()
        else:
            listeners = tuple(listener) if isinstance(listener, Sequence) else (listener,)
        self._loop = Loop(
            commands=self._commands,
            wakeup=self._wakeup,
            catalog=self._catalog,
            changed=self._changed,
            clock=self._clock,
            backend=chosen,
            listeners=listeners,
            estimator=self._estimator,
            work=work,
            starter=starter,
            poll_interval=poll_interval,
            chance=random.Random(seed),
        )
        if pressure is None and enabled and local:  # by default: the CPU others keep busy
            starter.pressure = HostPressure(self._loop.our_cpu_seconds)

    # -- tasks ----------------------------------------------------------------------------------

    def add_task(self, task: Task) -> Task:
        """Register ``task`` (assigns ``task.id``) and arm its triggers; returns it."""
        if not isinstance(task, Task):
            raise TypeError(f"task: expected a Task, got {task!r}")
        self._catalog.add(task)
        for trigger in task.triggers:
            if isinstance(trigger, EventTrigger):
                trigger._attach(functools.partial(self._post, self._loop.drain_events, task))
        added = self._clock.now()  # triggers count from the call, not from when the loop gets to it
        self._post(self._loop.register, task, added)
        return task

    def remove_task(self, task_id: int) -> None:
        """Unregister a task: no more fires, queued runs dropped; a running one finishes."""
        task = self._catalog.remove(task_id)
        for trigger in task.triggers:
            if isinstance(trigger, EventTrigger):
                trigger._attach(None)
        self._post(self._loop.unregister, task)

    def get_task(self, task_id: int) -> Task | None:
        """The task with this id, or ``None``."""
        return self._catalog.get(task_id)

    def tasks(self) -> list[Task]:
        """Every registered task, in the order they were added."""
        return self._catalog.all()

    def pause_task(self, task_id: int) -> None:
        """Stop starting this task: time fires are skipped, events wait for ``resume_task``."""
        self._post(self._loop.pause, self._require(task_id))

    def resume_task(self, task_id: int) -> None:
        """Let a paused task run again (its waiting events run now; missed fires do not)."""
        self._post(self._loop.resume, self._require(task_id))

    def fire(self, task_id: int, payload: Any = None) -> None:
        """Queue one run of the task now, as if an event had fired."""
        self._post(functools.partial(self._loop.enqueue_task_run, self._require(task_id), payload=payload))

    # -- what callers may read ------------------------------------------------------------------

    @property
    def estimator(self) -> UsageEstimator:
        """What the scheduler has learned of each task's needs (fed by every finished run; the
        loop thread writes it: read it while the scheduler is stopped, or after ``sync``)."""
        return self._estimator

    def running_tasks_count(self) -> int:
        """Executions running right now (as of the loop's last turn)."""
        return self._loop.published[0]

    def queued_tasks_count(self) -> int:
        """Executions waiting for a slot or for admission right now (as of the last turn)."""
        return self._loop.published[1]

    @property
    def loop_errors(self) -> int:
        """Errors the loop caught and carried on from (a bug: each is logged with its traceback)."""
        return self._loop.loop_errors

    def snapshot(self, timeout: float = 5.0) -> dict[str, Any]:
        """What runs and what waits, as plain data (for ``governor status``): running
        executions with their latest usage reading, queued runs in start order (the first
        thousand; ``queued_total`` counts them all), tasks, the budget, the loop's errors."""
        return self._ask(functools.partial(self._loop.collect, self.max_running_tasks, self.tasks()), timeout)

    def lateness(self, timeout: float = 5.0) -> dict[str, list[float]]:
        """For time-triggered runs, seconds late against the due time: ``"fire"`` when the loop
        fired the trigger (timer precision), ``"start"`` when the child was running (adds
        queueing for a slot and the spawn). The last 100,000 of each; for benchmarks."""
        loop = self._loop
        return self._ask(
            lambda: {"fire": list(loop.fire_lateness), "start": list(loop.start_lateness)}, timeout
        )

    def sync(self, timeout: float | None = 30.0) -> bool:
        """Wait until the loop has handled everything asked of it so far: commands, fires due
        by the clock now, and starting what can start. ``False`` if ``timeout`` passed first
        or the loop is not running. Lets a test assert that nothing ran, without sleeping."""
        if not self._alive():
            return False
        reached = threading.Event()
        self._post(self._loop.barrier, reached)
        return reached.wait(timeout)

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

    # -- starting and stopping ------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread (a no-op if it is running). Triggers are armed from now."""
        with self._lock:
            if self._alive():
                return
            self._accepting = True
            self._thread = threading.Thread(target=self._loop.run, name="governor-scheduler", daemon=True)
            self._commands.append(functools.partial(self._loop.arm_all, self._clock.now()))
            self._thread.start()

    def stop(self, *, wait: bool = True, cancel: bool = False, timeout: float | None = None) -> None:
        """Stop triggering; then let running executions finish, or cancel them.

        With ``cancel`` they are cancelled at once (whole trees killed, outcome ``cancelled``);
        otherwise they may run until ``timeout`` seconds have passed, then are cancelled.
        Queued runs that have not started are dropped. Calling it again is harmless.
        """
        self._request_stop(cancel=cancel, drain=False)
        if wait:
            self._join(timeout)

    def __enter__(self) -> Scheduler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        if getattr(self, "_thread", None) is None or not self._alive():
            wakeup = getattr(self, "_wakeup", None)
            if wakeup is not None:
                wakeup.close()

    # -- used by GovernedExecutor ---------------------------------------------------------------

    def _submit(self, spec: ExecutionSpec, priority: int, retry_policy: RetryPolicy, owner: Owner) -> Run:
        with self._lock:
            if not self._accepting:
                raise RuntimeError("cannot schedule new futures after shutdown")
        run = Run(spec, priority, 1, self._clock.now(), retry_policy, call_name(spec.target), owner=owner)
        self._post(self._loop.queue, run)
        return run

    def _cancel_call(self, run: Run) -> None:
        """The caller cancelled a call: take it out of the queue, or kill its tree."""
        self._post(self._loop.cancel_call, run)

    def _shutdown(self, *, wait: bool, cancel_futures: bool) -> None:
        if cancel_futures:
            self._post(self._loop.cancel_queued_calls)
            self._post(self._loop.cancel_running_calls)
        self._request_stop(cancel=False, drain=True)
        if wait:
            self._join(None)

    # -- behind it ------------------------------------------------------------------------------

    def _post(self, command: Callable[..., None], *args: Any) -> None:
        self._commands.append(functools.partial(command, *args) if args else command)
        self._wakeup.wakeup()

    def _ask(self, question: Callable[[], T], timeout: float) -> T:
        """``question()``'s answer, worked out on the loop thread (here if it is not running)."""
        if not self._alive():
            return question()
        answer: Future[T] = Future()
        self._post(lambda: answer.set_result(question()))
        return answer.result(timeout)

    def _alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _require(self, task_id: int) -> Task:
        task = self._catalog.get(task_id)
        if task is None:
            raise KeyError(f"no task with id {task_id}")
        return task

    def _request_stop(self, *, cancel: bool, drain: bool) -> None:
        with self._lock:
            self._accepting = False
        if self._alive():
            self._post(self._loop.begin_stop, cancel, drain)

    def _join(self, timeout: float | None) -> None:
        thread = self._thread
        if thread is None:
            return
        if threading.current_thread() is thread:
            raise RuntimeError("stop() cannot be called from the scheduler's own thread")
        thread.join(timeout)
        if thread.is_alive():  # the grace is over: cancel what still runs, and wait for it
            self._post(self._loop.cancel_running)
            thread.join()
