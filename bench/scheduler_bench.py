"""The scheduler against APScheduler 3, side by side in one run, with the defaults.

1. Fire lateness: 20 tasks every 200 ms, each a trivial call defined in this script's
   ``__main__``, for ``--seconds`` seconds, on a quiet host and on one that two busy loops of
   ours (ended by pid) keep loaded. "Trigger fired" is how late the scheduler dispatched a due
   fire (for APScheduler 3: its job submission event against the run time it was due at); our
   "child running" adds forking the isolated child, which APScheduler does not do (its jobs
   run in a thread of the same process).
2. Memory per idle task: bytes traced (``tracemalloc``) per task added, 10,000 hourly tasks.
3. Idle cost: CPU used between fires by a scheduler holding 100,000 hourly tasks.

    python bench/scheduler_bench.py [--seconds 10] [--tasks 10000] [--idle-tasks 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from host_load import busy_loops

from governor import PeriodicTrigger, Scheduler, Task

TICK = 0.2  # seconds between fires of each task
TASKS = 20


def trivial() -> int:
    """The job, defined in ``__main__``: it travels by value to each child."""
    return 42


def percentiles(values: list[float]) -> tuple[float, float, int]:
    """(p50, p99) in milliseconds, and how many."""
    ordered = sorted(values)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 * 1e3, p99 * 1e3, len(ordered)


def governor_lateness(seconds: float) -> dict[str, list[float]]:
    with Scheduler(TASKS) as scheduler:  # a slot per task: lateness, not queueing
        start = datetime.now(UTC) + timedelta(seconds=0.5)
        for n in range(TASKS):
            trigger = PeriodicTrigger(interval=TICK, start=start)
            scheduler.add_task(Task(f"tick-{n}", trivial, triggers=[trigger]))
        time.sleep(seconds)
        measured = scheduler.lateness()
        scheduler.stop(cancel=True)
    return measured


def apscheduler_lateness(seconds: float) -> dict[str, list[float]]:
    from apscheduler.events import EVENT_JOB_SUBMITTED
    from apscheduler.schedulers.background import BackgroundScheduler

    late: list[float] = []

    def submitted(event: Any) -> None:
        now = datetime.now(UTC)
        late.extend((now - due).total_seconds() for due in event.scheduled_run_times)

    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"misfire_grace_time": None})
    scheduler.add_listener(submitted, EVENT_JOB_SUBMITTED)
    start = datetime.now(UTC) + timedelta(seconds=0.5)
    for n in range(TASKS):
        scheduler.add_job(trivial, "interval", seconds=TICK, start_date=start, id=f"tick-{n}")
    scheduler.start()
    time.sleep(seconds)
    scheduler.shutdown(wait=True)
    return {"fire": late}


def bytes_per_task(add: Callable[[int], Callable[[], None]], tasks: int) -> float:
    """Traced bytes per task for ``tasks`` tasks (``add(n)`` adds them, returns a closer)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    close = add(tasks)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    close()
    return (after - before) / tasks


def governor_tasks(tasks: int) -> Callable[[], None]:
    scheduler = Scheduler(2)
    scheduler.start()
    for n in range(tasks):
        scheduler.add_task(Task(f"idle-{n}", trivial, triggers=[PeriodicTrigger(interval=3600)]))
    assert scheduler.sync(timeout=600)
    return scheduler.stop


def apscheduler_tasks(tasks: int) -> Callable[[], None]:
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.start()
    for n in range(tasks):
        scheduler.add_job(trivial, "interval", hours=1, id=f"idle-{n}")
    return lambda: scheduler.shutdown(wait=False)


def idle_cpu(tasks: int, seconds: float) -> tuple[float, float]:
    """(seconds to add all tasks, CPU share of one core used while idle)."""
    scheduler = Scheduler(2)
    scheduler.start()
    start = time.perf_counter()
    for n in range(tasks):
        scheduler.add_task(Task(f"idle-{n}", trivial, triggers=[PeriodicTrigger(interval=3600)]))
    assert scheduler.sync(timeout=600)
    added = time.perf_counter() - start
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(seconds)
    after = resource.getrusage(resource.RUSAGE_SELF)
    scheduler.stop()
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return added, used / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="of fires, per contender and host state")
    parser.add_argument("--tasks", type=int, default=10_000, help="idle tasks for the memory figure")
    parser.add_argument("--idle-tasks", type=int, default=100_000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    arguments = parser.parse_args()
    import apscheduler

    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, APScheduler {apscheduler.__version__}")
    print(f"\nFire lateness, {TASKS} tasks every {TICK * 1000:.0f} ms for {arguments.seconds:g} s (ms):")
    print(f"| {'host':<28} | {'contender':<34} | {'p50':>7} | {'p99':>7} | {'fires':>6} |")
    print(f"|{'-' * 30}|{'-' * 36}|{'-' * 9}|{'-' * 9}|{'-' * 8}|")
    for host in ("quiet", "two busy loops of ours"):
        scope = busy_loops(2) if host != "quiet" else contextlib.nullcontext([])
        with scope:
            ours = governor_lateness(arguments.seconds)
            theirs = apscheduler_lateness(arguments.seconds)
        rows = [
            ("governor: trigger fired", ours["fire"]),
            ("APScheduler 3: job submitted", theirs["fire"]),
            ("governor: isolated child running", ours["start"]),
        ]
        for name, values in rows:
            p50, p99, count = percentiles(values)
            print(f"| {host:<28} | {name:<34} | {p50:>7.2f} | {p99:>7.2f} | {count:>6} |")

    ours_bytes = bytes_per_task(governor_tasks, arguments.tasks)
    theirs_bytes = bytes_per_task(apscheduler_tasks, arguments.tasks)
    print(f"\nMemory per idle task ({arguments.tasks} hourly tasks, tracemalloc):")
    print(f"  governor       {ours_bytes:>8.0f} bytes/task")
    print(f"  APScheduler 3  {theirs_bytes:>8.0f} bytes/task")

    added, share = idle_cpu(arguments.idle_tasks, arguments.idle_seconds)
    print(
        f"\nIdle: {arguments.idle_tasks} hourly tasks added in {added:.1f}s; "
        f"CPU while idle over {arguments.idle_seconds:.0f}s: {share * 100:.2f}% of a core"
    )


if __name__ == "__main__":
    main()
