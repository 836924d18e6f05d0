"""Host pressure with hysteresis: when admission should tighten, and by how much.

Readings are fractions in [0, 1] (PSI "some avg10" / 100, or a fallback where the kernel has
no PSI: the share of memory in use, the run queue beyond the CPUs).
Tightening starts when a reading reaches ``high`` and stops only once readings fall below
``low``, so admission does not flap around a single threshold. While engaged, the pressure
handed to the admission policy is the reading itself; otherwise 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies._units import finite_number


@dataclass(frozen=True, slots=True)
class Pressure:
    """Host pressure on each resource, in [0, 1]: memory tightens the memory budget, cpu the
    cpu budget."""

    memory: float = 0.0
    cpu: float = 0.0


class PressureGate:
    """Turns raw pressure readings into the pressure admission acts on (see module docstring)."""

    def __init__(self, *, high: float = 0.2, low: float = 0.1) -> None:
        self.high = finite_number("high", high)
        self.low = finite_number("low", low)
        if not 0.0 <= self.low < self.high <= 1.0:
            raise ValueError(f"low, high: need 0 <= low < high <= 1, got low={low!r}, high={high!r}")
        self.engaged = False

    def update(self, reading: float) -> float:
        """Feed one reading; returns the pressure to tighten admission by (0 when not engaged)."""
        value = min(max(finite_number("reading", reading), 0.0), 1.0)
        if self.engaged and value < self.low:
            self.engaged = False
        elif not self.engaged and value >= self.high:
            self.engaged = True
        return value if self.engaged else 0.0
