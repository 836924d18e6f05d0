"""``governor.run`` and ``governor.arun``: one governed execution, here (``runner.run``) or on a
Dask cluster; awaited in asyncio."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from governor.backends import resolve_backend
from policies import Limits
from runner import Execution, ExecutionHandle, ExecutionSpec, adrive, drive
from runner import run as run_locally


def run(
    target: Callable[..., Any] | Sequence[str],
    *args: Any,
    limits: Limits | None = None,
    backend: object = "local",
    **options: Any,
) -> Execution:
    """Run ``target(*args)`` (or the argv list ``target``) isolated; return its record.

    ``options`` are ``ExecutionSpec`` fields (``enforcement``, ``env``, ``cwd``, ``capture``,
    ``sample_interval``, ``kill_grace``, ...) plus ``kwargs`` for the callable's keyword
    arguments and ``fork_server``. ``backend`` is ``"local"`` (a child of this process) or a
    ``distributed.Client``: then the same governed execution runs on a Dask worker and its
    record comes back (``lost`` if the worker dies meanwhile). A ``KeyboardInterrupt`` while
    waiting cancels the execution, waits for its record, and propagates.
    """
    if backend is None or backend == "local":
        return run_locally(target, *args, limits=limits, **options)
    for local_only in ("fork_server", "stdin", "on_output"):
        if options.get(local_only) is not None:
            raise ValueError(f"{local_only}: only the local backend takes it")
    spec = ExecutionSpec(target=target, args=args, limits=limits or Limits(), **options)
    chosen = resolve_backend(backend)
    try:
        return drive(chosen.start(spec, need=None, priority=0))  # a Dask handle, driven here
    finally:
        chosen.close()


async def arun(
    target: Callable[..., Any] | Sequence[str],
    *args: Any,
    limits: Limits | None = None,
    **options: Any,
) -> Execution:
    """``run`` for asyncio: ``record = await governor.arun(f, x, limits=...)``. The child is
    watched by the running event loop (nothing blocks it), and cancelling the await (a
    timeout, a task group) kills the whole tree before the ``CancelledError`` goes on. Local
    only; the options are ``run``'s."""
    if options.get("backend", "local") not in (None, "local"):
        raise ValueError("backend: arun runs locally; await run_in_executor(governor.run, ...) for Dask")
    options.pop("backend", None)
    fork_server = options.pop("fork_server", None)
    spec = ExecutionSpec(target=target, args=args, limits=limits or Limits(), **options)
    return await adrive(ExecutionHandle(spec, fork_server=fork_server))
