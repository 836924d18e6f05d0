"""Admission: which queued executions may start now, given a resource budget.

The queue is in priority order (``ReadyQueue.ordered()``). Its head starts when a slot is free
and its estimated need fits what the budget has left: the budget minus, for every running
execution, the larger of its estimate and what it measures now (it may still grow to its
estimate, and a run past its estimate holds what it holds). Host pressure tightens the
budget. A head that does not fit reserves its place; others may *backfill* only when they
cannot delay it (EASY backfilling): they fit now and either end, by their expected duration,
before the head could start (the "shadow" time, when enough running work will have ended),
or fit in what will still be spare once the head has started then.

A need larger than the whole budget can never fit; such an execution runs alone, when
nothing else runs, rather than waiting for ever. Pure: time and measurements are passed in.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from policies._pressure import Pressure
from policies._units import finite_number, format_duration, format_size


@dataclass(frozen=True, slots=True)
class Budget:
    """What the governor may hand out: bytes of memory and cores (``None``: unbounded)."""

    memory_bytes: int | None = None
    cpu_cores: float | None = None

    def tightened(self, pressure: Pressure | float, strength: float) -> Budget:
        """The budget scaled down by host pressure in [0, 1] (``strength`` 1 halves it at 0.5):
        memory by memory pressure, cores by cpu pressure (a plain number: both)."""
        if not isinstance(pressure, Pressure):
            pressure = Pressure(pressure, pressure)

        def factor(value: float) -> float:
            return max(0.0, 1.0 - strength * min(max(value, 0.0), 1.0))

        memory = None if self.memory_bytes is None else int(self.memory_bytes * factor(pressure.memory))
        cores = None if self.cpu_cores is None else self.cpu_cores * factor(pressure.cpu)
        return Budget(memory, cores)


@dataclass(frozen=True, slots=True)
class Need:
    """An execution's expected need (``None`` parts are not counted)."""

    memory_bytes: int | None = None
    cpu_cores: float | None = None


@dataclass(frozen=True, slots=True)
class RunningWork:
    """A running execution, as admission sees it."""

    key: Hashable
    need: Need  # its estimate
    memory_bytes: int = 0  # measured now
    cpu_cores: float = 0.0  # measured now
    expected_end: float | None = None  # monotonic seconds; None: unknown

    def holds(self) -> Need:
        """What it holds against the budget: the larger of its estimate and its measurement."""
        memory = max(self.need.memory_bytes or 0, self.memory_bytes)
        cores = max(self.need.cpu_cores or 0.0, self.cpu_cores)
        return Need(memory, cores)


@dataclass(frozen=True, slots=True)
class QueuedWork:
    """A queued execution, in priority order."""

    key: Hashable
    need: Need
    expected_duration: float | None = None  # seconds; None: unknown


@dataclass(frozen=True, slots=True)
class Decision:
    """Which queued executions start now (in order), and why each other one waits."""

    start: tuple[Hashable, ...] = ()
    waiting: dict[Hashable, str] = field(default_factory=dict)


class AdmissionPolicy:
    """Decides admission (see the module docstring); ``pressure_strength`` says how much host
    pressure (0: none, 1: saturated) shrinks the budget."""

    def __init__(self, *, pressure_strength: float = 0.5) -> None:
        self.pressure_strength = finite_number("pressure_strength", pressure_strength)
        if not 0.0 <= self.pressure_strength <= 1.0:
            raise ValueError(f"pressure_strength: must be between 0 and 1, got {pressure_strength!r}")

    def decide(
        self,
        *,
        now: float,
        slots: int,
        budget: Budget,
        running: Sequence[RunningWork],
        queue: Sequence[QueuedWork],
        pressure: Pressure | float = 0.0,
    ) -> Decision:
        """Choose what starts now out of ``queue`` (priority order) with ``slots`` free."""
        limit = budget.tightened(pressure, self.pressure_strength)
        free = _free(limit, [work.holds() for work in running])
        start: list[Hashable] = []
        waiting: dict[Hashable, str] = {}
        reserved: tuple[float, _Amount] | None = None  # (shadow time, spare then) for the head
        head_key: Hashable | None = None
        started_ends = [(work.expected_end, work.holds()) for work in running]
        for work in queue:
            if slots <= len(start):
                waiting[work.key] = "no free slot"
                continue
            need = _Amount.of(work.need)
            if not need.within(_Amount.of_budget(budget)):  # the nominal budget: pressure passes
                if running or start:
                    waiting[work.key] = f"needs {need.describe()}, more than the whole budget: it runs alone"
                    reserved = reserved or (now, _Amount(0.0, 0.0))  # nothing may pass: let the rest drain
                    head_key = head_key if head_key is not None else work.key
                    continue
                start.append(work.key)
                free = free.minus(need)
                continue
            if reserved is None:
                if need.within(free):
                    start.append(work.key)
                    free = free.minus(need)
                    end = None if work.expected_duration is None else now + work.expected_duration
                    started_ends.append((end, work.need))
                    continue
                reserved = _shadow(now, free, need, started_ends)
                head_key = work.key
                waiting[work.key] = (
                    f"waits for {need.describe()}; {free.describe()} free ({_when(reserved[0], now)})"
                )
                continue
            shadow, spare = reserved
            ends_in_time = work.expected_duration is not None and now + work.expected_duration <= shadow
            if need.within(free) and (ends_in_time or need.within(spare)):
                start.append(work.key)
                free = free.minus(need)
                if not ends_in_time:
                    reserved = (shadow, spare.minus(need))
                continue
            waiting[work.key] = f"held back for {head_key!r}, which needs the resources first"
        return Decision(tuple(start), waiting)


@dataclass(frozen=True, slots=True)
class _Amount:
    memory: float
    cores: float

    @classmethod
    def of(cls, need: Need) -> _Amount:
        return cls(float(need.memory_bytes or 0), float(need.cpu_cores or 0.0))

    @classmethod
    def of_budget(cls, budget: Budget) -> _Amount:
        memory = math.inf if budget.memory_bytes is None else float(budget.memory_bytes)
        cores = math.inf if budget.cpu_cores is None else float(budget.cpu_cores)
        return cls(memory, cores)

    def within(self, other: _Amount) -> bool:
        return self.memory <= other.memory + 1e-9 and self.cores <= other.cores + 1e-9

    def minus(self, other: _Amount) -> _Amount:
        return _Amount(self.memory - other.memory, self.cores - other.cores)

    def plus(self, other: _Amount) -> _Amount:
        return _Amount(self.memory + other.memory, self.cores + other.cores)

    def describe(self) -> str:
        memory = "unbounded memory" if math.isinf(self.memory) else format_size(max(self.memory, 0))
        cores = "unbounded cpu" if math.isinf(self.cores) else f"{max(self.cores, 0):.2f} cores"
        return f"{memory}, {cores}"


def _free(budget: Budget, held: Sequence[Need]) -> _Amount:
    total = _Amount.of_budget(budget)
    for need in held:
        total = total.minus(_Amount.of(need))
    return total


def _shadow(
    now: float, free: _Amount, need: _Amount, ends: Sequence[tuple[float | None, Need]]
) -> tuple[float, _Amount]:
    """When ``need`` will fit as running work ends (in expected order), and what is spare then.
    Work with an unknown end is assumed to run for ever: the shadow is then infinite."""
    available = free
    for end, held in sorted(((e, h) for e, h in ends if e is not None), key=lambda pair: pair[0]):
        available = available.plus(_Amount.of(held))
        if need.within(available):
            return max(end, now), available.minus(need)
    return math.inf, _Amount(0.0, 0.0)


def _when(shadow: float, now: float) -> str:
    if math.isinf(shadow):
        return "when enough running work ends"
    return f"expected in {format_duration(max(shadow - now, 0.0))}"
