"""``ReadyQueue``: the order in which ready executions start, with aging so nothing starves.

An item's effective priority at time ``now`` is::

    priority + urgency + aging_per_second * (now - enqueued_at)

and the highest runs first, ties in arrival order. Every item ages at the same rate, so the
difference between two items' effective priorities never changes with ``now``: ordering by
``priority + urgency - aging_per_second * enqueued_at`` gives the same order at every instant.
That makes a plain binary heap correct, with no re-sorting as time passes; ``now`` is needed
only to report an item's effective priority.

The starvation bound follows: an item A is popped before any item B enqueued later than
``A.enqueued_at + (B.priority + B.urgency - A.priority - A.urgency) / aging_per_second``.

Removal is lazy (trio's deadline heap does the same): a removed entry stays in the heap,
marked dead, and is skipped when it reaches the top; the heap is rebuilt when dead entries
outnumber live ones so that churn cannot grow it without bound.
"""

from __future__ import annotations

import heapq
from typing import Any, Generic, TypeVar

from policies._units import finite_number

T = TypeVar("T")

# Stands in for the item of a removed heap entry.
_DEAD: Any = object()


class _Entry(Generic[T]):
    __slots__ = ("enqueued_at", "item", "key", "priority", "sequence", "urgency")

    def __init__(
        self, item: T, priority: int, urgency: float, enqueued_at: float, key: float, sequence: int
    ) -> None:
        self.item = item
        self.priority = priority
        self.urgency = urgency
        self.enqueued_at = enqueued_at
        self.key = key
        self.sequence = sequence

    def __lt__(self, other: _Entry[T]) -> bool:
        # Smaller key first (the key is the negated time-invariant priority), then FIFO.
        return (self.key, self.sequence) < (other.key, other.sequence)


class ReadyQueue(Generic[T]):
    """Ready executions ordered by effective priority, highest first, ties first-in first-out.

    ``aging_per_second`` (>= 0) is how much an item's priority rises per second of waiting;
    with ``0`` the order is priority, then urgency, then arrival. Items are opaque and are
    identified by identity; an item can be queued once at a time. Times are monotonic seconds
    passed in by the caller (the queue never reads a clock).
    """

    __slots__ = ("_aging", "_dead", "_entries", "_heap", "_sequence")

    def __init__(self, aging_per_second: float = 0.0) -> None:
        rate = finite_number("aging_per_second", aging_per_second)
        if rate < 0:
            raise ValueError(f"aging_per_second: must not be negative, got {aging_per_second!r}")
        self._aging = rate
        self._heap: list[_Entry[T]] = []
        self._entries: dict[int, _Entry[T]] = {}  # id(item) -> its live entry
        self._dead = 0
        self._sequence = 0

    @property
    def aging_per_second(self) -> float:
        """Priority gained per second of waiting."""
        return self._aging

    def push(self, item: T, priority: int, enqueued_at: float, urgency: float = 0.0) -> None:
        """Queue ``item`` with a whole-number ``priority`` (higher runs sooner), the monotonic
        time it became ready, and an ``urgency`` boost (e.g. from an event). Raises
        ``ValueError`` if the item is already queued or a number is invalid."""
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority: expected a whole number, got {priority!r}")
        boost = finite_number("urgency", urgency)
        ready_at = finite_number("enqueued_at", enqueued_at)
        if id(item) in self._entries:
            raise ValueError(f"item: already queued: {item!r}")
        key = -(priority + boost - self._aging * ready_at)
        entry = _Entry(item, priority, boost, ready_at, key, self._sequence)
        self._sequence += 1
        self._entries[id(item)] = entry
        heapq.heappush(self._heap, entry)

    def pop(self) -> T:
        """Remove and return the item with the highest effective priority.
        Raises ``IndexError`` when the queue is empty."""
        self._drop_dead_head()
        if not self._heap:
            raise IndexError("pop from an empty ReadyQueue")
        entry = heapq.heappop(self._heap)
        del self._entries[id(entry.item)]
        return entry.item

    def take(self) -> tuple[T, object] | None:
        """Remove the item ``pop`` would return, with a token for ``put_back``; ``None`` when
        empty. Taking items one by one walks the queue in order at O(log n) a step, so a
        caller can look at the head without sorting the rest."""
        self._drop_dead_head()
        if not self._heap:
            return None
        entry = heapq.heappop(self._heap)
        del self._entries[id(entry.item)]
        return entry.item, entry

    def put_back(self, token: object) -> None:
        """Return a taken item to exactly its old place (its key and its arrival order)."""
        if not isinstance(token, _Entry):
            raise TypeError(f"token: expected what take() returned, got {token!r}")
        if id(token.item) in self._entries:
            raise ValueError(f"item: already queued: {token.item!r}")
        self._entries[id(token.item)] = token
        heapq.heappush(self._heap, token)

    def peek(self) -> T | None:
        """The item ``pop`` would return, left in place; ``None`` when empty."""
        self._drop_dead_head()
        return self._heap[0].item if self._heap else None

    def remove(self, item: T) -> bool:
        """Take ``item`` (matched by identity) out of the queue; False if it was not queued."""
        entry = self._entries.pop(id(item), None)
        if entry is None:
            return False
        entry.item = _DEAD
        self._dead += 1
        if self._dead > len(self._entries):
            self._heap = [e for e in self._heap if e.item is not _DEAD]
            heapq.heapify(self._heap)
            self._dead = 0
        return True

    def ordered(self, limit: int | None = None) -> list[T]:
        """The queued items in the order ``pop`` would return them (the queue is unchanged);
        only the first ``limit`` of them if given."""
        if limit is not None and limit < len(self._entries):
            return [entry.item for entry in heapq.nsmallest(limit, self._entries.values())]
        return [entry.item for entry in sorted(self._entries.values())]

    def effective_priority(self, item: T, now: float) -> float:
        """``item``'s effective priority at monotonic time ``now``; ``KeyError`` if not queued."""
        entry = self._entries.get(id(item))
        if entry is None:
            raise KeyError(item)
        return entry.priority + entry.urgency + self._aging * (now - entry.enqueued_at)

    def __contains__(self, item: object) -> bool:
        return id(item) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ReadyQueue(aging_per_second={self._aging:g}, queued={len(self)})"

    def _drop_dead_head(self) -> None:
        while self._heap and self._heap[0].item is _DEAD:
            heapq.heappop(self._heap)
            self._dead -= 1
