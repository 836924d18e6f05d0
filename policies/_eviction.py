"""Eviction: whom to stop when running executions outgrow the memory budget.

Admission lets an execution start only when its estimate fits, but an estimate can be wrong:
a run may grow past it. When what the running executions *measure* together exceeds the
memory budget, the governor stops some of them itself, rather than leave the choice to the
kernel's OOM killer (which may pick the governor, or the run that was nearly done). The
policy, in order:

1. Only runs that measure more than their estimate are candidates: a run within its estimate
   holds what it was admitted with. Nothing is stopped while a single run is going (stopping
   it frees memory for no one; its own memory limit is its guard), nor a run already evicted
   ``max_evictions`` times (it must be able to finish eventually).
2. Candidates are ranked: runs whose retry policy allows retries first (their owner said a
   run may be repeated), then lower priority first, then the larger overage (measured minus
   estimate) first.
3. Runs are stopped in that order until the rest measure within the budget, and never all of
   them: at least one run keeps going.

Stopped runs end ``evicted`` and are queued again (at their old place) with an estimate of at
least what they measured, so admission restarts them when that much memory is free. Pure.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from policies._units import format_size


@dataclass(frozen=True, slots=True)
class RunningUsage:
    """One running execution, as eviction sees it."""

    key: Hashable
    memory_bytes: int  # measured now
    estimate_bytes: int | None  # what admission expected (None: nothing known)
    priority: int = 0
    retryable: bool = False  # its retry policy allows another attempt
    evictions: int = 0  # times this run was evicted before

    @property
    def overage(self) -> int:
        """Bytes measured beyond the estimate (all of it when there was no estimate)."""
        return self.memory_bytes - (self.estimate_bytes or 0)


def choose_evictions(
    running: Sequence[RunningUsage], budget_bytes: int, *, max_evictions: int = 3
) -> list[tuple[Hashable, str]]:
    """The runs to stop now, in order, each with the reason to record (see the module
    docstring); empty when the running executions measure within ``budget_bytes``."""
    total = sum(run.memory_bytes for run in running)
    if total <= budget_bytes or len(running) < 2:
        return []
    candidates = [run for run in running if run.overage > 0 and run.evictions < max_evictions]
    candidates.sort(key=lambda run: (not run.retryable, run.priority, -run.overage))
    chosen: list[tuple[Hashable, str]] = []
    remaining = total
    for run in candidates:
        if remaining <= budget_bytes or len(chosen) == len(running) - 1:
            break
        estimate = (
            "no estimate"
            if run.estimate_bytes is None
            else f"an estimate of {format_size(run.estimate_bytes)}"
        )
        reason = (
            f"evicted to keep within the memory budget: running executions measured {format_size(remaining)}"
            f" of {format_size(budget_bytes)}; this one (priority {run.priority}) measured"
            f" {format_size(run.memory_bytes)} against {estimate}"
        )
        chosen.append((run.key, reason))
        remaining -= run.memory_bytes
    return chosen
