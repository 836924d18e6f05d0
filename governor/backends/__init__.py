"""Where executions run: this machine (``local``, the default) or a Dask cluster (``dask``).

A backend (``governor.abc.Backend``) turns an ``ExecutionSpec`` into a started ``Handle`` that
the scheduler's loop drives like a local one. ``dask`` and ``dask_worker`` need the optional
``distributed`` package and are imported only when a cluster is asked for.
"""

from __future__ import annotations

from governor.abc import Backend
from governor.backends.local import LocalBackend
from runner import ForkServer

__all__ = ["LocalBackend", "resolve_backend"]


def resolve_backend(backend: object, fork_server: ForkServer | None = None) -> Backend:
    """``"local"`` (or ``None``), a ``distributed.Client``, or a ready ``Backend``."""
    if backend is None or backend == "local":
        return LocalBackend(fork_server)
    if type(backend).__module__.split(".")[0] == "distributed":
        from governor.backends.dask import DaskBackend  # the optional extra: imported only when asked for

        return DaskBackend(backend)
    if callable(getattr(backend, "start", None)) and callable(getattr(backend, "close", None)):
        return backend  # type: ignore[return-value]
    raise ValueError(f"backend: must be 'local' or a distributed.Client, got {backend!r}")
