"""Every extension point of the governor, in one place (APScheduler 4's ``abc.py`` is the model).

    Trigger            when a task fires: ``next_fire(after)``; the scheduler keeps it in a heap
    PolledTrigger      the seed's shape: ``is_ready()`` / ``reset()``, polled at a coarse interval
    Clock              the time schedule logic reads (``SystemClock``; ``FakeClock`` in tests)
    Backend            where executions run: ``start(spec)`` returns a ``Handle``
    Handle             a started execution the loop drives (``runner.Handle``)
    ExecutionListener  told of every start and end, on the loop thread (store, logs, telemetry)

Each but ``ExecutionListener`` is a ``typing.Protocol``: implement the methods, subclass
nothing; ``ExecutionListener``'s methods are each optional. Only types are imported here, so
any module may import this one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from runner import Handle

if TYPE_CHECKING:
    from governor.scheduling._task import Task
    from policies import Need
    from runner import Execution, ExecutionSpec

__all__ = ["Backend", "Clock", "ExecutionListener", "Handle", "PolledTrigger", "Trigger"]


@runtime_checkable
class Trigger(Protocol):
    """A time-based trigger: it can say when it next fires.

    ``next_fire(after)`` returns the first fire time strictly after the aware datetime
    ``after``, or ``None`` if it never fires again. It must not change the trigger: the
    scheduler may ask the same question twice. The built-in triggers answer in UTC; a custom
    one may answer in any zone, so convert with ``.astimezone(UTC)`` before comparing.
    """

    def next_fire(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after``, or ``None``."""
        ...


@runtime_checkable
class PolledTrigger(Protocol):
    """The seed's custom trigger shape, polled by the scheduler at a coarse interval.

    ``is_ready()`` says whether the task should fire now; after firing, the scheduler calls
    ``reset()`` so that the trigger can arm itself for the next time.
    """

    def is_ready(self) -> bool:
        """True when the task should fire now."""
        ...

    def reset(self) -> None:
        """Called once after each fire this trigger caused."""
        ...


class Clock(Protocol):
    """What the scheduler asks of time."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever time jumps (fake clocks only; real time just passes)."""
        ...


class Backend(Protocol):
    """Starts executions for a scheduler; the scheduler keeps every decision (when, in what
    order, under which limits, whether to retry), the backend only decides where the child
    process lives."""

    def start(
        self, spec: ExecutionSpec, *, need: Need | None, priority: int, run_id: str | None = None
    ) -> Handle:
        """Start ``spec`` as the execution ``run_id`` (a fresh id if None); return its handle
        (already ``done`` if it could not start). ``need`` is its admission estimate (a
        placement claim), ``priority`` its priority."""
        ...

    def close(self) -> None:
        """Release what the backend holds (the scheduler has stopped)."""
        ...


class ExecutionListener:
    """Told, on the loop thread, when executions start and end (the store, logs, metrics).

    Every method is optional: subclass this and override the ones you need, or pass any object
    that has some of them; a method an object lacks is simply not called. Calls must be quick
    (hand work to another thread); an exception is logged and counted in
    ``listener_errors``. ``task`` is ``None`` for an executor call; ``run_id`` is the runner's
    execution id, also the name of its cgroups.
    """

    def execution_starting(
        self, task: Task | None, attempt: int, run_id: str, queued_at: datetime, cause: str | None
    ) -> None:
        """Just before the child of ``run_id`` is asked for (a store records it, so a crash
        from then on is on record); ``cause`` is the name its event was fired with."""

    def execution_started(self, task: Task | None, attempt: int, handle: Handle, queued_at: datetime) -> None:
        """A child has started."""

    def execution_finished(self, task: Task | None, run_id: str | None, record: Execution) -> None:
        """An execution has ended (or could not start: ``run_id`` is then ``None``)."""
