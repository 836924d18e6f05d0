"""Pressure stall information (PSI): how long tasks waited for a resource, as the kernel counts.

The first line of a pressure file is ``some avg10=... avg60=... avg300=... total=<µs>``:
``total`` is the time some task of the group waited for the resource (a CPU, memory being
reclaimed or paged in, I/O) since the group began. The host's files are
``/proc/pressure/<resource>``; a cgroup v2 group's, ``<cgroup>/<resource>.pressure``. A kernel
with PSI off (Debian's default without ``psi=1``) has no such files or refuses to read them,
and then nothing is reported rather than a zero.
"""

from __future__ import annotations

import os

RESOURCES = ("cpu", "memory", "io")
HOST = "/proc/pressure"


def some_seconds(path: str) -> float | None:
    """The ``some`` total of one pressure file, in seconds, or ``None`` if it cannot be read."""
    try:
        with open(path) as pressure:
            fields = pressure.readline().split()
    except OSError:
        return None
    total = next((field for field in fields if field.startswith("total=")), None)
    if fields[:1] != ["some"] or total is None:
        return None
    return int(total.removeprefix("total=")) / 1e6


def stall_totals(
    group: str, resources: tuple[str, ...] = RESOURCES, suffix: str = ".pressure"
) -> dict[str, float]:
    """The ``some`` totals of a group by resource, in seconds: a v2 cgroup's directory, or the
    host's (``HOST``, whose files have no ``suffix``). Resources the kernel does not report
    are left out."""
    totals = {}
    for resource in resources:
        seconds = some_seconds(os.path.join(group, resource + suffix))
        if seconds is not None:
            totals[resource] = seconds
    return totals
