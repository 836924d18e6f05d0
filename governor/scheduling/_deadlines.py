"""``Deadlines``: what is due when (trigger fires, retry delays), in one heap (after trio's).

``add(when, item)`` returns the entry; ``discard(entry)`` marks it stale, and stale entries
are dropped lazily when they reach the top ("this entry is stale; discard it and try
again"), or all at once when they outnumber the live ones, so churn cannot grow the heap
without bound. ``next_deadline()`` is what the loop sleeps until; ``expire(now)`` hands back,
in time order, every item due by ``now``.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from datetime import datetime
from typing import Generic, TypeVar

T = TypeVar("T")


class Entry(Generic[T]):
    """One pending deadline; ``live`` until it expires or is discarded."""

    __slots__ = ("item", "live", "sequence", "when")

    def __init__(self, when: datetime, sequence: int, item: T) -> None:
        self.when = when
        self.sequence = sequence
        self.item = item
        self.live = True

    def __lt__(self, other: Entry[T]) -> bool:
        return (self.when, self.sequence) < (other.when, other.sequence)


class Deadlines(Generic[T]):
    """A heap of deadlines with lazy deletion (see the module docstring)."""

    def __init__(self) -> None:
        self._heap: list[Entry[T]] = []
        self._sequence = itertools.count()
        self._live = 0

    def add(self, when: datetime, item: T) -> Entry[T]:
        """Make ``item`` due at ``when``; ties come out in the order they were added."""
        entry = Entry(when, next(self._sequence), item)
        heapq.heappush(self._heap, entry)
        self._live += 1
        return entry

    def discard(self, entry: Entry[T]) -> None:
        """Forget ``entry`` (a no-op if it has expired or was discarded already)."""
        if not entry.live:
            return
        entry.live = False
        self._live -= 1
        if len(self._heap) > 2 * self._live + 16:  # mostly stale: rebuild from the live ones
            self._heap = [kept for kept in self._heap if kept.live]
            heapq.heapify(self._heap)

    def next_deadline(self) -> datetime | None:
        """The earliest live deadline, or ``None``."""
        self._drop_stale()
        return self._heap[0].when if self._heap else None

    def expire(self, now: datetime) -> Iterator[T]:
        """Take out and yield, earliest first, every item due at or before ``now``. Items the
        caller adds meanwhile are yielded too if they are due."""
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0].when > now:
                return
            entry = heapq.heappop(self._heap)
            entry.live = False
            self._live -= 1
            yield entry.item

    def items(self) -> list[T]:
        """Every live item, in no particular order."""
        return [entry.item for entry in self._heap if entry.live]

    def clear(self) -> None:
        """Forget everything."""
        for entry in self._heap:
            entry.live = False
        self._heap.clear()
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap and not heap[0].live:
            heapq.heappop(heap)
