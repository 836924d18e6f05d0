"""Host pressure: the hysteresis gate (pure), and others' share of the CPU, read from the host
and told apart from what the governor's own work uses."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import task_helpers as th
from conftest import wait_until
from guards import guard

import governor
from governor import Enforcement, Limits
from governor.scheduling._budget import HostPressure, available_memory, host_memory
from policies import Budget, Pressure, PressureGate
from runner import executions_cgroup
from runner._cgroup_v2 import mount_point, own_path
from runner._enforcement import cgroup_unavailable

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
    pressure = HostPressure(lambda: ours[0], every=0.0, stat=str(stat), cgroup=None)
    _stat(stat, busy=0, idle=0)
    assert pressure.read(now=100.0).cpu == 0.0  # the first reading has nothing to compare with
    # Over 10 s the host was busy for 10 s per CPU: all of it ours, then none of it.
    _stat(stat, busy=10 * cpus * ticks, idle=0)
    ours[0] = 10.0 * cpus
    assert pressure.read(now=110.0).cpu == pytest.approx(0.0)
    _stat(stat, busy=20 * cpus * ticks, idle=0)
    assert pressure.read(now=120.0).cpu == pytest.approx(1.0)
    _stat(stat, busy=25 * cpus * ticks, idle=5 * cpus * ticks)  # half busy, by others
    assert pressure.read(now=130.0).cpu == pytest.approx(0.5)


def test_a_busy_loop_of_another_process_reads_as_others_pressure() -> None:
    """Real: a process that is not ours spinning on a core shows as others' share."""
    pressure = HostPressure(every=0.0)
    least = 0.25 / len(os.sched_getaffinity(0))  # a quarter of the one core it keeps busy
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        pressure.read()
        readings: list[float] = []
        deadline = time.monotonic() + 30  # a deadlock guard: the first reading usually does
        while not readings or (readings[-1] < least and time.monotonic() < deadline):
            time.sleep(0.2)  # an interval to measure over, not a wait for the spinner
            readings.append(pressure.read().cpu)
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


def _psi(path: Path, total_us: int) -> None:
    # A stand-in for a pressure file (this host's counters cannot be set).
    path.write_text(f"some avg10=0.00 avg60=0.00 avg300=0.00 total={total_us}\nfull total=0\n")


def test_on_cgroup_v2_others_stall_is_the_hosts_minus_our_executions(tmp_path: Path) -> None:
    host, ours = tmp_path / "pressure", tmp_path / "governor"
    host.mkdir()
    ours.mkdir()
    stat = tmp_path / "stat"
    _stat(stat, busy=0, idle=0)
    pressure = HostPressure(lambda: 0.0, every=0.0, stat=str(stat), psi=str(host), cgroup=str(ours))
    for name, seconds in (("cpu", 0), ("memory", 0)):
        _psi(host / name, seconds)
        _psi(ours / f"{name}.pressure", seconds)
    assert pressure.read(now=0.0) == Pressure()
    # Over 10 s: the host stalled on memory 6 s, 5 of them ours; on CPU 2 s, none ours.
    _psi(host / "memory", 6_000_000)
    _psi(ours / "memory.pressure", 5_000_000)
    _psi(host / "cpu", 2_000_000)
    assert pressure.read(now=10.0) == Pressure(memory=pytest.approx(0.1), cpu=pytest.approx(0.2))
    assert pressure.readings["source"] == "cgroup2 psi"
    assert pressure.readings["ours_stalled"] == {"cpu": 0.0, "memory": pytest.approx(0.5)}
    # Our own stall alone, however deep, is no one else's.
    _psi(host / "memory", 16_000_000)
    _psi(ours / "memory.pressure", 15_000_000)
    assert pressure.read(now=20.0).memory == pytest.approx(0.0)
    # Without our cgroup's files (v1, no cgroups, PSI off): CPU time only, memory left to
    # what the host has available.
    (ours / "memory.pressure").unlink()
    (ours / "cpu.pressure").unlink()
    pressure.read(now=30.0)
    assert pressure.read(now=40.0) == Pressure() and pressure.readings["source"] == "cpu time"


def _cgroup2_or_skip() -> None:
    reason = cgroup_unavailable(Enforcement.CGROUP2)
    if reason is not None:
        pytest.skip(f"needs cgroup v2 (the cgroup v2 lane runs it): {reason}")


def test_on_cgroup_v2_our_own_memory_stall_holds_nothing_back_and_a_tenants_does(tmp_path: Path) -> None:
    """Real: an execution of ours held above its memory_high stalls on memory in our cgroup
    and reads as ours, not others'; a process in a cgroup of its own doing the same reads
    as another tenant's pressure."""
    _cgroup2_or_skip()
    stop = tmp_path / "stop"
    records = []
    limits = Limits(memory="256MiB", memory_high="32MiB", wall_time=guard(120))
    ours = threading.Thread(
        target=lambda: records.append(governor.run(th.press_on_memory, str(stop), limits=limits)), daemon=True
    )
    ours.start()
    pressure = HostPressure(every=0.0)
    seen: list[dict[str, object]] = []

    def stalled(key: str) -> float:
        pressure.read()
        seen.append(pressure.readings)
        return float(pressure.readings.get(key, {}).get("memory", 0.0))  # type: ignore[union-attr]

    try:
        wait_until(lambda: executions_cgroup() is not None, timeout=guard(60))
        pressure.read()
        wait_until(lambda: stalled("ours_stalled") > 0.01, timeout=guard(120), interval=0.2)
        ours_reading = seen[-1]
    finally:
        stop.touch()
        ours.join(guard(120))
    assert records and records[0].ok, records
    assert records[0].usage.memory_high_events > 0 and records[0].usage.stall_seconds["memory"] > 0
    others = ours_reading["others_stalled"]["memory"]  # type: ignore[index]
    assert others < ours_reading["ours_stalled"]["memory"], seen  # type: ignore[index]

    # The control: the same pressure from a process in a cgroup that is not ours.
    mount = mount_point()
    assert mount is not None
    tenant = Path(mount + own_path().rstrip("/")) / f"tenant-{os.getpid()}"
    tenant.mkdir()
    other_stop = tmp_path / "other-stop"
    try:
        (tenant / "memory.high").write_text(str(32 << 20))
        (tenant / "memory.max").write_text(str(256 << 20))
        code = (
            f"open({str(tenant / 'cgroup.procs')!r}, 'w').write(str(__import__('os').getpid()))\n"
            f"import task_helpers\ntask_helpers.press_on_memory({str(other_stop)!r})"
        )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
        tenant_process = subprocess.Popen([sys.executable, "-c", code], env=env)
        try:
            pressure.read()
            wait_until(lambda: stalled("others_stalled") > 0.01, timeout=guard(120), interval=0.2)
        finally:
            other_stop.touch()
            tenant_process.wait(guard(60))
    finally:
        tenant.rmdir()
