"""What the host can give the governor: the basis of its default resource budget.

``memory_budget="auto"`` is ``AUTO_FRACTION`` of the smaller of the host's physical memory and
the memory limit of the cgroup the governor itself runs in (v2 ``memory.max`` or v1
``memory.limit_in_bytes``); the rest is left for the governor, the kernel and everything else
on the machine. ``cpu_budget="auto"`` is the CPUs this process may run on, or its cgroup's CPU
quota if that is smaller. ``available_memory`` is what the host has free for new work now,
and ``HostPressure`` how hard others press on its CPU and memory.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from policies import Pressure, PressureGate
from runner import executions_cgroup
from runner._psi import HOST as HOST_PSI
from runner._psi import stall_totals

AUTO_FRACTION = 0.8
_UNLIMITED = 1 << 60
_TICKS = os.sysconf("SC_CLK_TCK")


def host_memory() -> int:
    """Bytes the governor could give at most: physical memory, or its cgroup's limit."""
    limits = [psutil.virtual_memory().total]
    for path in _own_cgroup_files("memory.max", "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _UNLIMITED:
            limits.append(int(text))
    return min(limits)


def host_cpus() -> float:
    """Cores the governor could give at most: its CPU affinity, or its cgroup's quota."""
    cpus = float(len(os.sched_getaffinity(0)))
    for path in _own_cgroup_files("cpu.max"):
        try:
            quota, period = path.read_text().split()
        except (OSError, ValueError):
            continue
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    return cpus


def auto_memory_budget() -> int:
    """``AUTO_FRACTION`` of ``host_memory()``."""
    return int(host_memory() * AUTO_FRACTION)


def _own_cgroup_files(*names: str) -> list[Path]:
    """Those of ``names`` that exist in the cgroups this process is in (v1 and v2)."""
    found = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    mounts = {"": "/sys/fs/cgroup", "memory": "/sys/fs/cgroup/memory", "cpu": "/sys/fs/cgroup/cpu"}
    unified = "/sys/fs/cgroup/unified" if Path("/sys/fs/cgroup/unified").is_dir() else "/sys/fs/cgroup"
    for line in lines:
        _, controllers, path = line.split(":", 2)
        roots = [unified] if controllers == "" else [mounts[c] for c in controllers.split(",") if c in mounts]
        for root in roots:
            for name in names:
                candidate = Path(root + path.rstrip("/")) / name
                if candidate.is_file():
                    found.append(candidate)
    return found


def available_memory() -> int:
    """Bytes the host could give a new execution now: its available memory (``MemAvailable``:
    free, plus what the kernel can reclaim), or less if the governor's own cgroup has a memory
    limit it is closer to. Execution memory counted here is already our own, in use."""
    available = psutil.virtual_memory().available
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory.limit_in_bytes", "memory.usage_in_bytes"),
    ):
        for path in _own_cgroup_files(limit_file):
            try:
                limit = path.read_text().strip()
                usage = int((path.parent / usage_file).read_text())
            except (OSError, ValueError):
                continue
            if limit.isdigit() and int(limit) < _UNLIMITED:
                available = min(available, max(0, int(limit) - usage))
    return available


class HostPressure:
    """A callable for ``Scheduler(pressure=...)``: how hard *other* tenants press on the host's
    CPU and memory, each through its own ``PressureGate``, read at most once per ``every`` s.

    Everywhere, others' CPU share = (the host's busy CPU time, from /proc/stat) minus (what the
    governor and its executions used over the same interval: ``ours()``, cumulative CPU
    seconds, else this process's own CPU time), over the interval times the CPUs.

    On cgroup v2 with PSI, the executions' own parent cgroup (``cgroup``: by default the one v2
    enforcement made, see ``runner.executions_cgroup``) has pressure files of its own beside
    the host's (/proc/pressure). Others' stall share of a resource = (the host's PSI ``some``
    time) minus (our executions' cgroup's), over the interval: time some task stalled while
    none of ours did, an estimate since the kernel averages ``some`` over CPUs. Memory
    pressure is that share for memory; CPU pressure, the larger of the busy share and the
    share for CPU.

    Elsewhere (cgroup v1, no cgroups, PSI off) there is no per-group pressure to subtract,
    and a host-wide stall figure would count our own children's stalls, so admission keeps
    the busy share for CPU, and for memory caps what may start by what the host has
    available (``available_memory``), which leaves out what others hold already. Either way,
    pressure our own children cause is never a reason to hold our own work back.
    ``readings`` holds the last interval's figures, for the status view.
    """

    def __init__(
        self,
        ours: Callable[[], float] | None = None,
        *,
        gate: PressureGate | None = None,
        memory_gate: PressureGate | None = None,
        every: float = 1.0,
        stat: str = "/proc/stat",
        psi: str = HOST_PSI,
        cgroup: str | Callable[[], str | None] | None = executions_cgroup,
    ) -> None:
        self._ours = ours
        self._gate = gate or PressureGate()
        self._memory_gate = memory_gate or PressureGate()
        self._every = every
        self._stat = Path(stat)
        self._psi = psi
        self._cgroup = cgroup
        self._last = -math.inf
        self._previous: _Totals | None = None
        self._value = Pressure()
        self.readings: dict[str, Any] = {"source": "cpu time"}

    def __call__(self) -> Pressure:
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            raw = self.read(now)
            self._value = Pressure(self._memory_gate.update(raw.memory), self._gate.update(raw.cpu))
        return self._value

    def read(self, now: float | None = None) -> Pressure:
        """Others' pressure since the previous reading (none at the first), before the gates."""
        now = time.monotonic() if now is None else now
        cgroup = self._cgroup() if callable(self._cgroup) else self._cgroup
        if cgroup and callable(self._cgroup):
            self._cgroup = cgroup  # found once v2 made it; its path does not change after
        current = _Totals(
            at=now,
            busy=_host_busy_seconds(self._stat),
            ours=self._ours() if self._ours is not None else float(sum(os.times()[:2])),
            host=stall_totals(self._psi, _STALLS, suffix="") if cgroup else {},
            mine=stall_totals(cgroup, _STALLS) if cgroup else {},
        )
        previous, self._previous = self._previous, current
        if previous is None or now <= previous.at:
            return Pressure()
        elapsed = now - previous.at
        busy = 0.0
        if current.busy is not None and previous.busy is not None:
            others = (current.busy - previous.busy) - (current.ours - previous.ours)
            busy = _share(others / (elapsed * host_cpus()))
        host, mine, others_stalled = {}, {}, {}
        for resource in _STALLS:
            if all(
                resource in totals for totals in (current.host, current.mine, previous.host, previous.mine)
            ):
                host[resource] = _share((current.host[resource] - previous.host[resource]) / elapsed)
                mine[resource] = _share((current.mine[resource] - previous.mine[resource]) / elapsed)
                others_stalled[resource] = _share(host[resource] - mine[resource])
        self.readings = {
            "source": "cgroup2 psi" if others_stalled else "cpu time",
            "others_busy_cpu": round(busy, 4),
            **(
                {"host_stalled": host, "ours_stalled": mine, "others_stalled": others_stalled} if host else {}
            ),
        }
        return Pressure(others_stalled.get("memory", 0.0), max(busy, others_stalled.get("cpu", 0.0)))


_STALLS = ("cpu", "memory")


@dataclass(frozen=True, slots=True)
class _Totals:
    """Cumulative counters at one reading: seconds of busy host CPU, of our own CPU, and of
    PSI ``some`` stall by resource, host-wide and in our executions' cgroup."""

    at: float
    busy: float | None
    ours: float
    host: dict[str, float]
    mine: dict[str, float]


def _share(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def _host_busy_seconds(stat: Path) -> float | None:
    """CPU seconds all CPUs have spent busy since boot (not idle, not waiting for I/O)."""
    try:
        with stat.open("rb") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    ticks = [int(value) for value in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICKS
