"""CPU rate without cgroups: stop and continue the tree so its average rate stays at ``rate``.

A token bucket over measured CPU: after each check, CPU used beyond ``rate x elapsed`` is debt,
and the tree stays stopped for ``debt / rate`` seconds. With checks every 100 ms this holds a
busy loop to within a few percent of the rate at a negligible supervisor cost; periods much
shorter than that are unreliable (signal delivery and scheduling jitter dominate).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class DutyCycle:
    """Decides, from readings of cumulative CPU seconds, when to stop and when to continue."""

    rate: float
    period: float = 0.1
    stopped_until: float | None = None
    stopped_seconds: float = 0.0  # time the tree has been held stopped so far
    _last_time: float | None = None
    _last_cpu: float = 0.0
    _debt: float = 0.0

    def update(self, now: float, cpu_seconds: float) -> str | None:
        """Return ``"stop"``, ``"continue"`` or ``None`` (leave it as it is)."""
        if self.stopped_until is not None:
            if now < self.stopped_until:
                return None
            self.stopped_until = None
            self._last_time, self._last_cpu = now, cpu_seconds
            return "continue"
        if self._last_time is None:
            self._last_time, self._last_cpu = now, cpu_seconds
            return None
        used = cpu_seconds - self._last_cpu
        allowed = self.rate * (now - self._last_time)
        self._debt = max(0.0, self._debt + used - allowed)
        self._last_time, self._last_cpu = now, cpu_seconds
        if self._debt <= 0:
            return None
        pause = self._debt / self.rate
        self._debt = 0.0
        self.stopped_until = now + pause
        self.stopped_seconds += pause
        return "stop"

    def next_check(self, now: float) -> float:
        """When the supervisor should call ``update`` next."""
        return self.stopped_until if self.stopped_until is not None else now + self.period
