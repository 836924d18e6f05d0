"""Deadlock guards that stretch with the host's speed.

A guard only bounds how long a hung test takes to fail; it must never fail a correct test on a
slow host (the cgroup v2 VM runs under emulation, tens of times slower than the machine this
suite is written on). So every guard is written ``guard(seconds on this machine)`` and is
multiplied by how much slower this host runs a fixed piece of Python, measured once per
process, at import, in about 5 ms (cheap enough for a child that imports a test module to
unpickle a function), and by the load average per core where it is above 1.
``GOVERNOR_TEST_SLOWNESS`` gives the factor instead.
"""

from __future__ import annotations

import os
import time

_NOMINAL_SECONDS = 0.002  # the probe's best time on the 2-core development machine


def _slowness() -> float:
    given = os.environ.get("GOVERNOR_TEST_SLOWNESS")
    if given:
        return float(given)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        sum(range(100_000))
        best = min(best, time.perf_counter() - started)
    # The best of three measures the host's speed, not how busy it is: a host with more work
    # than cores gives each process its share of one, and the guards stretch as much.
    contention = max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    return min(100.0, max(1.0, best / _NOMINAL_SECONDS) * contention)


SLOWNESS = _slowness()


def guard(seconds: float) -> float:
    """A deadlock guard of ``seconds`` on the development machine, stretched to this host."""
    return seconds * SLOWNESS


def repeats(times: int) -> int:
    """How often to repeat a check for a race: ``times`` here, fewer on a slower host, where
    each try takes longer and widens the window it samples (at least three)."""
    return max(3, round(times / SLOWNESS))
