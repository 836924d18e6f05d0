"""Supervising the running handles: the loop's one blocking point.

One ``poll`` waits on the wake-up pipe (commands, fake clocks) and every running handle's
descriptors, with a timeout the loop computes from every deadline it has. What woke it is
handed to its handle: a readable descriptor to ``on_readable``, a handle's own deadline
(sample, grace, kill pass) to ``on_time``. Only the handles that something happened to are
touched, and their registrations and deadlines refreshed, so a turn costs what happened in
it, not the number of running executions; handles sampled at one interval share their ticks
(``runner``), so fifty of them wake the loop once per tick, not fifty times.
"""

from __future__ import annotations

import heapq
import itertools
import select
import time

from governor.scheduling._work import Run
from runner._wire import Wakeup


class Supervision:
    """The running handles' descriptors and deadlines (see the module docstring)."""

    def __init__(self, wakeup: Wakeup) -> None:
        self._wakeup = wakeup
        self._poll = select.poll()
        self._poll.register(wakeup.fileno(), select.POLLIN)
        self._owner: dict[int, Run] = {}  # fd -> run
        self._fds: dict[Run, frozenset[int]] = {}
        self._deadlines: list[tuple[float, int, Run]] = []
        self._current: dict[Run, float | None] = {}  # run -> its live deadline (heap entries may be stale)
        self._sequence = itertools.count()
        self._touched: set[Run] = set()

    def add(self, run: Run) -> None:
        """Watch a run that has just started."""
        self._fds[run] = frozenset()
        self._refresh(run)

    def touch(self, run: Run) -> None:
        """Something changed the run from outside (it was cancelled): look at it this turn."""
        self._touched.add(run)

    def next_deadline(self) -> float | None:
        """The earliest monotonic deadline of any running handle, or ``None``."""
        heap = self._deadlines
        while heap and self._current.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # stale: the run ended, or its deadline moved
        if self._touched:
            return time.monotonic()
        return heap[0][0] if heap else None

    def wait(self, timeout: float | None) -> tuple[list[Run], list[Run]]:
        """Block up to ``timeout`` seconds (``None``: until woken), hand every event to its
        handle, and return the runs whose child has just come to exist, and those whose handle
        is done."""
        touched, self._touched = self._touched, set()
        woken: set[Run] = set(touched)  # what may have changed its descriptors
        milliseconds = None if timeout is None else max(0, int(timeout * 1000) + 1)
        if touched:
            milliseconds = 0
        for fd, _events in self._poll.poll(milliseconds):
            run = self._owner.get(fd)
            if run is None:
                self._wakeup.clear()
                continue
            assert run.handle is not None
            run.handle.on_readable(fd)
            touched.add(run)
            woken.add(run)
        now = time.monotonic()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            when, _sequence, run = heapq.heappop(heap)
            if self._current.get(run) == when:
                touched.add(run)
        started, ended = [], []
        for run in touched:
            if run not in self._fds:
                continue  # ended already
            handle = run.handle
            assert handle is not None
            handle.on_time(now)
            if not run.announced and handle.started:
                run.announced = True
                started.append(run)
            if handle.done:
                self._forget(run)
                ended.append(run)
            else:
                # A handle that was only due (a sample, a kill pass) keeps its descriptors:
                # they change when something is read, or when it is done.
                self._refresh(run, descriptors=run in woken)
        return started, ended

    def running(self) -> int:
        return len(self._fds)

    def _refresh(self, run: Run, descriptors: bool = True) -> None:
        handle = run.handle
        assert handle is not None
        registered = self._fds[run]
        wanted = frozenset(handle.fds()) if descriptors else registered
        if wanted != registered:
            for fd in registered - wanted:
                self._unwatch(fd, run)
            for fd in wanted - registered:
                self._poll.register(fd, select.POLLIN)
                self._owner[fd] = run
            self._fds[run] = wanted
        deadline = handle.deadline()
        if self._current.get(run) != deadline:
            self._current[run] = deadline
            if deadline is not None:
                heapq.heappush(self._deadlines, (deadline, next(self._sequence), run))

    def _forget(self, run: Run) -> None:
        for fd in self._fds.pop(run, ()):
            self._unwatch(fd, run)
        self._current.pop(run, None)

    def _unwatch(self, fd: int, run: Run) -> None:
        """Stop watching ``fd`` for ``run``, unless the number is another run's by now: a
        handle closes a descriptor while it reads (a pidfd, once the status came), and the
        next reply read in the same turn (another child's pidfd) may be given that number."""
        if self._owner.get(fd) is run:
            self._poll.unregister(fd)
            del self._owner[fd]
