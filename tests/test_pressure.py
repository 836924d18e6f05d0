"""Host pressure: the hysteresis gate (pure), and others' share of the CPU, read from the host
and told apart from what the governor's own work uses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from governor.scheduling._budget import HostPressure, available_memory, host_memory
from policies import Budget, Pressure, PressureGate

GiB = 1 << 30


def test_the_gate_engages_high_and_releases_low() -> None:
    gate = PressureGate(high=0.2, low=0.1)
    assert [gate.update(r) for r in (0.05, 0.15, 0.25, 0.15, 0.12, 0.09, 0.15)] == [
        0,
        0,
        0.25,
        0.15,
        0.12,
        0,
        0,
    ]


def test_gate_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="low, high"):
        PressureGate(high=0.1, low=0.2)


def _stat(path: Path, busy: int, idle: int) -> None:
    # A stand-in for /proc/stat (this host's own numbers cannot be set): user nice system idle
    # iowait irq softirq steal, in clock ticks.
    path.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")


def test_others_share_is_host_busy_time_minus_our_own(tmp_path: Path) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    cpus = len(os.sched_getaffinity(0))
    stat = tmp_path / "stat"
    ours = [0.0]
    pressure = HostPressure(lambda: ours[0], every=0.0, stat=str(stat))
    _stat(stat, busy=0, idle=0)
    assert pressure.cpu_reading(now=100.0) == 0.0  # the first reading has nothing to compare with
    # Over 10 s the host was busy for 10 s per CPU: all of it ours, then none of it.
    _stat(stat, busy=10 * cpus * ticks, idle=0)
    ours[0] = 10.0 * cpus
    assert pressure.cpu_reading(now=110.0) == pytest.approx(0.0)
    _stat(stat, busy=20 * cpus * ticks, idle=0)
    assert pressure.cpu_reading(now=120.0) == pytest.approx(1.0)
    _stat(stat, busy=25 * cpus * ticks, idle=5 * cpus * ticks)  # half busy, by others
    assert pressure.cpu_reading(now=130.0) == pytest.approx(0.5)


def test_a_busy_loop_of_another_process_reads_as_others_pressure() -> None:
    """Real: a process that is not ours spinning on a core shows as others' share."""
    pressure = HostPressure(every=0.0)
    least = 0.25 / len(os.sched_getaffinity(0))  # a quarter of the one core it keeps busy
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        pressure.cpu_reading()
        readings: list[float] = []
        deadline = time.monotonic() + 30  # a deadlock guard: the first reading usually does
        while not readings or (readings[-1] < least and time.monotonic() < deadline):
            time.sleep(0.2)  # an interval to measure over, not a wait for the spinner
            readings.append(pressure.cpu_reading())
        assert readings[-1] >= least, readings
    finally:
        spinner.kill()
        spinner.wait()


def test_available_memory_is_what_the_host_has_free() -> None:
    assert 0 < available_memory() <= host_memory()


def test_memory_and_cpu_pressure_tighten_their_own_budget() -> None:
    budget = Budget(4 * GiB, 2.0)
    assert budget.tightened(Pressure(memory=1.0), 0.5) == Budget(2 * GiB, 2.0)
    assert budget.tightened(Pressure(cpu=1.0), 0.5) == Budget(4 * GiB, 1.0)
    assert budget.tightened(0.5, 1.0) == Budget(2 * GiB, 1.0)
