"""Where executions run: this machine (the default) or elsewhere (a Dask cluster).

A backend turns an ``ExecutionSpec`` into a started handle that the scheduler's loop drives
like a local ``ExecutionHandle``: ``fds()`` to poll, ``deadline()``, ``on_readable(fd)``,
``on_time()``, ``cancel()``, ``done`` and then ``execution`` (the record), plus ``id``,
``pid``, ``pid_start_ticks``, ``cgroups``, ``started_at``, ``last_reading`` and ``spec``.
The scheduler keeps every decision (when, in what order, with what limits, whether to
retry); the backend only decides where the child process lives.
"""

from __future__ import annotations

from typing import Any, Protocol

from policies import Need
from runner import ExecutionHandle, ExecutionSpec, ForkServer


class Backend(Protocol):
    """Starts executions for a scheduler (see the module docstring)."""

    def start(self, spec: ExecutionSpec, *, need: Need | None, priority: int) -> Any:
        """Start ``spec``; return a handle (may already be ``done`` if it could not start).
        ``need`` is its admission estimate (a placement claim), ``priority`` its priority."""
        ...

    def close(self) -> None:
        """Release what the backend holds (the scheduler has stopped)."""
        ...


class LocalBackend:
    """Children of this process, forked by the zygote fork server."""

    def __init__(self, fork_server: ForkServer | None = None) -> None:
        self.fork_server = fork_server

    def start(self, spec: ExecutionSpec, *, need: Need | None, priority: int) -> ExecutionHandle:
        return ExecutionHandle(spec, fork_server=self.fork_server)

    def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return "LocalBackend()"


def resolve_backend(backend: object, fork_server: ForkServer | None = None) -> Backend:
    """``"local"`` (or ``None``), a ``distributed.Client``, or a ready ``Backend``."""
    if backend is None or backend == "local":
        return LocalBackend(fork_server)
    if type(backend).__module__.split(".")[0] == "distributed":
        from governor._dask import DaskBackend  # the optional extra: imported only when asked for

        return DaskBackend(backend)
    if callable(getattr(backend, "start", None)) and callable(getattr(backend, "close", None)):
        return backend  # type: ignore[return-value]
    raise ValueError(f"backend: must be 'local' or a distributed.Client, got {backend!r}")
