"""The scheduler and the executor, measured side by side in one run.

1. Throughput of isolated calls, 2 at a time, a trivial task: ``GovernedExecutor`` (a fresh
   governed process per call, limits and sampling on) against ``ProcessPoolExecutor
   (max_tasks_per_child=1)``, pebble ``ProcessPool(max_tasks=1)`` and a raw fork loop.
2. Idle cost: CPU used by a scheduler holding 100,000 periodic tasks between fires.
3. Fire lateness of interval triggers while two CPU-bound tasks run (p50 and p99).

    python bench/scheduler_bench.py [--calls 400] [--repeat 3] [--idle-tasks 100000]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tasks
from isolated_throughput import IN_FLIGHT, pebble_pool, process_pool, raw_fork

from governor import GovernedExecutor, Limits, PeriodicTrigger, Scheduler, Task
from runner import ForkServer


def executor_throughput(calls: int, server: ForkServer) -> float:
    with GovernedExecutor(
        IN_FLIGHT, limits=Limits(memory="256MiB", wall_time=60), fork_server=server
    ) as pool:
        start = time.perf_counter()
        futures = [pool.submit(bench_tasks.trivial, n) for n in range(calls)]
        for future in futures:
            future.result()
        return calls / (time.perf_counter() - start)


def timed(run: object, calls: int) -> float:
    start = time.perf_counter()
    run(calls)  # type: ignore[operator]
    return calls / (time.perf_counter() - start)


def idle_cpu(tasks: int, seconds: float) -> tuple[float, float]:
    """(seconds to add all tasks, CPU share of one core used while idle)."""
    scheduler = Scheduler(2)
    scheduler.start()
    start = time.perf_counter()
    for n in range(tasks):
        scheduler.add_task(
            Task(f"idle-{n}", bench_tasks.trivial, args=(n,), triggers=[PeriodicTrigger(interval=3600)])
        )
    scheduler.sync(timeout=600)
    added = time.perf_counter() - start
    time.sleep(1.0)  # let the arming settle before measuring
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(seconds)
    after = resource.getrusage(resource.RUSAGE_SELF)
    scheduler.stop()
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return added, used / seconds


def lateness(seconds: float, server: ForkServer) -> dict[str, tuple[float, float, int]]:
    """Lateness (ms, p50 and p99) of 5 tasks every 200 ms while 2 CPU-bound tasks run on
    this 2-core machine; slots to spare, so "start" is fire + spawn, not queueing."""
    with Scheduler(7, fork_server=server) as scheduler:
        for n in range(2):
            busy = scheduler.add_task(Task(f"busy-{n}", bench_tasks.spin, args=(seconds + 1,)))
            scheduler.fire(busy.id)  # type: ignore[arg-type]
        for n in range(5):
            trigger = PeriodicTrigger(interval=0.2)
            scheduler.add_task(Task(f"tick-{n}", bench_tasks.trivial, args=(n,), triggers=[trigger]))
        time.sleep(seconds)
        measured = scheduler.lateness()
        scheduler.stop(cancel=True)
    summary = {}
    for kind, values in measured.items():
        late = sorted(values)
        p50 = late[len(late) // 2] * 1000
        p99 = late[min(len(late) - 1, int(len(late) * 0.99))] * 1000
        summary[kind] = (p50, p99, len(late))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--idle-tasks", type=int, default=100_000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--lateness-seconds", type=float, default=10.0)
    arguments = parser.parse_args()
    server = ForkServer(preload=["bench_tasks"])
    executor_throughput(20, server)  # warm the zygote and the cgroup parents

    slow = max(20, arguments.calls // 10)
    rows = [
        ("raw os.fork() loop (floor)", arguments.calls, lambda n: timed(raw_fork, n)),
        ("GovernedExecutor (limits + sampling)", arguments.calls, lambda n: executor_throughput(n, server)),
        ("ProcessPoolExecutor(max_tasks_per_child=1)", slow, lambda n: timed(process_pool, n)),
        ("pebble ProcessPool(max_tasks=1)", slow, lambda n: timed(pebble_pool, n)),
    ]
    print(f"Isolated calls, {IN_FLIGHT} at a time, median of {arguments.repeat} runs")
    print(f"| {'contender':<42} | {'calls':>5} | {'calls/s':>8} | {'vs raw fork':>11} |")
    print(f"|{'-' * 44}|{'-' * 7}|{'-' * 10}|{'-' * 13}|")
    floor = None
    for name, calls, run in rows:
        rate = statistics.median(run(calls) for _ in range(arguments.repeat))
        floor = floor or rate
        print(f"| {name:<42} | {calls:>5} | {rate:>8.0f} | {rate / floor:>10.2f}x |")

    added, share = idle_cpu(arguments.idle_tasks, arguments.idle_seconds)
    print(
        f"\nIdle: {arguments.idle_tasks} periodic tasks (hourly) added in {added:.1f}s; "
        f"CPU while idle over {arguments.idle_seconds:.0f}s: {share * 100:.2f}% of a core"
    )

    measured = lateness(arguments.lateness_seconds, server)
    print("\nLateness of 5 tasks every 200 ms while 2 CPU-bound tasks run (ms):")
    for kind, (p50, p99, count) in measured.items():
        label = "trigger fired" if kind == "fire" else "child running"
        print(f"  {label:<14} p50 {p50:6.2f}  p99 {p99:6.2f}  ({count} fires)")
    server.close()


if __name__ == "__main__":
    main()
