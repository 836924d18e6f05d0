"""``Task``: a job the scheduler runs when its triggers fire, with its history."""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from governor.scheduling._triggers import OneTimeTrigger, validate_trigger
from policies import Limits, RetryPolicy, Sandbox
from runner import Enforcement, Execution, ExecutionSpec
from runner._spec import DEFAULT_OUTPUT_CAP

# Frozen values every task without its own may share (an idle task costs what it holds).
_NO_LIMITS = Limits()
_NO_RETRIES = RetryPolicy()
_NO_KWARGS: dict[str, Any] = {}  # never changed: a spec's kwargs are read, copied, never written


class Task:
    """A job: what to run, when (triggers), how urgently (priority), under which limits,
    and what to do when it fails (retry policy). ``executions`` is its recent history, oldest
    first, one record per attempt: the last ``keep_executions`` (100 by default; the store of
    ``governor serve`` keeps them all); ``runs`` counts every attempt recorded.

    ``function`` is a callable (run with ``args``/``kwargs``) or an argv list. A task with no
    triggers runs only when fired by hand (``Scheduler.fire``). ``max_instances`` bounds how
    many of its executions may run at once (1: never overlaps itself). When an
    ``EventTrigger`` fires with a payload, a callable receives it as the keyword argument
    named by ``payload_kwarg`` (if set); a command receives it as JSON in the file named by
    ``GOVERNOR_EVENT_PAYLOAD_FILE`` (and inline in ``GOVERNOR_EVENT_PAYLOAD`` while small).

    ``sandbox`` (``True``, or a ``Sandbox``) confines each execution as untrusted code.
    ``output_cap`` bounds the stdout and stderr captured per execution (bytes each; the
    runner's default if None); with ``keep_output=False`` the records in ``executions`` drop
    their captured output (a service whose store keeps it: memory stays flat whatever the
    task prints).
    """

    __slots__ = (
        "_executions",
        "description",
        "id",
        "keep_executions",
        "keep_output",
        "max_instances",
        "name",
        "paused",
        "payload_kwarg",
        "priority",
        "retry_policy",
        "runs",
        "spec",
        "triggers",
    )

    def __init__(
        self,
        name: str,
        function: Callable[..., Any] | Sequence[str],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        triggers: Iterable[Any] = (),
        retry_policy: RetryPolicy | None = None,
        priority: int = 0,
        limits: Limits | None = None,
        description: str = "",
        *,
        max_instances: int = 1,
        enforcement: Enforcement | str = Enforcement.AUTO,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        payload_kwarg: str | None = None,
        keep_executions: int = 100,
        keep_output: bool = True,
        output_cap: int | None = None,
        sandbox: Sandbox | bool | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name: must be a non-empty string, got {name!r}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority: must be a whole number, got {priority!r}")
        if isinstance(max_instances, bool) or not isinstance(max_instances, int) or max_instances < 1:
            raise ValueError(f"max_instances: must be a whole number >= 1, got {max_instances!r}")
        if isinstance(keep_executions, bool) or not isinstance(keep_executions, int) or keep_executions < 0:
            raise ValueError(f"keep_executions: must be a whole number >= 0, got {keep_executions!r}")
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise ValueError(f"retry_policy: expected a RetryPolicy, got {retry_policy!r}")
        self.name = name
        self.description = description
        self.priority = priority
        self.max_instances = max_instances
        self.retry_policy = retry_policy or _NO_RETRIES
        self.payload_kwarg = payload_kwarg
        # Building the spec validates target, arguments, limits and options now, at definition.
        self.spec = ExecutionSpec(
            target=function,
            args=tuple(args),
            kwargs=dict(kwargs) if kwargs else _NO_KWARGS,
            limits=limits or _NO_LIMITS,
            enforcement=enforcement,
            env=env,
            cwd=cwd,
            output_cap=DEFAULT_OUTPUT_CAP if output_cap is None else output_cap,
            sandbox=sandbox,
        )
        self.keep_output = bool(keep_output)
        self.triggers = tuple(triggers)
        for trigger in self.triggers:
            validate_trigger(trigger)
        self.id: int | None = None
        self._executions: list[Execution] | None = None  # none until the first (idle tasks carry none)
        self.keep_executions = keep_executions
        self.runs = 0
        self.paused = False

    @property
    def executions(self) -> list[Execution]:
        """The recent executions, oldest first (a copy while there are none)."""
        return self._executions if self._executions is not None else []

    @property
    def function(self) -> Callable[..., Any] | Sequence[str]:
        """The callable or argv this task runs."""
        return self.spec.target

    @property
    def limits(self) -> Limits:
        """The limits of its first attempt (retries may grow memory)."""
        return self.spec.limits

    @property
    def one_shot(self) -> bool:
        """True when every trigger is one-time: the task leaves the scheduler once it has run."""
        return bool(self.triggers) and all(isinstance(t, OneTimeTrigger) for t in self.triggers)

    def _record(self, execution: Execution) -> None:
        # The loop thread is the only writer; a reader sees the list before or after a step.
        self.runs += 1
        if self._executions is None:
            self._executions = []
        if not self.keep_output and (execution.stdout is not None or execution.stderr is not None):
            execution = replace(execution, stdout=None, stderr=None)
        self._executions.append(execution)
        if len(self._executions) > self.keep_executions:
            del self._executions[: len(self._executions) - self.keep_executions]

    def __repr__(self) -> str:
        triggers = list(self.triggers)
        return f"Task(id={self.id}, name={self.name!r}, priority={self.priority}, triggers={triggers!r})"


class Catalog:
    """The tasks a scheduler has, as its callers see them (under a lock: any thread may ask).

    The loop keeps its own registry, changed only by the commands it applies; this one is
    changed by ``add_task``/``remove_task`` at once, so that ``get_task`` answers at once, and
    by the loop when a one-shot task retires.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[int, Task] = {}
        self._ids = itertools.count(1)

    def add(self, task: Task) -> None:
        """Give ``task`` its id and list it; ``ValueError`` if it is listed already."""
        with self._lock:
            if task.id is not None and self._tasks.get(task.id) is task:
                raise ValueError(f"task {task.name!r} is already added (id {task.id})")
            task.id = next(self._ids)
            self._tasks[task.id] = task

    def remove(self, task_id: int) -> Task:
        """Unlist the task; ``KeyError`` if there is none."""
        with self._lock:
            task = self._tasks.pop(task_id, None)
        if task is None:
            raise KeyError(f"no task with id {task_id}")
        return task

    def retire(self, task: Task) -> None:
        """Unlist ``task`` if it is still listed (a one-shot task has run)."""
        with self._lock:
            if task.id is not None and self._tasks.get(task.id) is task:
                del self._tasks[task.id]

    def get(self, task_id: int) -> Task | None:
        with self._lock:
            return self._tasks.get(task_id)

    def holds(self, task: Task) -> bool:
        return task.id is not None and self.get(task.id) is task

    def all(self) -> list[Task]:
        with self._lock:
            return list(self._tasks.values())


def call_name(target: object) -> str:
    """A low-cardinality name for a call with no task (an executor's): ``module.qualname`` of
    the function (under any ``functools.partial``), or argv[0] of a command. Its estimates are
    learned, and its spans named, under it."""
    if isinstance(target, list):
        return str(target[0])
    while isinstance(target, functools.partial):
        target = target.func
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None) or type(target).__module__
    return f"{module}.{qualname}"
