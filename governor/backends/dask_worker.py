"""The worker's side of the Dask backend: the body of every execution's Dask task.

``execute_on_worker`` runs on a Dask worker: it marks its run ``started`` (a Dask event), then
runs the same governed ``runner`` execution a local run is, watching the run's ``cancel``
event, and returns the record. ``dask_setup`` is the preload hook
(``dask worker ADDRESS --preload governor.backends.dask_worker``) that sweeps what dead workers
left on the host. The governor's side, which submits these tasks, is ``governor.backends.dask``;
the event names and the record of a run that never happened are shared with it.
``distributed`` is imported only when a body runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from policies import Limits
from runner import Execution, ExecutionSpec, Outcome, TaskError, Usage, run_spec

CANCEL_POLL = 0.2  # seconds between a worker body's looks at its cancel event
RPC_TIMEOUT = 30.0  # seconds a body or the governor's close() waits for the Dask scheduler
_log = logging.getLogger("governor.dask")


def dask_setup(worker: Any) -> None:
    """Dask's preload hook (``--preload governor.backends.dask_worker``): before the worker
    takes tasks, remove the execution cgroups that dead workers or supervisors left on this
    host. A worker killed mid-run takes its child with it (the zygote goes, and the child's
    parent-death signal follows) but cannot remove that child's emptied cgroup."""
    from runner import sweep_orphan_cgroups

    for path, killed in sweep_orphan_cgroups().items():
        _log.warning("removed the cgroup %s of a dead supervisor, killed %d process(es)", path, len(killed))


def execute_on_worker(spec: ExecutionSpec, run_id: str) -> Execution:
    """The Dask task: run ``spec`` governed on this worker and return its record.

    It does not raise for the task's sake: every ending, the task's own exception included, is
    a record, and the governor's retry policy decides what follows.
    """
    from distributed import get_worker

    worker = get_worker()
    began = datetime.now(UTC)
    where = (f"ran on the Dask worker {worker.address}",)
    pending = on_loop(worker.loop, lambda: _begin(worker.scheduler, run_id))
    try:
        rerun, cancelled = pending.result(RPC_TIMEOUT)
    except (OSError, TimeoutError) as error:
        pending.cancel()
        text = f"the worker could not reach the Dask scheduler before starting it: {error!r}"
        return without_run(spec.limits, Outcome.CRASHED, "SchedulerUnreachable", text, began, where)
    if rerun:
        text = (
            "the Dask worker that ran it died and Dask started it again; it is not run twice "
            "(the governor's retry policy decides)"
        )
        return without_run(spec.limits, Outcome.LOST, "WorkerDied", text, began, where)
    if cancelled:
        text = "cancelled before it started"
        return without_run(spec.limits, Outcome.CANCELLED, "Cancelled", text, began, where)
    watch = _CancelWatch(worker, worker.get_current_task(), cancel_event(run_id))
    try:
        record = run_spec(spec, raise_interrupt=False, cancel_requested=watch)
    except Exception as error:  # it could not start here (enforcement unavailable, fork server): a record
        record = Execution.unstarted(spec.limits, error, outcome=Outcome.CRASHED)
    return replace(record, notes=(*record.notes, *where))


async def _begin(scheduler: Any, run_id: str) -> tuple[bool, bool]:
    """(a re-run after a worker died, cancelled already): mark the run started, in that order."""
    started = started_event(run_id)
    if await scheduler.event_is_set(name=started):
        return True, False
    await scheduler.event_set(name=started)
    return False, bool(await scheduler.event_is_set(name=cancel_event(run_id)))


class _CancelWatch:
    """``cancel_requested`` for ``run_spec`` on a worker: true once the execution's cancel event
    is set, or once the worker has been told to forget its task (its future was cancelled, or
    the governor's client went away: nobody waits for the record, so the child must not run
    on). The event is asked of the Dask scheduler at most every ``CANCEL_POLL`` seconds, on the
    worker's event loop, never waiting for the answer, so the runner keeps sampling and
    enforcing even when the scheduler is slow or gone; the task's state is the worker's own."""

    def __init__(self, worker: Any, key: Any, name: str) -> None:
        self._worker = worker
        self._loop = worker.loop
        self._scheduler = worker.scheduler
        self._key = key
        self._name = name
        self._pending: concurrent.futures.Future[Any] | None = None
        self._next = time.monotonic() + CANCEL_POLL  # ``_begin`` has just looked
        self.requested = False

    def __call__(self) -> bool:
        if not self.requested and self._released():
            self.requested = True
        pending = self._pending
        if pending is not None and pending.done():
            self._pending = None
            try:
                self.requested = self.requested or bool(pending.result())
            except (OSError, TimeoutError) as error:  # unreachable for now: the run goes on
                _log.warning("could not read the cancel event %s: %r", self._name, error)
        now = time.monotonic()
        if not self.requested and self._pending is None and now >= self._next:
            self._next = now + CANCEL_POLL
            name = self._name
            self._pending = on_loop(self._loop, lambda: self._scheduler.event_is_set(name=name))
        return self.requested

    def _released(self) -> bool:
        task = self._worker.state.tasks.get(self._key)
        return task is None or task.state in _LET_GO


# The worker-side states of a task nobody wants any more (it is dropped when it returns).
_LET_GO = frozenset({"cancelled", "released", "forgotten"})


# -- shared with the governor's side ----------------------------------------------------


def started_event(run_id: str) -> str:
    return f"governor-started-{run_id}"


def cancel_event(run_id: str) -> str:
    return f"governor-cancel-{run_id}"


def on_loop(
    loop: Any, make: Callable[[], Coroutine[Any, Any, Any]], *, log_failure: bool = True
) -> concurrent.futures.Future[Any]:
    """Run ``make()`` on a tornado ``loop`` from another thread. ``RuntimeError`` if it is closed
    (checked before the coroutine exists, so none is left unawaited). An unexpected failure is
    logged unless ``log_failure`` is false."""
    target = loop.asyncio_loop
    if target.is_closed():
        raise RuntimeError("the event loop is closed")
    pending = asyncio.run_coroutine_threadsafe(make(), target)
    if log_failure:
        pending.add_done_callback(_log_unexpected)
    return pending


def _log_unexpected(pending: concurrent.futures.Future[Any]) -> None:
    if pending.cancelled():
        return
    error = pending.exception()
    if error is not None and not isinstance(error, OSError | TimeoutError):
        _log.error("a Dask coordination call failed", exc_info=error)


def without_run(
    limits: Limits, outcome: Outcome, kind: str, message: str, began: datetime, notes: tuple[str, ...]
) -> Execution:
    """A record with no measured run behind it (nothing was started, or nothing came back)."""
    return Execution(
        outcome=outcome,
        exit_code=None,
        signal=None,
        breached_limit=None,
        error=TaskError(type=kind, message=message),
        usage=Usage.zero(),
        limits=limits,
        enforcement={},
        unenforced=(),
        started_at=began,
        ended_at=datetime.now(UTC),
        pid=None,
        notes=notes,
    )
