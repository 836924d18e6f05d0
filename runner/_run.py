"""``run``: drive one execution handle to its end, blocking the calling thread."""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Sequence
from typing import Any

from policies import Limits
from runner._execution import ExecutionHandle
from runner._forkserver import ForkServer
from runner._records import Execution
from runner._spec import ExecutionSpec

CANCEL_CHECK = 0.1  # seconds: how often drive() asks cancel_requested when nothing else wakes it


def run_spec(
    spec: ExecutionSpec,
    *,
    fork_server: ForkServer | None = None,
    raise_interrupt: bool = True,
    cancel_requested: Callable[[], bool] | None = None,
) -> Execution:
    """Run ``spec`` in a fresh child and return its record.

    A ``KeyboardInterrupt`` while waiting cancels the execution (TERM, grace, KILL) and waits
    for the tree to be gone; then it propagates, or with ``raise_interrupt=False`` the
    ``cancelled`` record is returned. ``cancel_requested`` is asked after every wake-up (at
    least every ``sample_interval``): a signal handler can set a flag instead of raising.
    """
    handle = ExecutionHandle(spec, fork_server=fork_server)
    return drive(handle, raise_interrupt=raise_interrupt, cancel_requested=cancel_requested)


def drive(
    handle: Any,
    *,
    raise_interrupt: bool = True,
    cancel_requested: Callable[[], bool] | None = None,
) -> Execution:
    """Drive one started handle to its end in this thread; return its record.

    Any handle that keeps the ``ExecutionHandle`` protocol (``fds``, ``deadline``,
    ``on_readable``, ``on_time``, ``cancel``, ``done``, ``execution``) will do: a local one, or
    another backend's. Interrupts and ``cancel_requested`` as in ``run_spec``.
    """
    interrupted: BaseException | None = None
    poller = select.poll()
    registered: set[int] = set()
    # A signal handler's flag is seen only when poll returns: then wake at least this often.
    bound = CANCEL_CHECK if cancel_requested is not None else None
    while not handle.done:
        try:
            _wait(handle, poller, registered, bound)
            if cancel_requested is not None and cancel_requested():
                handle.cancel()
        except KeyboardInterrupt as interrupt:
            # Whatever step it cut short is safe to repeat: the loop carries on to the end.
            interrupted = interrupted or interrupt
            handle.cancel()
    assert handle.execution is not None
    if interrupted is not None and raise_interrupt:
        raise interrupted
    record: Execution = handle.execution
    return record


async def adrive(handle: Any) -> Execution:
    """``drive`` for asyncio: the handle's descriptors are watched by the running loop, its
    deadlines are the loop's timers, and nothing blocks the loop. Cancelling the awaiting task
    (``asyncio.wait_for``'s timeout, a task group's cancel) cancels the execution: the kill
    protocol runs to its end (the tree is gone) before the ``CancelledError`` goes on."""
    import asyncio  # here: the command line, which never awaits, need not import it

    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    watched: set[int] = set()

    def readable(fd: int) -> None:
        handle.on_readable(fd)
        woken.set()

    cancelled: asyncio.CancelledError | None = None
    try:
        while not handle.done:
            fds = set(handle.fds())
            for fd in watched - fds:
                loop.remove_reader(fd)
            for fd in fds - watched:
                loop.add_reader(fd, readable, fd)
            watched = fds
            deadline = handle.deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    await woken.wait()
            except TimeoutError:
                pass
            except asyncio.CancelledError as error:
                if cancelled is None:  # the first request cancels; the tree's end is waited for
                    cancelled = error
                    handle.cancel()
            woken.clear()
            handle.on_time()
    finally:
        for fd in watched:
            loop.remove_reader(fd)
    if cancelled is not None:
        raise cancelled
    record: Execution = handle.execution
    return record


def _wait(handle: Any, poller: select.poll, registered: set[int], bound: float | None) -> None:
    fds = set(handle.fds())
    for fd in registered - fds:
        poller.unregister(fd)
    for fd in fds - registered:
        poller.register(fd, select.POLLIN)
    registered.clear()
    registered.update(fds)
    deadline = handle.deadline()
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    if bound is not None:
        timeout = bound if timeout is None else min(timeout, bound)
    for fd, _events in poller.poll(None if timeout is None else int(timeout * 1000) + 1):
        handle.on_readable(fd)
    handle.on_time()


def run(
    target: Callable[..., Any] | Sequence[str],
    *args: Any,
    limits: Limits | None = None,
    **options: Any,
) -> Execution:
    """Run ``target(*args)`` (or the argv list ``target``) isolated; return its record.

    ``options`` are ``ExecutionSpec`` fields (``enforcement``, ``env``, ``cwd``, ``capture``,
    ``sample_interval``, ``kill_grace``, ...) plus ``kwargs`` for the callable's keyword
    arguments and ``fork_server``.
    """
    fork_server = options.pop("fork_server", None)
    spec = ExecutionSpec(target=target, args=args, limits=limits or Limits(), **options)
    return run_spec(spec, fork_server=fork_server)
