"""The one start path: which queued runs start now, why the others wait, whom to evict.

    loop ──choose()──> a free slot? ──no──> nothing (runs queued meanwhile wait for a slot)
                           │ yes
                           ├─ no budget: the next runs their tasks let start, in priority order
                           └─ a budget: an admission pass (policies.AdmissionPolicy) over the
                              ready heap in order, as far as a decision needs; held runs keep
                              their place, each with the reason it waits
    loop ──evictions()──> runs to stop when running work measures more than the memory budget

A pass costs O((started + admission window) log n), never O(queue): estimates come from the
estimator's per-key cache, the candidates straight off the ready heap. With a budget, a pass
runs when something changed (a run queued or ended, a command) and, while work is held back,
every ``RECHECK`` seconds, since measurements and the host change by themselves.
"""

from __future__ import annotations

from collections.abc import Callable

from governor.scheduling._work import Run, Work
from policies import (
    NO_FREE_SLOT,
    AdmissionPolicy,
    Budget,
    Estimate,
    Need,
    Pressure,
    QueuedWork,
    RunningUsage,
    RunningWork,
    UsageEstimator,
    bounded_reason,
    choose_evictions,
)

RECHECK = 0.25  # seconds between admission passes while work is held back and nothing changes
AVAILABLE_TTL = 0.1  # seconds a reading of the host's available memory is reused


class Starter:
    """Chooses what starts (see the module docstring). ``admission`` is ``None`` when no
    budget is set: then slots alone decide."""

    def __init__(
        self,
        work: Work,
        *,
        max_running: int,
        budget: Budget,
        admission: AdmissionPolicy | None,
        estimator: UsageEstimator,
        pressure: Callable[[], float | Pressure] | None,
        available_memory: Callable[[], int] | None,
    ) -> None:
        self._work = work
        self.max_running = max_running
        self.budget = budget
        self._admission = admission
        self._estimator = estimator
        self.pressure = pressure  # host pressure: read at every pass (HostPressure caches it)
        self._available_memory = available_memory
        self._available: tuple[float, int | None] = (-1.0, None)  # (read at, bytes)
        self._due = 0.0  # monotonic: when to decide again (0: now)
        self.last_pressure = Pressure()  # what admission last acted on
        self.full_at = -1.0  # the last time a pass found every slot taken, work queued
        self._blocked: tuple[float, str] = (-1.0, "")  # the last time a pass stopped behind a head, why

    def changed(self) -> None:
        """Something that admission depends on changed: decide at the next turn."""
        self._due = 0.0

    def next_decision(self) -> float | None:
        """When admission wants to decide again although nothing changed (monotonic), or None."""
        work = self._work
        if self._admission is None or not len(work.ready) or work.running_count >= self.max_running:
            return None  # nothing to decide until a run ends (which counts as a change)
        return self._due

    def choose(self, now: float) -> list[Run]:
        """The runs to start now, in order, counted as starting; the rest keep their place."""
        work = self._work
        slots = self.max_running - work.running_count
        if not len(work.ready):
            return []
        if slots <= 0:
            self.full_at = now
            return []
        if self._admission is None:
            chosen: list[Run] = []
            while len(chosen) < slots and (run := work.take_startable()) is not None:
                chosen.append(run)
            return chosen
        if now < self._due:
            return []  # nothing changed since the last decision, and it is not time to recheck
        self._due = now + RECHECK
        return self._admit(now, slots)

    def _admit(self, now: float, slots: int) -> list[Run]:
        assert self._admission is not None
        work = self._work
        pressure: float | Pressure = self.pressure() if self.pressure is not None else 0.0
        self.last_pressure = pressure if isinstance(pressure, Pressure) else Pressure(pressure, pressure)
        decision = self._admission.begin(
            now=now,
            slots=slots,
            budget=self.budget,
            running=[self._running_work(run, now) for run in work.running()],
            pressure=pressure,
            available_memory=self._available_now(now),
        )
        chosen: list[Run] = []
        held: list[Run] = []
        while not decision.exhausted and (run := work.take_startable()) is not None:
            estimate = self._estimate(run)
            run.need = Need(estimate.memory_bytes, estimate.cpu_cores)
            duration = estimate.duration_seconds
            reason = decision.offer(QueuedWork(run, run.need, duration, run.name))
            if reason is None:
                chosen.append(run)
            else:
                run.wait_reason = bounded_reason(reason)
                held.append(run)
        for run in held:
            work.put_back(run)
        if decision.exhausted and len(work.ready):
            if len(chosen) >= slots:
                self.full_at = now
            else:
                self._blocked = (now, bounded_reason(decision.why_exhausted))
        return chosen

    def why_waited(self, run: Run) -> str | None:
        """Why a run that starts now waited, if no pass ever said: runs queued before a pass
        that found every slot taken waited for one; before a pass that stopped behind a
        blocked head, for that head."""
        if run.wait_reason is not None:
            return run.wait_reason
        blocked_at, reason = self._blocked
        if run.queued_mono < max(self.full_at, blocked_at):
            return NO_FREE_SLOT if self.full_at >= blocked_at else reason
        return None

    def _estimate(self, run: Run) -> Estimate:
        """The run's estimate, need and duration (the estimator caches it per key and limits)."""
        limits = run.spec.limits
        return self._estimator.estimate(run.name, memory_limit=limits.memory, cpu_limit=limits.cpu_rate)

    def need(self, run: Run) -> Need:
        estimate = self._estimate(run)
        return Need(estimate.memory_bytes, estimate.cpu_cores)

    def _running_work(self, run: Run, now: float) -> RunningWork:
        assert run.handle is not None
        reading = run.handle.last_reading
        # Its expected end by what its task has taught so far (a cached look-up): a run that
        # started before anything was known gets one as soon as something is.
        duration, began = self._estimate(run).duration_seconds, run.started_mono
        end = None if duration is None or began is None else began + duration
        memory = reading.memory_bytes if reading is not None else 0
        return RunningWork(run, run.need or self.need(run), memory, 0.0, end)

    def _available_now(self, now: float) -> int | None:
        if self._available_memory is None:
            return None
        read_at, value = self._available
        if now - read_at >= AVAILABLE_TTL:
            value = self._available_memory()
            self._available = (now, value)
        return value

    def evictions(self, running: list[Run], evicting: int) -> list[tuple[Run, str]]:
        """Runs to stop now because running work measures more than the memory budget
        (``policies.choose_evictions``): one at a time, never the last one running."""
        budget = self.budget.memory_bytes
        if self._admission is None or budget is None or evicting or len(running) < 2:
            return []  # one eviction at a time: what it frees is measured before the next
        usage = []
        for run in running:
            assert run.handle is not None
            reading = run.handle.last_reading
            usage.append(
                RunningUsage(
                    run,
                    reading.memory_bytes if reading is not None else 0,
                    (run.need or self.need(run)).memory_bytes,
                    run.priority,
                    run.retry_policy.max_retries > 0,
                    run.evictions,
                )
            )
        return [(key, reason) for key, reason in choose_evictions(usage, budget)]  # type: ignore[misc]
