"""Host pressure: the hysteresis gate (pure) and the PSI reader (on a stand-in file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from governor._budget import HostPressure
from policies import PressureGate


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
    # A stand-in for /proc/pressure/memory, whose values this machine cannot be made to show.
    source = tmp_path / "memory"
    source.write_text(
        "some avg10=35.00 avg60=10.00 avg300=1.00 total=123\nfull avg10=5.00 avg60=1.00 avg300=0.00 total=9\n"
    )
    pressure = HostPressure(every=0.0, source=str(source))
    assert pressure.reading() == pytest.approx(0.35)
    assert pressure() == pytest.approx(0.35)
    source.write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=123\n")
    assert pressure() == 0.0


def test_without_psi_memory_in_use_stands_in(tmp_path: Path) -> None:
    reading = HostPressure(source=str(tmp_path / "absent")).reading()
    assert 0.0 <= reading <= 1.0
