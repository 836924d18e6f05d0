"""What the host can give the governor: the basis of its default resource budget.

``memory_budget="auto"`` is ``AUTO_FRACTION`` of the smaller of the host's physical memory and
the memory limit of the cgroup the governor itself runs in (v2 ``memory.max`` or v1
``memory.limit_in_bytes``); the rest is left for the governor, the kernel and everything else
on the machine. ``cpu_budget="auto"`` is the CPUs this process may run on, or its cgroup's CPU
quota if that is smaller. ``available_memory`` is what the host has free for new work now,
and ``HostPressure`` how much of its CPU others keep busy.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from policies import Pressure, PressureGate

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
    """A callable for ``Scheduler(pressure=...)``: how much of the host's CPU *others* keep busy,
    through a ``PressureGate``, read at most once per ``every`` seconds.

    Others' share = (the host's busy CPU time, from /proc/stat) minus (what the governor and its
    executions used over the same interval: ``ours()``, cumulative CPU seconds, else this
    process's own CPU time), over the interval times the CPUs, in [0, 1]. Pressure our own
    children cause is therefore never a reason to hold our own work back; PSI could not tell
    the two apart. Memory needs no pressure reading: admission caps what may start by what the
    host has available (``available_memory``), which leaves out what others hold already.
    """

    def __init__(
        self,
        ours: Callable[[], float] | None = None,
        *,
        gate: PressureGate | None = None,
        every: float = 1.0,
        stat: str = "/proc/stat",
    ) -> None:
        self._ours = ours
        self._gate = gate or PressureGate()
        self._every = every
        self._stat = Path(stat)
        self._last = -math.inf
        self._previous: tuple[float, float | None, float] | None = None  # (monotonic, busy s, ours s)
        self._value = Pressure()

    def __call__(self) -> Pressure:
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._value = Pressure(0.0, self._gate.update(self.cpu_reading(now)))
        return self._value

    def cpu_reading(self, now: float | None = None) -> float:
        """Others' share of the host's CPUs since the previous reading (0 at the first)."""
        now = time.monotonic() if now is None else now
        busy = _host_busy_seconds(self._stat)
        ours = self._ours() if self._ours is not None else float(sum(os.times()[:2]))
        previous, self._previous = self._previous, (now, busy, ours)
        if previous is None or busy is None or previous[1] is None:
            return 0.0
        elapsed = now - previous[0]
        if elapsed <= 0:
            return 0.0
        others = (busy - previous[1]) - (ours - previous[2])
        return min(max(others / (elapsed * host_cpus()), 0.0), 1.0)


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
