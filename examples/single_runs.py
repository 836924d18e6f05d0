"""A tour of governed execution: well-behaved work, and the ways work goes wrong.

Run with ``make demo``. Each line is one real execution in a fresh, confined child process;
the table shows how it ended, what it really used, and what enforced its limits.
"""

from __future__ import annotations

import sys
import time

import governor
from governor import Limits, format_duration, format_size


def checksum(n: int) -> int:
    """Honest work: a small CPU-bound loop."""
    return sum(i * i % 7 for i in range(n))


def leaky(step_mib: int) -> None:
    """A job that keeps allocating, like a cache that never evicts."""
    hoard = []
    while True:
        hoard.append(bytearray(step_mib << 20))


def spin(seconds: float) -> float:
    """A busy loop; under a CPU-rate limit it gets only its share of a core."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return time.process_time()


def flaky() -> None:
    raise RuntimeError("the upstream API said 503")


JOBS = [
    ("checksum (well-behaved)", checksum, (2_000_000,), Limits(memory="256MiB", wall_time="30s")),
    ("leaky cache, 150 MiB cap", leaky, (16,), Limits(memory="150MiB")),
    ("busy loop, 0.5 core cap", spin, (1.5,), Limits(cpu_rate=0.5)),
    ("busy loop, 0.4 s of CPU", spin, (30,), Limits(cpu_time=0.4)),
    ("flaky upstream call", flaky, (), Limits()),
    ("sleep 60 with a 1 s timeout", ["sleep", "60"], (), Limits(wall_time="1s")),
    (
        "python3 allocating 1 GB, 100 MiB cap",
        [sys.executable, "-c", "b = bytearray(10**9)"],
        (),
        Limits(memory="100M"),
    ),
]


def main() -> None:
    header = f"{'job':<40} {'outcome':<18} {'peak memory':>12} {'cpu':>8} {'wall':>8}  enforced by"
    print(header)
    print("-" * len(header))
    for name, target, args, limits in JOBS:
        record = governor.run(target, *args, limits=limits, sample_interval=0.05)
        enforced = ", ".join(f"{k}={v}" for k, v in record.enforcement.items()) or "-"
        print(
            f"{name:<40} {record.outcome!s:<18} {format_size(record.usage.peak_memory_bytes):>12} "
            f"{record.usage.cpu_seconds:>7.2f}s {format_duration(record.usage.wall_seconds):>8}  {enforced}"
        )
        if record.error is not None and not record.ok:
            print(f"{'':<40} └ {record.error.type}: {record.error.message}")
    print("\nThe same from the command line (exit status 121 = memory_exceeded):")
    print('  governor run --memory 100M -- python3 -c "b = bytearray(10**9)"')


if __name__ == "__main__":
    main()
