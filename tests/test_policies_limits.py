"""``Limits`` and the unit parsers: pure, no processes."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from policies import Limits, format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512", 512),
        ("512M", 512 << 20),
        ("512MiB", 512 << 20),
        ("1.5GiB", 3 << 29),
        ("100kB", 100_000),
        ("2g", 2 << 30),
        ("1MB", 1_000_000),
        (" 64 KiB ", 64 << 10),
        (4096, 4096),
        (1.5, 1),
    ],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", 90),
        ("2m", 120),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("1.5h", 5400),
        ("3", 3),
        (2.5, 2.5),
        (timedelta(minutes=1), 60),
        ("1d", 86400),
    ],
)
def test_durations(text: object, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory": "12XB"}, "memory: unknown size unit 'XB'"),
        ({"memory": -1}, "memory: must not be negative, got -1"),
        ({"memory": 0}, "memory: must be greater than zero"),
        ({"memory": float("nan")}, "memory: must be a finite number"),
        ({"memory": True}, "memory: expected a number or a string, got True"),
        ({"memory": [1]}, "memory: expected a number or a string"),
        ({"cpu_time": "5 fortnights"}, "cpu_time: unknown time unit"),
        ({"cpu_rate": float("inf")}, "cpu_rate: must be a finite, positive number"),
        ({"cpu_rate": "lots"}, "cpu_rate: expected a number of cores, got 'lots'"),
        ({"wall_time": "abc"}, "wall_time: cannot read 'abc' as a duration"),
        ({"wall_time": -5}, "wall_time: must not be negative, got -5"),
        ({"pids": 0}, "pids: must be greater than zero"),
        ({"pids": 2.5}, "pids: expected a whole number, got 2.5"),
        ({"open_files": -3}, "open_files: must not be negative"),
        ({"file_size": "1ZB"}, "file_size: unknown size unit"),
    ],
)
def test_invalid_limits_name_the_field_and_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Limits(**kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_limits_are_frozen_and_readable() -> None:
    limits = Limits(memory="512MiB", wall_time="90s", cpu_rate=0.5, file_size=0)
    assert limits.memory == 512 << 20 and limits.wall_time == 90 and limits.file_size == 0
    assert repr(limits) == "Limits(memory=512.0 MiB, cpu_rate=0.5, wall_time=1m30s, file_size=0 B)"
    with pytest.raises(AttributeError):
        limits.memory = 1  # type: ignore[misc]
    assert not Limits() and limits
    assert limits == Limits(memory=512 << 20, wall_time=90, cpu_rate=0.5, file_size=0)


def test_from_mapping_accepts_aliases_and_names_unknown_keys() -> None:
    limits = Limits.from_mapping({"memory": "1G", "cpu": 1.5, "timeout": "20m"})
    assert limits.cpu_rate == 1.5 and limits.wall_time == 1200
    with pytest.raises(ValueError, match=r"task\.limits: unknown limit 'memroy'"):
        Limits.from_mapping({"memroy": "1G"}, where="task.limits")
    with pytest.raises(ValueError, match=r"task\.limits\.memory: unknown size unit"):
        Limits.from_mapping({"memory": "1Q"}, where="task.limits")


def test_formatting() -> None:
    assert format_size(1536) == "1.5 KiB"
    assert format_size(None) == "-"
    assert format_duration(0.25) == "250ms"
    assert format_duration(125) == "2m05s"
    assert not math.isnan(parse_duration("0s"))
