"""A burst of heavy jobs under one memory cap: admission against no admission and the pools.

40 jobs whose peaks (0.3-1.5 GiB, every third CPU-bound) add up to many times a 3 GiB budget
run with 4 workers on this 2-core machine. Each contender runs in its own subprocess inside a
cgroup capped at the budget plus room for the supervisor, so nothing can harm the host:

- governor, admission on     GovernedExecutor(4, memory_budget=3 GiB); limits = peak x 1.25
- governor, admission off    the same executor without a budget
- ProcessPoolExecutor(4)     a worker killed by the cap breaks the whole pool
- pebble ProcessPool(4)      a killed worker fails its own job
- oracle                     list scheduling from the true peaks and durations (no run)

Reported: jobs completed, OOM kills, makespan, and makespan relative to the oracle; each
contender runs ``--repeat`` times (interleaved, so drift in the machine hits all alike) and
the table gives medians, with the makespan range.

    python bench/admission_bench.py [--repeat 3]   (needs writable cgroup v1 memory, i.e. root)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tasks

GiB = 1 << 30
BUDGET = 3 * GiB
CAP = BUDGET + 384 * (1 << 20)  # room for the supervisor and the fork server
WORKERS = 4


def jobs(seed: int = 7) -> list[tuple[int, float, bool]]:
    rng = random.Random(seed)
    return [(int(rng.uniform(0.3, 1.5) * GiB), rng.uniform(0.5, 1.5), n % 3 == 0) for n in range(40)]


def run_governor(admission: bool) -> dict[str, object]:
    from governor import Execution, GovernedExecutor, Limits, RetryPolicy

    retry = RetryPolicy(max_retries=3, retry_on=("memory_exceeded", "crashed"), memory_growth=1.5)
    # Admission is on by default; "off" here means no budget at all, as before it existed.
    budget = {"memory_budget": BUDGET} if admission else {"memory_budget": None, "cpu_budget": None}
    outcomes: Counter[str] = Counter()  # every attempt's outcome, retries and evictions included

    class CountOutcomes:
        def execution_started(self, *args: object) -> None:
            return None

        def execution_finished(self, task: object, run_id: object, record: Execution) -> None:
            outcomes[str(record.outcome)] += 1

    start = time.monotonic()
    with GovernedExecutor(WORKERS, retry_policy=retry, **budget) as pool:  # type: ignore[arg-type]
        pool._scheduler._loop._listeners += (CountOutcomes(),)  # a bench may look inside
        futures = [
            pool.options(limits=Limits(memory=int(size * 1.25))).submit(bench_tasks.hold, size, hold, cpu)
            for size, hold, cpu in jobs()
        ]
        wait(futures)
    makespan = time.monotonic() - start
    completed = sum(1 for future in futures if future.exception() is None)
    kills = outcomes["memory_exceeded"] + outcomes["crashed"]
    return {"completed": completed, "oom_kills": kills, "evicted": outcomes["evicted"], "makespan": makespan}


def run_pool(kind: str) -> dict[str, object]:
    start = time.monotonic()
    completed = failed = 0
    if kind == "pebble":
        import pebble

        with pebble.ProcessPool(max_workers=WORKERS) as pool:
            futures = [pool.schedule(bench_tasks.hold, args=job) for job in jobs()]
            wait(futures)
    else:
        with ProcessPoolExecutor(WORKERS) as executor:
            futures = [executor.submit(bench_tasks.hold, *job) for job in jobs()]
            wait(futures)
    for future in futures:
        if future.exception() is None:
            completed += 1
        else:
            failed += 1
    return {"completed": completed, "oom_kills": failed, "makespan": time.monotonic() - start}


def oracle(alloc_rate: float) -> float:
    """List scheduling in submission order with the true peaks and durations."""
    now, running, makespan = 0.0, [], 0.0  # running: (end, size)
    for size, hold, _cpu in jobs():
        duration = hold + size / alloc_rate
        while len(running) >= WORKERS or sum(s for _, s in running) + size > BUDGET:
            running.sort()
            end, _ = running.pop(0)
            now = max(now, end)
        running.append((now + duration, size))
        makespan = max(makespan, now + duration)
    return makespan


def alloc_rate() -> float:
    start = time.perf_counter()
    bench_tasks.hold(GiB // 2, 0.0, False)
    return (GiB / 2) / (time.perf_counter() - start)


def capped(contender: str) -> dict[str, object]:
    """Run one contender in a subprocess inside a memory-capped v1 cgroup."""
    from runner._cgroup_v1 import parent_dir

    group = Path(parent_dir("memory")).parent / f"governor-bench-{os.getpid()}-{contender}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(CAP))
        procs = str(group / "cgroup.procs")

        def enter() -> None:
            with open(procs, "w") as handle:
                handle.write(str(os.getpid()))

        done = subprocess.run(
            [sys.executable, __file__, "--contender", contender],
            preexec_fn=enter, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if done.returncode != 0:
            return {"completed": 0, "oom_kills": "?", "makespan": float("nan"), "error": done.stderr[-500:]}
        return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]
    finally:
        _remove_tree(group)


def _remove_tree(group: Path) -> None:
    """Remove ``group`` and the cgroups the contender's governor made inside it. It empties of
    processes shortly after its last one is reaped: retry for a while."""
    from runner._confinement import remove_cgroup

    for _ in range(100):
        if remove_cgroup(str(group)):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{group}: still busy after 5 s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each contender (default 3)")
    arguments = parser.parse_args()
    if arguments.contender:
        runners = {
            "admission": lambda: run_governor(True),
            "no-admission": lambda: run_governor(False),
            "processpool": lambda: run_pool("processpool"),
            "pebble": lambda: run_pool("pebble"),
        }
        print(json.dumps(runners[arguments.contender]()))
        return
    best = oracle(alloc_rate())
    peaks = sum(size for size, _, _ in jobs()) / GiB
    print(
        f"40 jobs, peaks summing to {peaks:.1f} GiB, {WORKERS} workers, budget 3 GiB, cap {CAP / GiB:.2f} GiB"
    )
    names = {
        "admission": "governor, admission (3 GiB budget)",
        "no-admission": "governor, no admission",
        "processpool": "ProcessPoolExecutor(4)",
        "pebble": "pebble ProcessPool(4)",
    }
    results: dict[str, list[dict[str, object]]] = {contender: [] for contender in names}
    for _ in range(arguments.repeat):
        for contender in names:
            result = capped(contender)
            results[contender].append(result)
            if "error" in result:
                print(f"  {contender} error: {result['error']}")
    print(f"medians of {arguments.repeat} runs each; makespan range in brackets")
    header = (
        f"| {'contender':<34} | {'completed':>9} | {'OOM kills':>9} | {'evicted':>7} | {'makespan':>22} |"
        f" {'vs oracle':>9} |"
    )
    print(header)
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 11}|{'-' * 9}|{'-' * 24}|{'-' * 11}|")
    for contender, label in names.items():
        runs = results[contender]
        spans = sorted(float(r["makespan"]) for r in runs)  # type: ignore[arg-type]
        span = statistics.median(spans)
        completed = statistics.median(int(str(r["completed"])) for r in runs)
        kills = [str(r["oom_kills"]) for r in runs]  # "?" when a run broke down
        known = all(k.isdigit() for k in kills)
        kill_cell = f"{statistics.median(int(k) for k in kills):g}" if known else "?"
        spread = f"{span:.1f}s [{spans[0]:.1f}-{spans[-1]:.1f}]"
        evicted = [r.get("evicted") for r in runs]
        evicted_cell = "-" if None in evicted else f"{statistics.median(int(str(e)) for e in evicted):g}"
        cells = (label, f"{completed:g}", kill_cell, evicted_cell, spread, f"{span / best:.2f}x")
        print("| {:<34} | {:>9} | {:>9} | {:>7} | {:>22} | {:>9} |".format(*cells))
    oracle_cells = ("oracle (true peaks, list schedule)", 40, 0, 0, f"{best:.1f}s", "1.00x")
    print("| {:<34} | {:>9} | {:>9} | {:>7} | {:>22} | {:>9} |".format(*oracle_cells))


if __name__ == "__main__":
    main()
