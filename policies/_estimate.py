"""Learning what a task needs from what its executions measured.

The estimate of a task's memory (bytes) is a high quantile of its measured peaks, where
recent runs weigh more than old ones (weight ``decay ** age``, age 0 for the newest), so a
task that grew is believed quickly and one outlier fades. Memory is incompressible (too
little kills), hence the high quantile; CPU is compressible (too little only slows), so its
estimate is the mean CPU rate (cores) with the same weights: the load a run is expected to
add. Before any history, the declared limit stands in, else a configurable default. A run killed for memory
only shows that the task needs *more* than it was given: its observation is the limit it hit
times ``growth_after_oom``, and the estimate never falls below that until a later run
succeeds with a measured peak. A run the governor evicted while it grew is a floor too: its
measured peak, at least.

A callable run with different memory limits (an executor running jobs of many sizes) is
learned as the share of its limit a run uses, once its history holds two limits or more: the
estimate for a run under limit L is that share's quantile times L.

Pure: observations are handed in, nothing is read from a clock, a file or a process.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from policies._units import finite_number, format_size, whole_number


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
    cpu_cores: float
    oom_floor: bool  # a memory kill or an eviction: the true need is above this
    wall_seconds: float
    floor_source: str = "oom"  # what set the floor: "oom" (a memory kill) or "evicted"
    memory_limit: int | None = None  # the limit it ran under


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
        self._history: dict[str, deque[_Observation]] = {}
        self.version = 0  # counts observations: an estimate made at an older version may be stale

    def observe(
        self,
        task: str,
        *,
        peak_memory_bytes: int,
        cpu_seconds: float,
        wall_seconds: float,
        memory_exceeded: bool = False,
        memory_limit: int | None = None,
        evicted: bool = False,
    ) -> None:
        """Record one finished execution of ``task``.

        A ``memory_exceeded`` run records ``memory_limit * growth_after_oom`` (or its peak, if
        larger) as a floor rather than a measurement; an ``evicted`` run (stopped by the
        governor while still growing) records its peak as a floor.
        """
        peak = whole_number("peak_memory_bytes", peak_memory_bytes)
        wall = finite_number("wall_seconds", wall_seconds)
        cores = finite_number("cpu_seconds", cpu_seconds) / wall if wall > 0 else 0.0
        if memory_exceeded:
            reached = max(peak, memory_limit or 0)
            observation = _Observation(math.ceil(reached * self.growth_after_oom), cores, True, wall)
        elif evicted:
            observation = _Observation(peak, cores, True, wall, "evicted")
        else:
            observation = _Observation(peak, cores, False, wall, memory_limit=memory_limit)
        self._history.setdefault(task, deque(maxlen=self.window)).append(observation)
        self.version += 1

    def estimate(
        self, task: str, *, memory_limit: int | None = None, cpu_limit: float | None = None
    ) -> Estimate:
        """The expected need of the next execution of ``task``."""
        history = self._history.get(task)
        if not history:
            if memory_limit is not None or cpu_limit is not None:
                return Estimate(memory_limit or self.default_memory, cpu_limit or self.default_cpu, "limit")
            return Estimate(self.default_memory, self.default_cpu, "default")
        observations = list(history)
        memory = self._weighted_quantile([o.memory_bytes for o in observations])
        measured = [o for o in observations if not o.oom_floor]
        limits = {o.memory_limit for o in measured}
        if memory_limit is not None and len(limits) > 1 and None not in limits:
            # Runs under different limits (one callable, jobs of many sizes): the limit tells
            # the size, so learn the share of its limit a run uses.
            shares = [o.memory_bytes / (o.memory_limit or 1) for o in measured]
            memory = self._weighted_quantile(shares) * memory_limit
        cores = self._weighted_mean([o.cpu_cores for o in observations])
        source = "history"
        # A memory kill since the last success is a floor: believe it until a run succeeds.
        floor, floor_source = 0, "oom"
        for observation in reversed(observations):
            if not observation.oom_floor:
                break
            if observation.memory_bytes > floor:
                floor, floor_source = observation.memory_bytes, observation.floor_source
        if floor and floor >= memory:
            memory, source = floor, floor_source
        if memory_limit is not None and source == "history":
            memory = min(memory, memory_limit)  # it cannot use more than its limit allows
        if cpu_limit is not None:
            cores = min(cores, cpu_limit)  # the quota caps what it can use
        finished = [o.wall_seconds for o in observations if not o.oom_floor]
        duration = self._weighted_quantile(finished, 0.5) if finished else None
        return Estimate(math.ceil(memory), cores, source, duration)

    def _weighted_mean(self, values: list[float]) -> float:
        """The mean of ``values`` (oldest first) with weights ``decay ** age``."""
        newest = len(values) - 1
        weights = [self.decay ** (newest - index) for index in range(len(values))]
        return sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)

    def _weighted_quantile(self, values: list[float] | list[int], quantile: float | None = None) -> float:
        """The ``quantile`` of ``values`` (oldest first) with weights ``decay ** age``."""
        newest = len(values) - 1
        weighted = sorted((value, self.decay ** (newest - index)) for index, value in enumerate(values))
        total = sum(weight for _, weight in weighted)
        target = (self.quantile if quantile is None else quantile) * total
        running = 0.0
        for value, weight in weighted:
            running += weight
            if running >= target - 1e-12:
                return float(value)
        return float(weighted[-1][0])

    def tasks(self) -> list[str]:
        """Tasks with at least one observation."""
        return sorted(self._history)
