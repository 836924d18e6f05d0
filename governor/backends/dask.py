"""Executions on a Dask cluster: the ``Backend`` for a ``distributed.Client`` (the ``dask`` extra).

The governor still decides when, in what order, under which limits and whether to retry; Dask
decides where. Each execution is one Dask task whose body, ``execute_on_worker``, is the same
``runner`` execution a local run is (a fresh child forked by the worker's own zygote, the same
limits, enforcement, measurement and record), only on a worker:

    scheduler loop ── DaskBackend.start ── client.submit(execute_on_worker, spec, run_id,
         ^              resources=claim, priority=, retries=0, pure=False) ──> a Dask worker
         │                                         body: runner.run_spec(spec) ──> Execution
         │              done: fetch the record on the client's event loop, write a byte to the pipe
         └── poll: the pipe is readable ── on_readable takes the record ── store, retry, futures

Two named Dask events per execution, kept by the Dask scheduler, coordinate with the body:

- ``started``: the body sets it before it forks. A body that finds it already set is a run Dask
  started again after the worker running it died; it returns ``lost`` instead of running the
  task twice (with ``distributed.scheduler.allowed-failures: 0`` Dask does not re-run it at all
  and the future fails with ``KilledWorker``, also recorded ``lost``). Dask-side retries are
  off (``retries=0``): the governor's ``RetryPolicy`` decides (``retry_on=("lost", ...)``).
- ``cancel``: ``cancel()`` sets it, then reads ``started``. Unset, the body has not reached its
  own check of ``cancel`` yet, so the Dask future is cancelled too and the record is
  ``cancelled`` without a run; set, the body is running and, polling ``cancel`` at most every
  ``CANCEL_POLL`` seconds without blocking its loop, cancels the child's whole tree (TERM,
  grace, KILL) and returns the ``cancelled`` record. Either way no child starts unseen.

The body also stops its child when the worker lets go of the task (its future was cancelled,
or the governor's client went away): nothing is left running that nobody waits for. A worker
that dies takes its child with it (the zygote goes; the child's parent-death signal follows);
the emptied cgroup it leaves is removed by the next worker started with
``--preload governor.backends.dask_worker`` on that host (``dask_setup``).

Placement: the admission estimate (or, without one, the declared ``memory`` and ``cpu_rate``
limits) becomes the Dask resource claim ``{"MEMORY": bytes, "CPU": cores}``, so a worker
started with ``--resources "MEMORY=8e9,CPU=4"`` runs at once only what fits. A resource no
worker declares is not claimed (Dask would otherwise hold the task forever); a claim larger
than every worker's declaration is capped at the largest (noted in the record). The priority
becomes the Dask priority (higher first in both).

Nothing here blocks the scheduler's loop on the network: submits are queued messages, results
are fetched and event writes run on the client's event loop (never on Dask's callback thread,
which one thread serves for every future of the process).
``distributed`` is imported only when a backend is built or a body runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import pickle
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from governor.backends.dask_worker import (
    RPC_TIMEOUT,
    cancel_event,
    execute_on_worker,
    on_loop,
    started_event,
    without_run,
)
from policies import Limits, Need, format_size
from runner import Execution, ExecutionSpec, Outcome, new_execution_id
from runner._wire import drain

MEMORY = "MEMORY"  # the Dask resource a memory claim is made in (bytes)
CPU = "CPU"  # the Dask resource a CPU claim is made in (cores)
CANCEL_CONFIRM = 10.0  # beyond kill_grace: how long a cancelled handle waits for the cluster's word
HEARTBEAT = 0.5  # seconds between a running handle's deadlines (see DaskHandle.deadline)
CAPACITY_REFRESH = 10.0  # seconds between refreshes of what the workers declare
_log = logging.getLogger("governor.dask")


def connect(address: str, timeout: float = 10.0) -> Any:
    """A ``distributed.Client`` for the scheduler at ``address`` (``tcp://host:8786``).

    ``RuntimeError`` if the ``dask`` extra is not installed; ``OSError``/``TimeoutError`` if
    the scheduler does not answer within ``timeout`` seconds.
    """
    try:
        from distributed import Client
    except ImportError:
        raise RuntimeError(
            "a Dask cluster needs the dask extra (the distributed package): "
            "pip install 'resource-governor[dask]'"
        ) from None
    return Client(address, timeout=timeout)


@contextlib.contextmanager
def cluster_backend(address: str | None) -> Iterator[object]:
    """The backend ``--dask ADDRESS`` asks for: a ``distributed.Client``, closed on the way out,
    or ``"local"`` without an address. ``RuntimeError`` says why a cluster cannot be used."""
    if address is None:
        yield "local"
        return
    try:
        client = connect(address)
    except (OSError, TimeoutError) as error:
        raise RuntimeError(f"--dask {address}: cannot reach the Dask scheduler: {error}") from None
    with client:
        yield client


# -- in the governor ------------------------------------------------------------------------


class DaskBackend:
    """Starts executions on the Dask cluster of ``client`` (a synchronous ``distributed.Client``;
    the caller keeps ownership of it). See the module docstring for what runs where."""

    def __init__(self, client: Any) -> None:
        if getattr(client, "asynchronous", False):
            raise ValueError("backend: an asynchronous distributed.Client is not supported")
        self.client = client
        self._lock = threading.Lock()
        self._lingering: set[str] = set()  # events that may still be set after their run ended
        self._capacity = worker_capacity(client.scheduler_info())
        self._capacity_due = time.monotonic() + CAPACITY_REFRESH

    def start(
        self, spec: ExecutionSpec, *, need: Need | None, priority: int, run_id: str | None = None
    ) -> DaskHandle:
        """Submit ``spec`` to the cluster; returns its handle (done already if it could not be sent)."""
        now = time.monotonic()
        if now >= self._capacity_due:  # workers come and go: look again, without waiting for it
            self._capacity_due = now + CAPACITY_REFRESH
            self.spawn(self._refresh_capacity)
        resources, notes = resource_claim(need, spec.limits, self._capacity)
        return DaskHandle(
            self, spec, run_id or new_execution_id(), resources=resources, priority=priority, notes=notes
        )

    def close(self) -> None:
        """Clear the events that runs which ended without their body's word may have left set."""
        with self._lock:
            names = sorted(self._lingering)
            self._lingering.clear()
        if not names or self.client.status != "running":
            return
        pending = self.spawn(lambda: _clear_events(self.client.scheduler, names))
        if pending is None:
            return
        try:
            pending.result(RPC_TIMEOUT)
        except (OSError, TimeoutError) as error:
            _log.warning("could not clear %d Dask event(s): %r", len(names), error)

    def spawn(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> concurrent.futures.Future[Any] | None:
        """Run the coroutine ``make()`` on the client's event loop; ``None`` (and nothing runs)
        once the client is closing or closed: there is no cluster left to tell."""
        if self.client.status != "running":
            _log.debug("the Dask client is %s: not sent", self.client.status)
            return None
        try:
            return on_loop(self.client.loop, make)
        except RuntimeError as error:  # its loop closed meanwhile
            _log.debug("the Dask client's event loop is gone: %s", error)
            return None

    def ended(self, handle: DaskHandle, *, body_may_follow: bool) -> None:
        """A handle has its record: its events are no longer needed on the Dask scheduler."""
        names = [started_event(handle.id), cancel_event(handle.id)]
        if body_may_follow:  # the body may still set ``started``: clear it at close as well
            with self._lock:
                self._lingering.update(names)
        self.spawn(lambda: _clear_events(self.client.scheduler, names))

    async def _refresh_capacity(self) -> None:
        try:
            info = await self.client.scheduler.identity()
        except (OSError, TimeoutError) as error:
            _log.warning("could not read the Dask workers' resources: %r", error)
            return
        self._capacity = worker_capacity(info)

    def __repr__(self) -> str:
        return f"DaskBackend({self.client.scheduler.address})"


class DaskHandle:
    """One execution on the cluster, driven by the scheduler's loop like a local
    ``runner.ExecutionHandle`` (``fds``, ``deadline``, ``on_readable``, ``on_time``,
    ``cancel``, ``done``, ``execution``).

    ``pid`` is the child's pid on its worker once the record is back (``None`` before);
    ``pid_start_ticks`` and ``cgroups`` stay empty: the child lives on another host and
    nothing of it is this host's to recover. ``last_reading`` is ``None``: a worker sends
    no live samples, the record carries the timeline. ``resources`` is the Dask claim.
    """

    def __init__(
        self,
        backend: DaskBackend,
        spec: ExecutionSpec,
        run_id: str,
        *,
        resources: dict[str, float],
        priority: int,
        notes: list[str],
    ) -> None:
        self.spec = spec
        self.id = run_id
        self.execution: Execution | None = None
        self.pid: int | None = None
        self.pid_start_ticks: int | None = None
        self.cgroups: list[str] = []
        self.last_reading: Any = None
        self.resources = resources
        self._backend = backend
        self._notes = list(notes)
        self._started_at = datetime.now(UTC)
        self._lock = threading.Lock()  # the pipe and the arrived record, shared with Dask's callback thread
        self._arrived: Execution | None = None
        self._cancelling = False
        self._give_up_at: float | None = None
        self._body_may_follow = False  # a cancelled future's body may still run (and set events)
        self._future: Any = None
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if spec.stdin is not None or spec.on_output is not None:
            self._notes.append("stdin and on_output stay on the governor's host: not sent to the worker")
        remote = replace(spec, stdin=None, on_output=None)
        try:
            self._future = backend.client.submit(
                execute_on_worker,
                remote,
                self.id,
                key=f"governor-{self.id}",
                pure=False,
                retries=0,
                resources=resources or None,
                priority=priority,
            )
        except (TypeError, pickle.PicklingError) as error:  # the call cannot be pickled
            kind = f"{type(error).__module__}.{type(error).__qualname__}"
            text = f"the call could not be pickled for the cluster: {error}"
            self._settle(without_run(spec.limits, Outcome.FAILED, kind, text, self._started_at, ()))
            return
        except BaseException:
            self._close_pipe()
            raise
        self._future.add_done_callback(self._on_done)

    # -- the owner's interface ------------------------------------------------------------

    @property
    def started_at(self) -> datetime:
        """When it was submitted; once the record is back, when its child started."""
        return self._started_at

    @property
    def started(self) -> bool:
        """True from the start: the task is with the cluster, which says no more until the end."""
        return True

    @property
    def done(self) -> bool:
        """True once the record is ready in ``execution``."""
        return self.execution is not None

    def fds(self) -> list[int]:
        """The read end of the pipe the record's arrival is signalled on."""
        return [] if self.execution is not None else [self._read]

    def deadline(self) -> float | None:
        """Now once done (the owner collects it at once); while a cancel waits for the
        cluster's word, when to stop waiting; else the next ``HEARTBEAT`` tick.

        The record's arrival wakes the owner through ``fds()``; the tick is for the owner's
        own decisions: the scheduler cancels running work (``stop(cancel=True)``, the end of
        a stop's grace) only when its loop turns, and a local handle turns it at every
        sample. Ticks fall on a shared grid, so any number of handles wake it as one."""
        if self.execution is not None:
            return time.monotonic()
        if self._give_up_at is not None:
            return self._give_up_at
        return (math.floor(time.monotonic() / HEARTBEAT) + 1) * HEARTBEAT

    def on_readable(self, fd: int) -> None:
        """Take the record the callback thread left."""
        drain(fd)
        with self._lock:
            record = self._arrived
        if record is not None:
            self._settle(record)

    def on_time(self, now: float | None = None) -> None:
        """Give up on a cancel the cluster has not confirmed in time (a lost scheduler)."""
        now = time.monotonic() if now is None else now
        if self.execution is None and self._give_up_at is not None and now >= self._give_up_at:
            waited = self.spec.kill_grace + CANCEL_CONFIRM
            text = f"cancelled; the Dask cluster did not confirm it within {waited:g}s (it may run on)"
            self._body_may_follow = True
            limits, began = self.spec.limits, self._started_at
            self._settle(without_run(limits, Outcome.CANCELLED, "Cancelled", text, began, ()))

    def cancel(self) -> None:
        """Cancel: the worker's body kills the child's tree; not started yet, it never starts."""
        if self.execution is not None or self._cancelling:
            return
        self._cancelling = True
        self._give_up_at = time.monotonic() + self.spec.kill_grace + CANCEL_CONFIRM
        self._backend.spawn(self._cancel_on_cluster)

    # -- behind it ------------------------------------------------------------------------

    async def _cancel_on_cluster(self) -> None:
        client = self._backend.client
        future = self._future
        try:
            await client.scheduler.event_set(name=cancel_event(self.id))
            if future is not None and not await client.scheduler.event_is_set(name=started_event(self.id)):
                await client.cancel([future], asynchronous=True)
        except (OSError, TimeoutError) as error:  # on_time gives up on it after a while
            _log.warning("could not cancel %s on the Dask cluster: %r", self.id, error)

    def _on_done(self, future: Any) -> None:
        """On Dask's callback thread, which every future of this process shares: never block it.
        The record is fetched on the client's event loop; its arrival wakes the scheduler loop."""
        if self._client_gone():
            self._arrive(self._client_closed())
            return
        try:
            fetching = on_loop(
                self._backend.client.loop,
                lambda: asyncio.wait_for(future._result(), RPC_TIMEOUT),  # result()'s own coroutine
                log_failure=False,  # a failed fetch is the record's business, not the log's
            )
        except RuntimeError:  # the loop closed: the client with it
            self._arrive(self._client_closed())
            return
        fetching.add_done_callback(lambda fetched: self._arrive(self._record_from(fetched)))

    def _arrive(self, record: Execution) -> None:
        with self._lock:
            if self.execution is not None:
                return  # settled already (a cancel the cluster did not confirm in time)
            self._arrived = record
            with contextlib.suppress(BlockingIOError):
                os.write(self._write, b"!")

    def _client_closed(self) -> Execution:
        # Our own client went away: nothing failed on the worker, which stops the child once the
        # cluster lets go of the task.
        text = "the governor's Dask client closed before the record came back"
        return without_run(self.spec.limits, Outcome.LOST, "ClientClosed", text, self._started_at, ())

    def _record_from(self, fetched: concurrent.futures.Future[Any]) -> Execution:
        limits, began = self.spec.limits, self._started_at
        try:
            value = fetched.result()
        except (concurrent.futures.CancelledError, asyncio.CancelledError):  # FutureCancelledError
            self._body_may_follow = True
            if self._cancelling:
                text = "cancelled before it started on a Dask worker"
                return without_run(limits, Outcome.CANCELLED, "Cancelled", text, began, ())
            text = "the Dask cluster dropped it (its scheduler closed, or its future was cancelled elsewhere)"
            return without_run(limits, Outcome.LOST, "DaskCancelled", text, began, ())
        except Exception as error:  # why there is no record, as a record
            if self._client_gone():
                return self._client_closed()
            if isinstance(error, TimeoutError):  # before OSError, which _failure_record takes as a death
                text = f"the record could not be fetched from the cluster within {RPC_TIMEOUT:g}s"
                return without_run(limits, Outcome.LOST, "FetchTimedOut", text, began, ())
            return _failure_record(limits, error, began)
        if not isinstance(value, Execution):
            text = f"the Dask task returned {type(value).__qualname__}, not an execution record"
            return without_run(limits, Outcome.CRASHED, "BadRecord", text, began, ())
        return value

    def _client_gone(self) -> bool:
        return getattr(self._backend.client, "status", None) in ("closing", "closed")

    def _settle(self, record: Execution) -> None:
        with self._lock:
            if self.execution is not None:
                return
            if self._notes:
                record = replace(record, notes=(*record.notes, *self._notes))
            self.execution = record
            self._close_pipe()
        self.pid = record.pid
        self._started_at = record.started_at
        if self._future is not None:
            self._future = None  # Dask may forget the task and its result now
            self._backend.ended(self, body_may_follow=self._body_may_follow)

    def _close_pipe(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        state = "running" if self.execution is None else str(self.execution.outcome)
        return f"DaskHandle({self.id}, {state}, resources={self.resources})"


# -- placement --------------------------------------------------------------------------------


def worker_capacity(info: Mapping[str, Any]) -> dict[str, float]:
    """The most of each Dask resource any one worker declares (from ``scheduler_info()``)."""
    capacity: dict[str, float] = {}
    for worker in (info.get("workers") or {}).values():
        for name, amount in (worker.get("resources") or {}).items():
            capacity[name] = max(capacity.get(name, 0.0), float(amount))
    return capacity


def resource_claim(
    need: Need | None, limits: Limits, capacity: Mapping[str, float]
) -> tuple[dict[str, float], list[str]]:
    """The Dask resources an execution claims, and notes on what was changed.

    ``need`` (the admission estimate) or else the declared ``memory`` / ``cpu_rate`` limits,
    as ``MEMORY`` bytes and ``CPU`` cores. A resource no worker declares is not claimed; a
    claim above every worker's declaration is capped at the largest one.
    """
    memory = need.memory_bytes if need is not None else limits.memory
    cores = need.cpu_cores if need is not None else limits.cpu_rate
    claim: dict[str, float] = {}
    notes: list[str] = []
    for name, amount, show in ((MEMORY, memory, _bytes), (CPU, cores, _cores)):
        if amount is None or amount <= 0 or name not in capacity:
            continue
        if amount > capacity[name]:
            notes.append(
                f"Dask claim {name}={show(amount)} capped at {show(capacity[name])}, "
                "the most a worker declares"
            )
            amount = capacity[name]
        claim[name] = amount
    return claim, notes


def _bytes(amount: float) -> str:
    return format_size(int(amount))


def _cores(amount: float) -> str:
    return f"{amount:g} cores"


# -- helpers ----------------------------------------------------------------------------------


async def _clear_events(scheduler: Any, names: list[str]) -> None:
    try:
        for name in names:
            await scheduler.event_clear(name=name)
    except (OSError, TimeoutError) as error:  # a leftover flag on the Dask scheduler, nothing more
        _log.warning("could not clear Dask events %s: %r", names, error)


def _failure_record(limits: Limits, error: BaseException, began: datetime) -> Execution:
    """The record of a Dask task that ended without one: its worker died, or it failed there."""
    kind = type(error)
    if kind.__name__ == "KilledWorker" or isinstance(error, OSError):
        last = getattr(getattr(error, "last_worker", None), "address", None)
        where = f" {last}" if last else ""
        text = f"the Dask worker{where} died while it ran ({kind.__name__})"
        return without_run(limits, Outcome.LOST, "WorkerDied", text, began, ())
    text = f"the Dask task failed on the worker: {kind.__name__}: {error}"
    return without_run(limits, Outcome.CRASHED, f"{kind.__module__}.{kind.__qualname__}", text, began, ())
