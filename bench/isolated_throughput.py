"""Fresh-process-per-call throughput and latency, as users get them, side by side in one run.

Everything runs the defaults: ``GovernedExecutor(2)`` with admission on (80% of memory, all
CPUs) and the default fork server, no preloading. The task is trivial, defined in this
script's ``__main__`` (it travels by value, as a script's or a notebook's functions do) and,
beside it, the same function imported from a module (``bench_tasks.trivial``).

- raw fork            os.fork() per task, result over a pipe, 2 at a time, from a fresh
                      interpreter that has imported what a script using governor imports
                      (``import governor``): the floor ratios are taken against, measured in
                      the same run; beside it, the same from a bare interpreter (the host's
                      limit for any fork-per-task) and from this benchmark's own process
- GovernedExecutor    N calls submitted at once (N queued), then waited for; N = 100, 1,000,
                      10,000: the rate must not fall as the queue grows
- governor.run        one call at a time, blocking: the latency of a single isolated call
- ProcessPoolExecutor max_tasks_per_child=1 (a fresh interpreter per call, spawn), and pebble
                      ProcessPool(max_tasks=1): the isolation today's tools give; fewer calls

``--busy`` runs the same while two busy loops of ours (ended by pid) keep both cores loaded.
Rounds are interleaved (every contender once per round) and each figure is the median of
``--repeat`` rounds.

    python bench/isolated_throughput.py [--repeat 3] [--busy] [--quick]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tasks
from host_load import busy_loops
from raw_fork import IN_FLIGHT, raw_fork

import governor
from governor import GovernedExecutor
from runner._enforcement import resolve


def trivial(index: int) -> int:
    """The task, defined in ``__main__``: it travels by value."""
    return index * 2


def raw_fork_elsewhere(tasks: int, imports: tuple[str, ...]) -> float:
    """``raw_fork`` in a fresh interpreter that first imports ``imports``, and nothing else."""
    command = [sys.executable, str(Path(__file__).with_name("raw_fork.py")), str(tasks), *imports]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def executor(function: Callable[[int], int], calls: int) -> float:
    """All ``calls`` submitted at once to a default ``GovernedExecutor(2)``, then awaited."""
    with GovernedExecutor(IN_FLIGHT) as pool:
        start = time.perf_counter()
        futures = [pool.submit(function, n) for n in range(calls)]
        for future in futures:
            future.result()
        return calls / (time.perf_counter() - start)


def single_runs(function: Callable[[int], int], calls: int) -> float:
    """Median seconds of one blocking ``governor.run`` call."""
    latencies = []
    for n in range(calls):
        start = time.perf_counter()
        assert governor.run(function, n).ok
        latencies.append(time.perf_counter() - start)
    return statistics.median(latencies)


def pool_single(make: Callable[[], concurrent.futures.Executor], calls: int) -> float:
    """Median seconds of one call submitted and awaited on its own (as ``governor.run``)."""
    latencies = []
    with make() as pool:
        for n in range(calls):
            start = time.perf_counter()
            pool.submit(bench_tasks.trivial, n).result()
            latencies.append(time.perf_counter() - start)
    return statistics.median(latencies)


def pool_throughput(make: Callable[[], concurrent.futures.Executor], calls: int) -> float:
    with make() as pool:
        start = time.perf_counter()
        for future in [pool.submit(bench_tasks.trivial, n) for n in range(calls)]:
            future.result()
        return calls / (time.perf_counter() - start)


def process_pool() -> concurrent.futures.Executor:
    # max_tasks_per_child refuses the fork context; its default then is spawn.
    return concurrent.futures.ProcessPoolExecutor(IN_FLIGHT, max_tasks_per_child=1)


class _Pebble:
    """pebble's schedule() in the Executor shape the measurements expect."""

    def __init__(self) -> None:
        import pebble

        self.pool = pebble.ProcessPool(max_workers=IN_FLIGHT, max_tasks=1)

    def submit(self, function: Callable[[int], int], argument: int) -> concurrent.futures.Future[int]:
        return self.pool.schedule(function, args=(argument,))

    def __enter__(self) -> _Pebble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.close()
        self.pool.join()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="two outside busy loops keep the cores loaded")
    parser.add_argument("--quick", action="store_true", help="N up to 1,000 only (about a minute)")
    arguments = parser.parse_args()
    sizes = (100, 1000) if arguments.quick else (100, 1000, 10_000)
    rates: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {}
    floor_name = "raw os.fork() loop, `import governor`d (floor)"
    rows: list[tuple[str, int, Callable[[], float], dict[str, list[float]]]] = [
        (floor_name, 1000, partial(raw_fork_elsewhere, 1000, ("governor",)), rates),
        ("raw os.fork() loop, bare interpreter", 1000, partial(raw_fork_elsewhere, 1000, ()), rates),
        ("raw os.fork() loop, this benchmark's process", 1000, partial(raw_fork, 1000), rates),
    ]
    for n in sizes:
        rows.append(
            (f"GovernedExecutor(2), __main__ function, {n} queued", n, partial(executor, trivial, n), rates)
        )
    imported = partial(executor, bench_tasks.trivial, 1000)
    rows += [
        ("GovernedExecutor(2), imported function, 1000 queued", 1000, imported, rates),
        (
            "ProcessPoolExecutor(2, max_tasks_per_child=1)",
            40,
            partial(pool_throughput, process_pool, 40),
            rates,
        ),
        ("pebble ProcessPool(2, max_tasks=1)", 40, partial(pool_throughput, _Pebble, 40), rates),
        ("governor.run, __main__ function", 200, partial(single_runs, trivial, 200), latencies),
        ("governor.run, imported function", 200, partial(single_runs, bench_tasks.trivial, 200), latencies),
        ("ProcessPoolExecutor(max_tasks_per_child=1)", 20, partial(pool_single, process_pool, 20), latencies),
        ("pebble ProcessPool(max_tasks=1)", 20, partial(pool_single, _Pebble, 20), latencies),
    ]
    executor(trivial, 50)  # start the zygote, create the cgroup parents
    scope = busy_loops(2) if arguments.busy else contextlib.nullcontext([])
    with scope as loops:
        for _ in range(arguments.repeat):
            for name, _count, run, into in rows:
                into.setdefault(name, []).append(run())
    mode = resolve("auto")
    python = sys.version.split()[0]
    host = f"{os.cpu_count()} cores, {mode}, Python {python}"
    load = f"; two busy loops of ours running (pids {', '.join(map(str, loops))})" if loops else ""
    print(f"{host}{load}; defaults (admission on, default fork server); median of {arguments.repeat} rounds")
    floor = statistics.median(rates[floor_name])
    print("\nThroughput, 2 at a time:")
    print(f"| {'contender':<52} | {'calls':>6} | {'calls/s':>8} | {'vs raw fork':>11} | {'range':>11} |")
    print(f"|{'-' * 54}|{'-' * 8}|{'-' * 10}|{'-' * 13}|{'-' * 13}|")
    for name, count, _run, into in rows:
        if into is not rates:
            continue
        values = rates[name]
        rate = statistics.median(values)
        spread = f"{min(values):.0f}-{max(values):.0f}"
        print(f"| {name:<52} | {count:>6} | {rate:>8.0f} | {rate / floor:>10.2f}x | {spread:>11} |")
    pool_call = statistics.median(latencies["ProcessPoolExecutor(max_tasks_per_child=1)"])
    print("\nOne call at a time (submit, wait for the result):")
    print(f"| {'contender':<52} | {'calls':>6} | {'p50 latency':>11} | {'x faster than PPE':>17} |")
    print(f"|{'-' * 54}|{'-' * 8}|{'-' * 13}|{'-' * 19}|")
    for name, count, _run, into in rows:
        if into is not latencies:
            continue
        seconds = statistics.median(latencies[name])
        print(f"| {name:<52} | {count:>6} | {seconds * 1e3:>8.2f} ms | {pool_call / seconds:>16.1f}x |")


if __name__ == "__main__":
    main()
