"""Time for the scheduler: real, or fake and driven by a test.

Schedule logic (trigger fire times, retry delays) reads this clock; supervising a running
child (sampling, kill grace) always uses the real monotonic clock. A ``FakeClock`` only moves
when ``advance`` is called, and wakes the schedulers that use it, so schedule tests are
instant and exact (trio's MockClock is the model).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


class SystemClock:
    """The real wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def subscribe(self, wake: Callable[[], None]) -> None:
        return None


class FakeClock:
    """A clock that stands still until ``advance`` moves it; for tests of schedule logic."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError(f"start: must be timezone-aware, got {self._now!r}")
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def subscribe(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(wake)

    def advance(self, seconds: float | timedelta) -> datetime:
        """Move time forward and wake every subscriber; returns the new time."""
        step = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        if step < timedelta(0):
            raise ValueError(f"seconds: time only moves forward, got {seconds!r}")
        with self._lock:
            self._now += step
            listeners = list(self._listeners)
            now = self._now
        for wake in listeners:
            wake()
        return now
