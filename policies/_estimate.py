"""Learning what a task needs from what its executions measured.

The estimate of a task's memory (bytes) is a high quantile of its measured peaks, where
recent runs weigh more than old ones (weight ``decay ** age``, age 0 for the newest), so a
task that grew is believed quickly and one outlier fades. Memory is incompressible (too
little kills), hence the high quantile; CPU is compressible (too little only slows), so its
estimate is the mean CPU rate (cores) with the same weights: the load a run is expected to
add. A rate is learned only from runs long enough to measure one (``min_rate_seconds``, a few
sample intervals), and never above the cores a run may use (its ``cpu_rate`` limit, the
host's ``max_cores``). Before any history, the declared limit stands in, else a configurable
default.

What each outcome teaches: a run killed for memory only shows that the task needs *more*
than it was given: its observation is the limit it hit times ``growth_after_oom``, and the
estimate never falls below that until a later run succeeds with a measured peak. A run the
governor evicted while it grew is a floor too: its measured peak, at least. A cancelled or
lost run teaches nothing (it was stopped from outside, or never measured).

A callable run with different memory limits (an executor running jobs of many sizes) is
learned as the share of its limit a run uses, once its history holds two limits or more: the
estimate for a run under limit L is that share's quantile times L.

Cost: what a key's history implies is summarised once each time the key learns something
(``version_of``), and each estimate is then a constant-time lookup; a scheduler may ask for
every queued run at every decision. Pure: observations are handed in, nothing is read from a
clock, a file or a process.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from policies._units import finite_number, format_size, whole_number

# Outcomes that teach nothing about a task's needs.
_UNINFORMATIVE = frozenset({"cancelled", "lost"})
_CACHED_LIMITS = 256  # estimates remembered per key (one per distinct pair of limits)


@dataclass(frozen=True, slots=True)
class Estimate:
    """What one execution of a task is expected to need."""

    memory_bytes: int | None  # None: nothing known and no default
    cpu_cores: float | None
    source: str  # "history", "limit", "default", "oom" / "evicted" (raised after a kill or eviction)
    duration_seconds: float | None = None  # a weighted median of past wall times

    def __repr__(self) -> str:
        memory = format_size(self.memory_bytes) if self.memory_bytes is not None else "?"
        cores = f"{self.cpu_cores:.2f}" if self.cpu_cores is not None else "?"
        return f"Estimate(memory={memory}, cpu={cores} cores, from {self.source})"


@dataclass(frozen=True, slots=True)
class _Observation:
    memory_bytes: int
    cpu_cores: float | None  # None: too short to measure a rate
    oom_floor: bool  # a memory kill or an eviction: the true need is above this
    wall_seconds: float
    floor_source: str = "oom"  # what set the floor: "oom" (a memory kill) or "evicted"
    memory_limit: int | None = None  # the limit it ran under


@dataclass(frozen=True, slots=True)
class _Learned:
    """What a key's history implies, independent of the limits a next run has."""

    memory: float  # the weighted quantile of peaks (floors included)
    share: float | None  # of the limit, when runs had several limits
    cores: float | None
    floor: int  # a memory kill or eviction since the last success (0: none)
    floor_source: str
    duration: float | None


class UsageEstimator:
    """Per-task estimates from measured peaks (see the module docstring)."""

    def __init__(
        self,
        *,
        quantile: float = 0.95,
        decay: float = 0.9,
        window: int = 50,
        default_memory: int | None = None,
        default_cpu: float | None = None,
        growth_after_oom: float = 1.5,
        max_cores: float | None = None,
        min_rate_seconds: float = 0.3,
    ) -> None:
        self.quantile = finite_number("quantile", quantile)
        if not 0.5 <= self.quantile <= 1.0:
            raise ValueError(f"quantile: must be between 0.5 and 1, got {quantile!r}")
        self.decay = finite_number("decay", decay)
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"decay: must be in (0, 1], got {decay!r}")
        self.window = whole_number("window", window)
        if self.window < 1:
            raise ValueError(f"window: must be at least 1, got {window!r}")
        self.default_memory = (
            None if default_memory is None else whole_number("default_memory", default_memory)
        )
        self.default_cpu = None if default_cpu is None else finite_number("default_cpu", default_cpu)
        self.growth_after_oom = finite_number("growth_after_oom", growth_after_oom)
        if self.growth_after_oom < 1.0:
            raise ValueError(f"growth_after_oom: must be at least 1.0, got {growth_after_oom!r}")
        self.max_cores = None if max_cores is None else finite_number("max_cores", max_cores)
        if self.max_cores is not None and self.max_cores <= 0:
            raise ValueError(f"max_cores: must be a positive number of cores, got {max_cores!r}")
        self.min_rate_seconds = finite_number("min_rate_seconds", min_rate_seconds)
        if self.min_rate_seconds < 0:
            raise ValueError(f"min_rate_seconds: must not be negative, got {min_rate_seconds!r}")
        self._history: dict[str, deque[_Observation]] = {}
        self._versions: dict[str, int] = {}
        self._learned: dict[str, _Learned] = {}
        self._estimates: dict[str, dict[tuple[int | None, float | None], Estimate]] = {}
        self._weight_lists: dict[int, list[float]] = {}
        self.version = 0  # counts observations of every key

    def observe(
        self,
        task: str,
        *,
        peak_memory_bytes: int,
        cpu_seconds: float,
        wall_seconds: float,
        outcome: str = "succeeded",
        memory_limit: int | None = None,
        cpu_limit: float | None = None,
        memory_exceeded: bool = False,
        evicted: bool = False,
    ) -> None:
        """Record one finished execution of ``task`` that ended with ``outcome`` (an
        ``Outcome`` value; see the module docstring for what each one teaches).
        ``memory_exceeded`` and ``evicted`` are the older spellings of those two outcomes."""
        if memory_exceeded:
            outcome = "memory_exceeded"
        elif evicted:
            outcome = "evicted"
        if outcome in _UNINFORMATIVE:
            return
        peak = whole_number("peak_memory_bytes", peak_memory_bytes)
        wall = finite_number("wall_seconds", wall_seconds)
        cores = self._rate(finite_number("cpu_seconds", cpu_seconds), wall, cpu_limit)
        if outcome == "memory_exceeded":
            reached = max(peak, memory_limit or 0)
            observation = _Observation(math.ceil(reached * self.growth_after_oom), cores, True, wall)
        elif outcome == "evicted":
            observation = _Observation(peak, cores, True, wall, "evicted")
        else:
            observation = _Observation(peak, cores, False, wall, memory_limit=memory_limit)
        self._history.setdefault(task, deque(maxlen=self.window)).append(observation)
        self._versions[task] = self._versions.get(task, 0) + 1
        self._learned.pop(task, None)
        self._estimates.pop(task, None)
        self.version += 1

    def _rate(self, cpu_seconds: float, wall: float, cpu_limit: float | None) -> float | None:
        """Cores a run used on average: none for a run too short to tell, capped at what it
        could use (a tick of CPU accounting in a millisecond run is not a hundred cores)."""
        if wall < self.min_rate_seconds or wall <= 0:
            return None
        cores = max(cpu_seconds, 0.0) / wall
        for cap in (cpu_limit, self.max_cores):
            if cap is not None:
                cores = min(cores, cap)
        return cores

    def version_of(self, task: str) -> int:
        """How many times ``task`` has learned something: an estimate made at an older version
        may be stale."""
        return self._versions.get(task, 0)

    def estimate(
        self, task: str, *, memory_limit: int | None = None, cpu_limit: float | None = None
    ) -> Estimate:
        """The expected need of the next execution of ``task`` (constant time once known)."""
        cached = self._estimates.get(task)
        if cached is not None:
            found = cached.get((memory_limit, cpu_limit))
            if found is not None:
                return found
        else:
            cached = self._estimates[task] = {}
        estimate = self._compute(task, memory_limit, cpu_limit)
        if len(cached) >= _CACHED_LIMITS:
            cached.clear()
        cached[(memory_limit, cpu_limit)] = estimate
        return estimate

    def _compute(self, task: str, memory_limit: int | None, cpu_limit: float | None) -> Estimate:
        learned = self._summary(task)
        if learned is None:
            if memory_limit is not None or cpu_limit is not None:
                return Estimate(memory_limit or self.default_memory, cpu_limit or self.default_cpu, "limit")
            return Estimate(self.default_memory, self.default_cpu, "default")
        memory = learned.memory
        if memory_limit is not None and learned.share is not None:
            memory = learned.share * memory_limit
        source = "history"
        if learned.floor and learned.floor >= memory:
            memory, source = learned.floor, learned.floor_source
        if memory_limit is not None and source == "history":
            memory = min(memory, memory_limit)  # it cannot use more than its limit allows
        cores = learned.cores if learned.cores is not None else (cpu_limit or self.default_cpu)
        if cores is not None and cpu_limit is not None:
            cores = min(cores, cpu_limit)  # the quota caps what it can use
        return Estimate(math.ceil(memory), cores, source, learned.duration)

    def _summary(self, task: str) -> _Learned | None:
        learned = self._learned.get(task)
        if learned is not None:
            return learned
        history = self._history.get(task)
        if not history:
            return None
        observations = list(history)
        weights = self._weights(len(observations))
        memory = _weighted_quantile([o.memory_bytes for o in observations], weights, self.quantile)
        measured = [(o, w) for o, w in zip(observations, weights, strict=True) if not o.oom_floor]
        share = None
        limits = {o.memory_limit for o, _ in measured}
        if len(limits) > 1 and None not in limits:
            # Runs under different limits (one callable, jobs of many sizes): the limit tells
            # the size, so learn the share of its limit a run uses.
            shares = [o.memory_bytes / (o.memory_limit or 1) for o, _ in measured]
            share = _weighted_quantile(shares, [w for _, w in measured], self.quantile)
        rated = [
            (o.cpu_cores, w) for o, w in zip(observations, weights, strict=True) if o.cpu_cores is not None
        ]
        cores = sum(c * w for c, w in rated) / sum(w for _, w in rated) if rated else None
        # A memory kill since the last success is a floor: believe it until a run succeeds.
        floor, floor_source = 0, "oom"
        for observation in reversed(observations):
            if not observation.oom_floor:
                break
            if observation.memory_bytes > floor:
                floor, floor_source = observation.memory_bytes, observation.floor_source
        duration = None
        if measured:
            duration = _weighted_quantile(
                [o.wall_seconds for o, _ in measured], [w for _, w in measured], 0.5
            )
        learned = _Learned(memory, share, cores, floor, floor_source, duration)
        self._learned[task] = learned
        return learned

    def _weights(self, count: int) -> list[float]:
        """``decay ** age`` for ``count`` observations, oldest first (the same for every key)."""
        weights = self._weight_lists.get(count)
        if weights is None:
            weights = self._weight_lists[count] = [
                self.decay ** (count - 1 - index) for index in range(count)
            ]
        return weights

    def tasks(self) -> list[str]:
        """Tasks with at least one observation."""
        return sorted(self._history)


def _weighted_quantile(values: list[float] | list[int], weights: list[float], quantile: float) -> float:
    """The ``quantile`` of ``values`` under ``weights`` (one sort)."""
    pairs = sorted(zip(values, weights, strict=True))
    target = quantile * sum(weights)
    running = 0.0
    for value, weight in pairs:
        running += weight
        if running >= target - 1e-12:
            return float(value)
    return float(pairs[-1][0])
