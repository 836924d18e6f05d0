"""The cost of the sandbox: start-to-result of a trivial run, sandboxed and plain, beside
bubblewrap and util-linux ``unshare`` running the same command.

    python bench/sandbox_bench.py [--runs 50]

Each contender runs ``true`` (and, for the governor, also a trivial ``__main__`` function)
``--runs`` times, one after another; the table shows the median and the 90th percentile in
milliseconds. The governor runs with its defaults (its own fork server, cgroup limits where
the host has them). ``bwrap --unshare-all`` gets a read-only root, /dev and /proc, as its
manual's minimal sandbox; ``unshare --fork --pid --net --mount`` only the namespaces. What
each one protects differs: see the README's comparison.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import governor


def trivial() -> int:
    return 1


def timed(runs: int, once: Callable[[], object]) -> list[float]:
    once()  # warm: the fork server, the page cache
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        once()
        times.append((time.perf_counter() - began) * 1000)
    return times


def check(record: governor.Execution) -> None:
    if not record.ok:
        raise RuntimeError(f"a benchmark run failed: {record}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50)
    runs = parser.parse_args().runs
    contenders: list[tuple[str, Callable[[], object]]] = [
        ("subprocess.run(['true']) (no isolation)", lambda: subprocess.run(["true"], check=True)),
        ("governor.run(['true'])", lambda: check(governor.run(["true"]))),
        ("governor.run(['true'], sandbox=True)", lambda: check(governor.run(["true"], sandbox=True))),
        ("governor.run(f), f in __main__", lambda: check(governor.run(trivial))),
        ("governor.run(f, sandbox=True)", lambda: check(governor.run(trivial, sandbox=True))),
    ]
    if shutil.which("bwrap"):
        bwrap = ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "true"]
        contenders.append(
            ("bwrap --unshare-all (ro /, /dev, /proc) true", lambda: subprocess.run(bwrap, check=True))
        )
    else:
        print("bwrap not found: install bubblewrap to compare with it", file=sys.stderr)
    unshare = ["unshare", "--fork", "--pid", "--net", "--mount", "true"]
    contenders.append(
        ("unshare --fork --pid --net --mount true", lambda: subprocess.run(unshare, check=True))
    )
    print(f"{runs} runs each, one at a time; milliseconds from start to result\n")
    print(f"| {'contender':<48} | {'median':>7} | {'p90':>7} |")
    print(f"|{'-' * 50}|{'-' * 9}|{'-' * 9}|")
    for name, once in contenders:
        times = sorted(timed(runs, once))
        p90 = times[int(len(times) * 0.9) - 1]
        print(f"| {name:<48} | {statistics.median(times):7.2f} | {p90:7.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
