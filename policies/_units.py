"""Parsing and formatting of sizes ("512MiB") and durations ("90s", "1h30m").

Pure functions: no I/O, no clock. Every parse error is a ``ValueError`` whose message names
the field being parsed and the offending value, so a bad config line can be found at once.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any

# K/M/G/T and KiB/MiB/... are powers of 1024 (as systemd and docker read them);
# KB/MB/GB/TB are powers of 1000 (as the SI and disk vendors read them).
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}

_DURATION_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(rf"^\s*({_NUMBER})\s*([a-zA-Z]*)\s*$")
_DURATION_PART_RE = re.compile(rf"({_NUMBER})\s*([a-zA-Z]*)")


def _reject_non_number(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{field}: expected a number or a string, got {value!r}")


def _finite(field: str, value: float, original: object) -> float:
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{field}: must be a finite number, got {original!r}")
    return value


def finite_number(field: str, value: Any) -> float:
    """``value`` as a finite float; ``ValueError`` naming ``field`` for bools, NaN, infinities
    and anything that is not an int or a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field}: expected a number, got {value!r}")
    return _finite(field, float(value), value)


def whole_number(field: str, value: Any) -> int:
    """``value`` as an int >= 0 (a float with no fraction is accepted); ``ValueError`` naming
    ``field`` otherwise."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: expected a whole number, got {value!r}")
    if value < 0:
        raise ValueError(f"{field}: must not be negative, got {value!r}")
    return value


def parse_size(value: int | float | str, *, field: str = "size") -> int:
    """Return ``value`` as a whole number of bytes.

    Accepts an int or float of bytes, or a string such as ``"512M"``, ``"1.5GiB"``,
    ``"100kB"``. Negative values, NaN and unknown units raise ``ValueError``.
    """
    _reject_non_number(field, value)
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if not match:
            raise ValueError(f"{field}: cannot read {value!r} as a size (try '512MiB' or '2G')")
        number, unit = match.groups()
        factor = _SIZE_UNITS.get(unit.lower())
        if factor is None:
            known = ", ".join(u for u in ("B", "KiB", "MiB", "GiB", "TiB", "KB", "MB", "GB", "TB"))
            raise ValueError(f"{field}: unknown size unit {unit!r} in {value!r} (use {known})")
        amount = float(number) * factor
    else:
        amount = float(value)
    amount = _finite(field, amount, value)
    if amount < 0:
        raise ValueError(f"{field}: must not be negative, got {value!r}")
    if amount > MAX_BYTES:
        raise ValueError(f"{field}: at most 1 EiB, got {value!r}")
    return int(amount)


_ZERO = 0.0
# Bounds of what a limit or a schedule can mean: beyond any machine's memory or disk, and a
# span that a datetime and a monotonic deadline can still hold (ten thousand years would not).
MAX_BYTES = 1 << 60
MAX_SECONDS = 100 * 365.25 * 86400


def parse_duration(value: int | float | str | timedelta, *, field: str = "duration") -> float:
    """Return ``value`` as seconds (a float).

    Accepts seconds as a number, a ``timedelta``, or a string such as ``"90s"``, ``"2m"``,
    ``"1h30m"``, ``"500ms"``; a bare number string means seconds.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    else:
        _reject_non_number(field, value)
        seconds = _duration_from_text(value, field) if isinstance(value, str) else float(value)
    seconds = _finite(field, seconds, value)
    if seconds < 0:
        raise ValueError(f"{field}: must not be negative, got {value!r}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{field}: at most 100 years ({MAX_SECONDS:.0f}s), got {value!r}")
    return seconds if seconds else _ZERO  # one zero for every unset duration


def _duration_from_text(text: str, field: str) -> float:
    compact = text.strip()
    if not compact:
        raise ValueError(f"{field}: empty duration {text!r}")
    total = 0.0
    position = 0
    for match in _DURATION_PART_RE.finditer(compact):
        if compact[position : match.start()].strip():
            break
        number, unit = match.groups()
        factor = _DURATION_UNITS.get(unit.lower() or "s")
        if factor is None:
            units = ", ".join(_DURATION_UNITS)
            raise ValueError(f"{field}: unknown time unit {unit!r} in {text!r} (use {units})")
        total += float(number) * factor
        position = match.end()
    if position == 0 or compact[position:].strip():
        raise ValueError(f"{field}: cannot read {text!r} as a duration (try '90s' or '2m')")
    return total


def format_size(size: float | None) -> str:
    """A human reading of a byte count: ``format_size(1536) == '1.5 KiB'``."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_duration(seconds: float | None) -> str:
    """A human reading of seconds: ``'850ms'``, ``'12.3s'``, ``'2m05s'``, ``'1h02m'``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
