"""Admission: which queued executions may start now, given a resource budget.

Queued work is offered in priority order, one item at a time (``AdmissionPass.offer``), so the
caller takes items off its ready heap only as far as a decision needs: a pass costs
O(started + window), never O(queue). Each item starts when a slot is free and its estimated
need fits what is free: the budget (tightened by host pressure) minus, for every running
execution, the larger of its estimate and what it measures now (it may still grow to its
estimate, and a run past its estimate holds what it holds); memory also within what the host
really has available, less what running work may still grow by.

Three rules keep it honest:

- Work-conserving. CPU is compressible: with nothing of ours running, no CPU estimate and no
  pressure holds the head back; it starts when its memory fits what the host has available
  (or, needing more than the whole budget, it runs alone). Pressure narrows concurrency down
  to one, never to zero.
- Reservation. A head that does not fit reserves its place; others *backfill* only when they
  cannot delay it (EASY backfilling): they fit now and either end, by their expected duration,
  before the head could start (the "shadow" time, when enough running work will have ended),
  or fit in what will still be spare once the head has started then. Only the ``window``
  items after a blocked head are considered.
- Legible. Every item not started gets a reason a person reads, naming the head by its name.

Pure: time, measurements and host readings are handed in.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from policies._pressure import Pressure
from policies._units import finite_number, format_duration, format_size, whole_number

NO_FREE_SLOT = "no free slot"  # why a queued run waits when every slot is taken
WAIT_REASON_LIMIT = 200  # characters: a wait reason is a sentence a person reads


def bounded_reason(text: str, limit: int = WAIT_REASON_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut (a reason names
    tasks, and a task's name can be as long as its author likes)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    """A queued execution, offered in priority order; ``name`` is how a reason names it."""

    key: Hashable
    need: Need
    expected_duration: float | None = None  # seconds; None: unknown
    name: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """Which queued executions start now (in order), and why each other one waits."""

    start: tuple[Hashable, ...] = ()
    waiting: dict[Hashable, str] = field(default_factory=dict)


class AdmissionPolicy:
    """Decides admission (see the module docstring). ``pressure_strength`` says how much host
    pressure (0: none, 1: saturated) shrinks the budget; ``window`` how many queued items
    behind a blocked head may be considered for backfilling in one pass."""

    def __init__(self, *, pressure_strength: float = 0.5, window: int = 32) -> None:
        self.pressure_strength = finite_number("pressure_strength", pressure_strength)
        if not 0.0 <= self.pressure_strength <= 1.0:
            raise ValueError(f"pressure_strength: must be between 0 and 1, got {pressure_strength!r}")
        self.window = whole_number("window", window)
        if self.window < 0:
            raise ValueError(f"window: must be a whole number >= 0, got {window!r}")

    def begin(
        self,
        *,
        now: float,
        slots: int,
        budget: Budget,
        running: Sequence[RunningWork],
        pressure: Pressure | float = 0.0,
        available_memory: int | None = None,
    ) -> AdmissionPass:
        """Start deciding: offer queued work to the pass in priority order until it is
        ``exhausted``. ``available_memory`` is what the host has free now (None: unknown)."""
        return AdmissionPass(self, now, slots, budget, running, pressure, available_memory)

    def decide(
        self,
        *,
        now: float,
        slots: int,
        budget: Budget,
        running: Sequence[RunningWork],
        queue: Sequence[QueuedWork],
        pressure: Pressure | float = 0.0,
        available_memory: int | None = None,
    ) -> Decision:
        """The whole decision for ``queue`` (priority order) at once; items the pass did not
        reach wait for a slot or behind the head."""
        decision = self.begin(
            now=now,
            slots=slots,
            budget=budget,
            running=running,
            pressure=pressure,
            available_memory=available_memory,
        )
        start: list[Hashable] = []
        waiting: dict[Hashable, str] = {}
        for work in queue:
            if decision.exhausted:
                waiting[work.key] = decision.why_exhausted
                continue
            reason = decision.offer(work)
            if reason is None:
                start.append(work.key)
            else:
                waiting[work.key] = reason
        return Decision(tuple(start), waiting)


class AdmissionPass:
    """One admission decision, made as queued work is offered (see the module docstring)."""

    def __init__(
        self,
        policy: AdmissionPolicy,
        now: float,
        slots: int,
        budget: Budget,
        running: Sequence[RunningWork],
        pressure: Pressure | float,
        available_memory: int | None,
    ) -> None:
        self._now = now
        self._slots = slots
        self._window = policy.window
        self._nominal = _Amount.of_budget(budget)
        self._idle = not running  # nothing of ours runs: the head may not be held back for CPU
        held = [work.holds() for work in running]
        free = _Amount.of_budget(budget.tightened(pressure, policy.pressure_strength))
        for need in held:
            free = free.minus(_Amount.of(need))
        if available_memory is not None:
            # What the host has free, less what running work may still grow by to its estimate.
            growth = sum(max(0, (work.need.memory_bytes or 0) - work.memory_bytes) for work in running)
            free = _Amount(min(free.memory, float(available_memory - growth)), free.cores)
        self._free = free
        self._available = math.inf if available_memory is None else float(available_memory)
        self._ends = [(work.expected_end, work.holds()) for work in running]
        self._started = 0
        self._reserved: tuple[float, _Amount] | None = None  # (shadow time, spare then) for the head
        self._head = ""
        self._behind_head = 0
        self.why_exhausted = NO_FREE_SLOT

    @property
    def exhausted(self) -> bool:
        """True once nothing more can start in this pass: no slot left, or the window behind
        a blocked head is used up. Items not offered then wait for ``why_exhausted``."""
        return self._started >= self._slots or (
            self._reserved is not None and self._behind_head >= self._window
        )

    def offer(self, work: QueuedWork) -> str | None:
        """Decide on the next item in priority order: ``None`` to start it now, else why it waits."""
        if self._started >= self._slots:
            return NO_FREE_SLOT
        need = _Amount.of(work.need)
        name = work.name or "an earlier queued run"
        if self._idle and self._started == 0 and self._reserved is None:
            return self._head_alone(work, need, name)
        oversized = not need.within(self._nominal)  # more than the whole budget: only ever alone
        if self._reserved is None:
            if oversized:  # nothing may pass it: running work drains, then it starts alone
                self._block(self._now, _Amount(0.0, 0.0), name)
                return f"needs {need.describe(need)}, more than the whole budget: it runs alone"
            if need.within(self._free):
                self._start(need, work.expected_duration)
                return None
            shadow, spare = _shadow(self._now, self._free, need, self._ends)
            self._block(shadow, spare, name)
            free = self._free.describe(need)
            return f"waits for {need.describe(need)}; {free} free ({_when(shadow, self._now)})"
        self._behind_head += 1
        if oversized:
            return f"needs {need.describe(need)}, more than the whole budget: it runs alone"
        shadow, spare = self._reserved
        ends_in_time = work.expected_duration is not None and self._now + work.expected_duration <= shadow
        if need.within(self._free) and (ends_in_time or need.within(spare)):
            self._start(need, work.expected_duration)
            if not ends_in_time:
                self._reserved = (shadow, spare.minus(need))
            return None
        return f"held back for {self._head}, which needs the resources first"

    def _head_alone(self, work: QueuedWork, need: _Amount, name: str) -> str | None:
        """With nothing of ours running the head starts, CPU and pressure notwithstanding, once
        its memory fits what the host has available; one needing more than the whole budget
        can never fit beside anything, so it starts alone now (its own limits guard it)."""
        if need.memory <= self._available or need.memory > self._nominal.memory:
            self._start(need, work.expected_duration)
            return None
        self._block(math.inf, _Amount(0.0, 0.0), name)
        available = format_size(max(self._available, 0))
        return f"waits for {format_size(need.memory)}; the host has {available} available"

    def _start(self, need: _Amount, duration: float | None) -> None:
        self._started += 1
        self._free = self._free.minus(need)
        end = None if duration is None else self._now + duration
        self._ends.append((end, Need(int(need.memory), need.cores)))

    def _block(self, shadow: float, spare: _Amount, name: str) -> None:
        self._reserved = (shadow, spare)
        self._head = name
        self.why_exhausted = f"held back for {name}, which needs the resources first"


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

    def describe(self, need: _Amount) -> str:
        """This amount in the resources ``need`` asks for (memory when it needs any, cores
        when it needs any; memory when it needs neither)."""
        parts = []
        if need.memory > 0 or need.cores <= 0:
            parts.append("unbounded memory" if math.isinf(self.memory) else format_size(max(self.memory, 0)))
        if need.cores > 0:
            parts.append("unbounded cpu" if math.isinf(self.cores) else f"{max(self.cores, 0):.2f} cores")
        return ", ".join(parts)


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
