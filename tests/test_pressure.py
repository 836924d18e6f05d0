"""Host pressure: the hysteresis gate (pure) and the PSI reader (on a stand-in file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from governor.scheduling._budget import HostPressure
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


def test_psi_is_read_and_gated(tmp_path: Path) -> None:
    # Stand-ins for /proc/pressure/{memory,cpu}, whose values this machine cannot be made to show.
    memory, cpu = tmp_path / "memory", tmp_path / "cpu"
    memory.write_text(
        "some avg10=35.00 avg60=10.00 avg300=1.00 total=123\nfull avg10=5.00 avg60=1.00 avg300=0.00 total=9\n"
    )
    cpu.write_text("some avg10=5.00 avg60=1.00 avg300=0.00 total=7\n")
    pressure = HostPressure(every=0.0, source=str(memory), cpu_source=str(cpu))
    assert pressure.reading() == pytest.approx(0.35)
    assert pressure() == Pressure(pytest.approx(0.35), 0.0)  # cpu below the gate's 0.2
    memory.write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=123\n")
    cpu.write_text("some avg10=60.00 avg60=1.00 avg300=0.00 total=7\n")
    assert pressure() == Pressure(0.0, pytest.approx(0.6))


def test_without_psi_memory_in_use_and_load_stand_in(tmp_path: Path) -> None:
    pressure = HostPressure(source=str(tmp_path / "absent"), cpu_source=str(tmp_path / "absent too"))
    assert 0.0 <= pressure.reading() <= 1.0 and 0.0 <= pressure.cpu_reading() <= 1.0


def test_memory_and_cpu_pressure_tighten_their_own_budget() -> None:
    budget = Budget(4 * GiB, 2.0)
    assert budget.tightened(Pressure(memory=1.0), 0.5) == Budget(2 * GiB, 2.0)
    assert budget.tightened(Pressure(cpu=1.0), 0.5) == Budget(4 * GiB, 1.0)
    assert budget.tightened(0.5, 1.0) == Budget(2 * GiB, 1.0)
