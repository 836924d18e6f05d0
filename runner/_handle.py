"""``Handle``: what every started execution offers the loop that drives it.

A local ``ExecutionHandle`` (a child of this host's fork server) and a Dask backend's handle
(a child on a worker) both keep this protocol, so one loop, ``runner.drive`` or the
scheduler's, supervises either without knowing which it has:

    while not handle.done:
        poll(handle.fds(), timeout=handle.deadline() - now)   # block until something is due
        for fd in ready: handle.on_readable(fd)               # consume what arrived
        handle.on_time()                                      # sample, enforce, kill, finish
    handle.execution                                          # the record

Nothing in it blocks. ``cancel()`` asks for the whole tree to be stopped; the record then
follows through the same calls.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from runner._confinement import Reading
    from runner._records import Execution
    from runner._spec import ExecutionSpec


class Handle(Protocol):
    """A started execution, driven by its owner's loop (see the module docstring)."""

    id: str  # the execution's id, also the name of its cgroups
    spec: ExecutionSpec
    execution: Execution | None  # the record, once ``done``
    pid: int | None  # the child's pid (on its own host)
    pid_start_ticks: int | None  # with ``pid``: names the child across pid reuse (None elsewhere)

    @property
    def cgroups(self) -> list[str]:
        """The cgroup directories of this execution on this host (empty without any)."""
        ...

    @property
    def started_at(self) -> datetime:
        """When the child started (UTC)."""
        ...

    @property
    def last_reading(self) -> Reading | None:
        """The latest usage sample of the tree, or ``None`` (none yet, or none sent here)."""
        ...

    @property
    def started(self) -> bool:
        """True once the child exists (``pid`` and ``started_at`` say which and when), or once
        the start has failed; a local child is forked asynchronously, after the handle exists."""
        ...

    @property
    def done(self) -> bool:
        """True once ``execution`` holds the record."""
        ...

    def fds(self) -> list[int]:
        """Descriptors to wait on for reading."""
        ...

    def deadline(self) -> float | None:
        """The monotonic time by which ``on_time`` must be called, or ``None``."""
        ...

    def on_readable(self, fd: int) -> None:
        """Consume what ``fd`` has to give."""
        ...

    def on_time(self, now: float | None = None) -> None:
        """Advance to ``now`` (monotonic): sampling, limits, the kill protocol, the record."""
        ...

    def cancel(self) -> None:
        """Stop the execution (its whole tree); its outcome becomes ``cancelled``."""
        ...

    def __hash__(self) -> int:  # handles are identities: their owner keys its state by them
        ...
