"""``GovernedFuture``: a ``concurrent.futures.Future`` whose ``cancel()`` also stops a call
that is already running, by killing its whole process tree.

The one deliberate difference from the standard contract, where ``cancel()`` of a running
future returns ``False`` and the call runs on: a governed call is a process tree the governor
can end at any moment, so cancelling it does (as pebble's ``ProcessFuture`` does). The future
is cancelled at once; the call's ``cancelled`` record follows as ``future.execution`` once
its tree is gone. ``asyncio.wrap_future`` (and so ``asyncio.wait_for`` on one) cancels the
future it wraps, so an asyncio timeout kills the child too.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import _base as base
from typing import TypeVar

T = TypeVar("T")


class GovernedFuture(Future[T]):
    """The future of one governed call (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._stop: Callable[[], None] | None = None  # kills the running call's tree

    def cancel(self) -> bool:
        """Cancel the call: take it out of the queue, or kill it if it runs. ``False`` only
        once it has finished."""
        with self._condition:
            running = self._state == base.RUNNING and self._stop is not None
            if running:
                # What set_running_or_notify_cancel does for a pending future cancelled: the
                # waiters of concurrent.futures.wait and as_completed learn of it here.
                self._state = base.CANCELLED_AND_NOTIFIED
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
                self._condition.notify_all()
        if running:
            self._invoke_callbacks()  # type: ignore[attr-defined]  # as Future.cancel does
        elif not super().cancel():
            return False
        if self._stop is not None:
            self._stop()  # out of the queue, or its tree killed: the loop knows which
        return True
