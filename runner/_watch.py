"""When to look at a tree's memory next, where no kernel holds it to its limit.

Without a cgroup the supervisor sees a tree's memory only when it samples it, so a breach is
seen late by however much the tree grew since the last look. A fixed interval lets a fast
hog run far past its limit (a 100 ms interval let one reach 336 MiB under 200 MiB). So the
watch looks again sooner the closer the tree is to its limit at the rate it was last seen
growing: after half the time the remaining headroom would last, never sooner than
``FLOOR`` and never later than the execution's sample interval. A tree that stops growing
is looked at less and less often (the gap at most doubles from one look to the next).

``bound`` is what the record states: how far past the limit the tree could have gone before
a look saw it, had it kept the pace it was last seen growing at: at each look, how far that
pace would carry it past the limit before the next (only a gap held at ``FLOOR`` lets it), the
excess a look actually saw, and, once the true peak is known, that peak's excess. A spike that
rises and falls between two looks is invisible to any sampler; the true peak (``ru_maxrss``
of the top process) is how the bound still covers one in the top process.
"""

from __future__ import annotations

FLOOR = 0.001  # seconds: the shortest gap between two looks
FIRST = 0.005  # seconds from the fork to the first look


class MemoryWatch:
    """The looks at one execution's memory: when the next is due, and the bound they give."""

    __slots__ = ("_ceiling", "_gap", "_last_at", "_last_used", "bound", "due", "limit")

    def __init__(self, limit: int, ceiling: float, start: float) -> None:
        self.limit = limit
        self._ceiling = max(ceiling, FLOOR)
        self._gap = min(FIRST, self._ceiling)
        self._last_at = start
        self._last_used = 0
        self.bound = 0
        self.due = start + self._gap

    def seen(self, now: float, used: int) -> float:
        """Take one look (``used`` bytes at ``now``); returns when the next is due."""
        growth = used - self._last_used
        elapsed = now - self._last_at
        self._last_at, self._last_used = now, used
        headroom = self.limit - used
        rate = growth / elapsed if growth > 0 and elapsed > 0 else 0.0
        if headroom <= 0:
            gap = FLOOR  # over: the caller kills; until then keep looking closely
        elif rate > 0:
            gap = headroom / rate / 2
        else:
            gap = self._ceiling
        self._gap = min(max(gap, FLOOR), self._ceiling, self._gap * 2)
        self.bound = max(self.bound, -headroom, int(rate * self._gap) - headroom)
        self.due = now + self._gap
        return self.due

    def bound_with(self, true_peak: int) -> int:
        """The bound, counting a true peak the looks may have missed."""
        return max(self.bound, true_peak - self.limit)
