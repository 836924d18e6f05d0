"""``Task``: a job the scheduler runs when its triggers fire, with its history."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from governor.scheduling._triggers import OneTimeTrigger, validate_trigger
from policies import Limits, RetryPolicy
from runner import Enforcement, Execution, ExecutionSpec


class Task:
    """A job: what to run, when (triggers), how urgently (priority), under which limits,
    and what to do when it fails (retry policy). ``executions`` is its history, oldest first,
    one record per attempt.

    ``function`` is a callable (run with ``args``/``kwargs``) or an argv list. A task with no
    triggers runs only when fired by hand (``Scheduler.fire``). ``max_instances`` bounds how
    many of its executions may run at once (1: never overlaps itself). When an
    ``EventTrigger`` fires with a payload, a callable receives it as the keyword argument
    named by ``payload_kwarg`` (if set); a command receives it as JSON in the environment
    variable ``GOVERNOR_EVENT_PAYLOAD``.
    """

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
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name: must be a non-empty string, got {name!r}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority: must be a whole number, got {priority!r}")
        if isinstance(max_instances, bool) or not isinstance(max_instances, int) or max_instances < 1:
            raise ValueError(f"max_instances: must be a whole number >= 1, got {max_instances!r}")
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise ValueError(f"retry_policy: expected a RetryPolicy, got {retry_policy!r}")
        self.name = name
        self.description = description
        self.priority = priority
        self.max_instances = max_instances
        self.retry_policy = retry_policy or RetryPolicy()
        self.payload_kwarg = payload_kwarg
        # Building the spec validates target, arguments, limits and options now, at definition.
        self.spec = ExecutionSpec(
            target=function,
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            limits=limits or Limits(),
            enforcement=enforcement,
            env=env,
            cwd=cwd,
        )
        self.triggers = tuple(triggers)
        for trigger in self.triggers:
            validate_trigger(trigger)
        self.id: int | None = None
        self.executions: list[Execution] = []
        self.paused = False
        self._lock = threading.Lock()

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
        with self._lock:
            self.executions.append(execution)

    def __repr__(self) -> str:
        triggers = list(self.triggers)
        return f"Task(id={self.id}, name={self.name!r}, priority={self.priority}, triggers={triggers!r})"


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
