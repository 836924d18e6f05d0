"""What supervising many running executions costs the supervisor: 50 sleeping children, each
sampled every 100 ms (the default), with a memory limit, through ``GovernedExecutor(50)``.

The figure is the supervisor process's own CPU time (every thread) over ``--seconds`` while
all 50 sleep, as a share of one core, per enforcement mode this host offers: a cgroup mode
(counter files read with one ``pread`` each, kept open) and the no-cgroup mode (each tree read
through /proc children files and held /proc/<pid> descriptors). Samples of every execution
fall on one shared grid, so the loop wakes once per tick for all of them.

    python bench/sampling_bench.py [--children 50] [--seconds 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from governor import GovernedExecutor, Limits
from runner._enforcement import resolve


def sleeper(ready: str, gate: str) -> None:
    """Say it is ready, then sleep until the benchmark opens the gate."""
    Path(ready).touch()
    with open(gate, "rb") as fifo:  # blocks, asleep, until the writer closes
        fifo.read()


def supervisor_share(children: int, seconds: float, enforcement: str) -> float:
    with tempfile.TemporaryDirectory() as directory:
        gate = os.path.join(directory, "gate")
        os.mkfifo(gate)
        with GovernedExecutor(children, limits=Limits(memory="200MiB"), enforcement=enforcement) as pool:
            ready = [os.path.join(directory, f"ready-{n}") for n in range(children)]
            futures = [pool.submit(sleeper, path, gate) for path in ready]
            deadline = time.monotonic() + 120
            while not all(os.path.exists(path) for path in ready):
                if time.monotonic() > deadline:
                    raise RuntimeError("the children did not all start")
                time.sleep(0.05)
            time.sleep(0.5)  # past the first samples: measure the steady state
            cpu, wall = time.process_time(), time.monotonic()
            time.sleep(seconds)
            share = (time.process_time() - cpu) / (time.monotonic() - wall)
            with open(gate, "wb"):
                pass  # every sleeper's read returns: they end
            for future in futures:
                future.result()
    return share


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--children", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    modes = [str(resolve("auto"))]
    if modes[0] != "rlimit":
        modes.append("rlimit")
    print(
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; {arguments.children} sleeping children"
        f" sampled every 100 ms for {arguments.seconds:g} s; median of {arguments.repeat}"
    )
    print(f"| {'enforcement':<12} | {'supervisor CPU (share of a core)':>34} | {'range':>15} |")
    print(f"|{'-' * 14}|{'-' * 36}|{'-' * 17}|")
    for mode in modes:
        shares = [
            supervisor_share(arguments.children, arguments.seconds, mode) for _ in range(arguments.repeat)
        ]
        spread = f"{min(shares) * 100:.2f}-{max(shares) * 100:.2f}%"
        print(f"| {mode:<12} | {statistics.median(shares) * 100:>33.2f}% | {spread:>15} |")


if __name__ == "__main__":
    main()
