"""``Limits``: what one execution may use, validated when it is built."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

from policies._units import format_duration, format_size, parse_duration, parse_size, whole_number

SizeLike = int | float | str
DurationLike = int | float | str | timedelta

# Limits whose value 0 would forbid the execution from running at all, and so is a mistake.
_POSITIVE = ("memory", "memory_high", "cpu_time", "cpu_rate", "wall_time", "pids", "open_files")

# Spellings accepted by ``Limits.from_mapping`` (task files, CLI) beside the field names.
_ALIASES = {"cpu": "cpu_rate", "timeout": "wall_time", "processes": "pids", "nofile": "open_files"}


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """Resource limits for one execution; ``None`` means unlimited.

    - ``memory``: bytes for the whole process tree (also ``"512M"``, ``"1.5GiB"``).
    - ``memory_high``: a soft limit below ``memory``: past it the kernel reclaims the tree's
      memory and throttles it, before the hard limit kills (cgroup v2 ``memory.high``).
    - ``cpu_time``: seconds of user + system CPU (also ``"5m"``).
    - ``cpu_rate``: cores the tree may keep busy on average, e.g. ``0.5``.
    - ``wall_time``: seconds from start to forced end (also ``"90s"``, ``"2m"``).
    - ``pids``: processes and threads alive at once in the tree.
    - ``open_files``: file descriptors per process.
    - ``file_size``: largest file a process may write, bytes (``0`` forbids writing files).

    Invalid values raise ``ValueError`` naming the field and the value.
    """

    memory: int | None = None
    memory_high: int | None = None
    cpu_time: float | None = None
    cpu_rate: float | None = None
    wall_time: float | None = None
    pids: int | None = None
    open_files: int | None = None
    file_size: int | None = None

    def __init__(
        self,
        *,
        memory: SizeLike | None = None,
        memory_high: SizeLike | None = None,
        cpu_time: DurationLike | None = None,
        cpu_rate: float | int | str | None = None,
        wall_time: DurationLike | None = None,
        pids: int | None = None,
        open_files: int | None = None,
        file_size: SizeLike | None = None,
    ) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "memory", _opt(memory, lambda v: parse_size(v, field="memory")))
        setattr_(self, "memory_high", _opt(memory_high, lambda v: parse_size(v, field="memory_high")))
        setattr_(self, "cpu_time", _opt(cpu_time, lambda v: parse_duration(v, field="cpu_time")))
        setattr_(self, "cpu_rate", _opt(cpu_rate, _cpu_rate))
        setattr_(self, "wall_time", _opt(wall_time, lambda v: parse_duration(v, field="wall_time")))
        setattr_(self, "pids", _opt(pids, lambda v: _at_most("pids", whole_number("pids", v), PID_MAX_LIMIT)))
        setattr_(
            self,
            "open_files",
            _opt(open_files, lambda v: _at_most("open_files", whole_number("open_files", v), _nr_open())),
        )
        setattr_(self, "file_size", _opt(file_size, lambda v: parse_size(v, field="file_size")))
        for name in _POSITIVE:
            if getattr(self, name) == 0:
                raise ValueError(f"{name}: must be greater than zero, got 0 (omit it for no limit)")
        if self.memory_high is not None and self.memory is not None and self.memory_high >= self.memory:
            raise ValueError(
                f"memory_high: a soft limit below memory ({format_size(self.memory)}), "
                f"got {format_size(self.memory_high)}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str = "limits") -> Limits:
        """Build from a mapping such as a TOML table; ``cpu`` and ``timeout`` are accepted as
        aliases of ``cpu_rate`` and ``wall_time``. Unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        written: dict[str, str] = {}  # field -> the key the caller wrote, for error messages
        for key, value in values.items():
            name = _ALIASES.get(key, key)
            if name not in known:
                allowed = ", ".join(sorted(known | set(_ALIASES)))
                raise ValueError(f"{where}: unknown limit {key!r} (known: {allowed})")
            if name in kwargs:
                raise ValueError(f"{where}.{key}: the same limit as {written[name]!r}; give one of them")
            kwargs[name] = value
            written[name] = key
        try:
            return cls(**kwargs)
        except ValueError as error:
            name, _, message = str(error).partition(": ")
            raise ValueError(f"{where}.{written.get(name, name)}: {message}") from None

    def as_dict(self) -> dict[str, int | float]:
        """The limits that are set, as plain numbers (bytes, seconds, cores, counts)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def merged(self, other: Limits) -> Limits:
        """These limits, with each one ``other`` sets taking the place of this one's (field by
        field: a pool's ``wall_time`` stays when a call's options set only ``memory``)."""
        merged: dict[str, Any] = {**self.as_dict(), **other.as_dict()}
        return Limits(**merged)

    def __bool__(self) -> bool:
        return bool(self.as_dict())

    def __repr__(self) -> str:
        shown = []
        for name, value in self.as_dict().items():
            if name in ("memory", "memory_high", "file_size"):
                shown.append(f"{name}={format_size(value)}")
            elif name in ("cpu_time", "wall_time"):
                shown.append(f"{name}={format_duration(value)}")
            else:
                shown.append(f"{name}={value}")
        return f"Limits({', '.join(shown)})"


PID_MAX_LIMIT = 1 << 22  # the most pids a 64-bit kernel will ever hand out
CPU_RATE_MAX = 4096.0  # cores: more than Linux runs on one machine (and than cgroup quotas take)


def _at_most(name: str, value: int, bound: int) -> int:
    if value > bound:
        raise ValueError(f"{name}: at most {bound} (what the kernel accepts here), got {value!r}")
    return value


def _nr_open() -> int:
    """The kernel's bound on open files per process (``fs.nr_open``)."""
    try:
        with open("/proc/sys/fs/nr_open") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return 1 << 20  # the kernel's default


def _opt(value: Any, convert: Any) -> Any:
    return None if value is None else convert(value)


def _cpu_rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"cpu_rate: expected a number of cores, got {value!r}")
    try:
        rate = float(value)
    except ValueError:
        raise ValueError(f"cpu_rate: expected a number of cores, got {value!r}") from None
    if math.isnan(rate) or math.isinf(rate) or rate < 0:
        raise ValueError(f"cpu_rate: must be a finite, positive number of cores, got {value!r}")
    if rate > CPU_RATE_MAX:
        raise ValueError(f"cpu_rate: at most {CPU_RATE_MAX:.0f} cores, got {value!r}")
    return rate
