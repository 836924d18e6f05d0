"""``GovernedExecutor``: a ``concurrent.futures.Executor`` whose every call is an isolated,
limited, measured execution in a fresh child process, run by a ``Scheduler``'s loop.

A drop-in for ``ProcessPoolExecutor`` where isolation matters: no worker is reused, so no
state leaks between calls, a crash fails only its own call, and a call that breaks its limits
is killed (whole tree) without harming the others. A call's exception re-raises from
``Future.result()`` as its original type, with the child's traceback as ``__cause__``;
any other failure raises ``ExecutionFailed`` carrying the record. Every finished future has
the record of its last attempt as ``future.execution``.

One deliberate difference from the standard contract: ``future.cancel()`` of a call that is
already running kills its process tree and returns ``True`` (see ``GovernedFuture``), and
``shutdown(cancel_futures=True)`` kills running calls instead of waiting for them. ``asubmit``
is the asyncio form: awaiting it gives the result, and cancelling it (``asyncio.wait_for``'s
timeout, a task group's cancel) kills the call.

The executor owns its futures: the scheduler knows each call only as a run with an owner
(``_Call``), which it tells when the call starts and, once, how it ended for good; the owner
settles the future. A future cancelled while its call waits takes the call out of the queue.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from governor._future import GovernedFuture
from governor.scheduling._scheduler import Scheduler
from policies import Limits, RetryPolicy, Sandbox
from runner import Enforcement, Execution, ExecutionFailed, ExecutionSpec, ForkServer, Outcome

if TYPE_CHECKING:
    from governor.observe._telemetry import Telemetry

P = ParamSpec("P")
T = TypeVar("T")


class GovernedExecutor(Executor):
    """Runs each submitted call in its own governed child process.

    ``max_workers`` calls run at once (default: the number of CPUs); ``limits``,
    ``retry_policy``, ``enforcement``, ``env``, ``cwd`` and ``sandbox`` (``True``, or a
    ``Sandbox``: see the README on untrusted code) apply to every call unless
    ``options(...)`` overrides them for some calls. Calls also wait until their estimated need
    fits ``memory_budget`` / ``cpu_budget`` (bytes or ``"2GiB"``, cores; default ``"auto"``:
    80% of the host's memory and all its CPUs; ``None`` turns that check off). ``telemetry``
    records every call (spans, metrics, logs); the caller shuts it down. ``backend`` says
    where calls run: ``"local"`` (children of this process) or a ``distributed.Client``.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        limits: Limits | None = None,
        retry_policy: RetryPolicy | None = None,
        *,
        enforcement: Enforcement | str = Enforcement.AUTO,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        sandbox: Sandbox | bool | None = None,
        priority: int = 0,
        fork_server: ForkServer | None = None,
        memory_budget: int | str | None = "auto",
        cpu_budget: float | str | None = "auto",
        telemetry: Telemetry | None = None,
        backend: object = "local",
    ) -> None:
        workers = max_workers if max_workers is not None else (os.cpu_count() or 1)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"max_workers: must be a whole number >= 1, got {max_workers!r}")
        self._defaults = _CallOptions(
            limits=limits or Limits(),
            retry_policy=retry_policy or RetryPolicy(),
            priority=priority,
            enforcement=enforcement,
            env=env,
            cwd=cwd,
            sandbox=Sandbox.coerce(sandbox),
        )
        self._scheduler = Scheduler(
            workers,
            fork_server=fork_server,
            memory_budget=memory_budget,
            cpu_budget=cpu_budget,
            listener=[telemetry] if telemetry is not None else None,
            backend=backend,
        )
        if telemetry is not None:
            telemetry.bind(self._scheduler)
        self._scheduler.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> GovernedFuture[T]:
        """Schedule ``fn(*args, **kwargs)`` as a governed execution; return its future."""
        return self._defaults.submit_to(self._scheduler, fn, args, kwargs)

    async def asubmit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``await`` the governed call's result; cancelling the await kills the call's tree."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def options(
        self,
        *,
        limits: Limits | None = None,
        retry_policy: RetryPolicy | None = None,
        priority: int | None = None,
        enforcement: Enforcement | str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        sandbox: Sandbox | bool | None = None,
    ) -> _CallOptions:
        """A view of this executor whose ``submit``/``map`` use other limits or priority:
        ``executor.options(limits=Limits(memory="2GiB"), priority=5).submit(fn, x)``. The
        limits it sets replace the pool's one by one; the others stay (``Limits.merged``)."""
        defaults = self._defaults
        if limits is not None and not isinstance(limits, Limits):
            raise ValueError(f"limits: expected a Limits, got {limits!r}")
        return _CallOptions(
            limits=defaults.limits.merged(limits) if limits is not None else defaults.limits,
            retry_policy=retry_policy if retry_policy is not None else defaults.retry_policy,
            priority=priority if priority is not None else defaults.priority,
            enforcement=enforcement if enforcement is not None else defaults.enforcement,
            env=env if env is not None else defaults.env,
            cwd=cwd if cwd is not None else defaults.cwd,
            sandbox=Sandbox.coerce(sandbox) if sandbox is not None else defaults.sandbox,
            executor=self,
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; with ``cancel_futures`` drop those not started and kill those running
        (their futures are cancelled), else run them all."""
        self._scheduler._shutdown(wait=wait, cancel_futures=cancel_futures)


class _CallOptions:
    """Options for some calls of a ``GovernedExecutor``; has ``submit`` and ``map``."""

    def __init__(
        self,
        *,
        limits: Limits,
        retry_policy: RetryPolicy,
        priority: int,
        enforcement: Enforcement | str,
        env: Mapping[str, str] | None,
        cwd: str | None,
        sandbox: Sandbox | None = None,
        executor: GovernedExecutor | None = None,
    ) -> None:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority: must be a whole number, got {priority!r}")
        if not isinstance(limits, Limits):
            raise ValueError(f"limits: expected a Limits, got {limits!r}")
        self.limits = limits
        self.retry_policy = retry_policy
        self.priority = priority
        self.enforcement = enforcement
        self.env = env
        self.cwd = cwd
        self.sandbox = sandbox
        self._executor = executor

    def submit_to(
        self, scheduler: Scheduler, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> GovernedFuture[T]:
        if not callable(fn):
            raise TypeError(f"fn: expected a callable, got {fn!r}")
        spec = ExecutionSpec(
            target=fn,
            args=args,
            kwargs=kwargs,
            limits=self.limits,
            enforcement=self.enforcement,
            env=self.env,
            cwd=self.cwd,
            sandbox=self.sandbox,
        )
        future: GovernedFuture[T] = GovernedFuture()
        run = scheduler._submit(spec, self.priority, self.retry_policy, _Call(future))
        future._stop = lambda: scheduler._cancel_call(run)
        return future

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> GovernedFuture[T]:
        """Like ``GovernedExecutor.submit``, with these options."""
        assert self._executor is not None
        return self.submit_to(self._executor._scheduler, fn, args, kwargs)

    async def asubmit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Like ``GovernedExecutor.asubmit``, with these options."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def map(self, fn: Callable[..., T], *iterables: Any, timeout: float | None = None) -> Iterator[T]:
        """Like ``Executor.map``, with these options."""
        assert self._executor is not None
        view = _View(self)
        return Executor.map(view, fn, *iterables, timeout=timeout)


class _View(Executor):
    """Adapts ``_CallOptions`` to ``Executor.map``, which needs only ``submit``."""

    def __init__(self, options: _CallOptions) -> None:
        self._options = options

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._options.submit(fn, *args, **kwargs)


class _Call:
    """The owner of one submitted call (``scheduling._work.Owner``): its future."""

    __slots__ = ("future",)

    def __init__(self, future: Future[Any]) -> None:
        self.future = future

    def cancelled(self) -> bool:
        return self.future.cancelled()

    def begin(self) -> bool:
        # A retry's future is running already; a first attempt's becomes so, unless cancelled.
        return self.future.running() or self.future.set_running_or_notify_cancel()

    def settle(self, record: Execution) -> None:
        _resolve(self.future, record)

    def abandon(self, last: Execution | None) -> None:
        """Cancelled if it never started, else settled with its last attempt's record (a
        running future cannot be cancelled)."""
        if self.future.done():
            return
        if self.future.running() and last is not None:
            _resolve(self.future, last)
        else:
            self.future.cancel()


def _resolve(future: Future[Any], record: Execution) -> None:
    """Settle a future from the final record of its call."""
    future.execution = record  # type: ignore[attr-defined]
    if future.done():
        return
    if record.outcome is Outcome.CANCELLED and future.cancel():  # killed at shutdown(cancel_futures)
        return
    if record.ok:
        future.set_result(record.result)
    elif record.error is not None and record.error.pickled is not None:
        future.set_exception(record.error.exception())
    else:
        future.set_exception(ExecutionFailed(record))
