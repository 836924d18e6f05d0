"""What the host can give the governor: the basis of its default resource budget.

``memory_budget="auto"`` is ``AUTO_FRACTION`` of the smaller of the host's physical memory and
the memory limit of the cgroup the governor itself runs in (v2 ``memory.max`` or v1
``memory.limit_in_bytes``); the rest is left for the governor, the kernel and everything else
on the machine. ``cpu_budget="auto"`` is the CPUs this process may run on, or its cgroup's CPU
quota if that is smaller.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import psutil

from policies import Pressure, PressureGate

AUTO_FRACTION = 0.8
_UNLIMITED = 1 << 60


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


class HostPressure:
    """A callable for ``Scheduler(pressure=...)``: the host's memory and CPU pressure, each
    through its own ``PressureGate``, read at most once per ``every`` seconds. PSI "some
    avg10" from ``/proc/pressure/{memory,cpu}`` where the kernel has it; else the share of
    memory in use, and the 1-minute load beyond the CPUs (load 2x the CPUs reads 1.0)."""

    def __init__(
        self,
        gate: PressureGate | None = None,
        *,
        every: float = 1.0,
        source: str = "/proc/pressure/memory",
        cpu_source: str = "/proc/pressure/cpu",
        cpu_gate: PressureGate | None = None,
    ) -> None:
        self._gate = gate or PressureGate()
        self._cpu_gate = cpu_gate or PressureGate()
        self._every = every
        self._source = Path(source)
        self._cpu_source = Path(cpu_source)
        self._last = -math.inf
        self._value = Pressure()

    def __call__(self) -> Pressure:
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            memory = self._gate.update(self.reading())
            self._value = Pressure(memory, self._cpu_gate.update(self.cpu_reading()))
        return self._value

    def reading(self) -> float:
        """The raw memory reading in [0, 1]."""
        psi = _psi_some_avg10(self._source)
        return _memory_in_use() if psi is None else psi

    def cpu_reading(self) -> float:
        """The raw CPU reading in [0, 1]."""
        psi = _psi_some_avg10(self._cpu_source)
        return _load_beyond_cpus() if psi is None else psi


def _psi_some_avg10(path: Path) -> float | None:
    """The "some avg10" share of a PSI file, or ``None`` where there is none (older kernels,
    PSI disabled)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("some "):
                fields = dict(part.split("=", 1) for part in line.split()[1:])
                return min(max(float(fields["avg10"]) / 100.0, 0.0), 1.0)
    except (OSError, KeyError, ValueError):
        return None
    return None


def _memory_in_use() -> float:
    memory = psutil.virtual_memory()
    return 1.0 - memory.available / memory.total


def _load_beyond_cpus() -> float:
    cpus = os.cpu_count() or 1
    return min(max(os.getloadavg()[0] / cpus - 1.0, 0.0), 1.0)
