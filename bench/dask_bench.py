"""The Dask backend against the local one: throughput and latency of trivial and heavy tasks.

Both run through ``GovernedExecutor`` with the same concurrency (2 calls in flight) and the
same limits; admission control is off in both (``memory_budget=None, cpu_budget=None``) so
the backend alone is measured. The cluster is a ``LocalCluster`` on this machine, started in
a process of its own (as a real cluster would be: the governor's process holds only a client):
2 worker processes, 1 thread each, declaring ``MEMORY`` and ``CPU`` resources, so every call
is a Dask task whose body is a governed execution on a worker (its own zygote, cgroup,
limits, record).
A third row per workload, plain ``client.submit`` of the same function with no governor (it
runs inside the worker process, unisolated), is the floor Dask itself sets.

- trivial: ``bench_tasks.trivial(n)`` (returns a number), under 256 MiB / 60 s limits
- heavy:   ``bench_tasks.hold(200 MiB, 0.5 s, cpu_bound=True)``, under 512 MiB / 60 s limits

Latency is submit-to-result (the result fetched) with at most 2 calls outstanding (the next
is submitted when one ends); throughput is calls over the wall time of the batch. Every
contender runs ``--repeat`` times, interleaved, and the table gives medians (p50/p95 are
medians of each run's p50/p95).

    python bench/dask_bench.py [--trivial 200] [--heavy 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tasks

from governor import GovernedExecutor, Limits

IN_FLIGHT = 2
_CLUSTER = """
import sys
import dask
from distributed import LocalCluster

dask.config.set({"distributed.scheduler.allowed-failures": 0, "logging.distributed": "error"})
cluster = LocalCluster(
    n_workers=int(sys.argv[1]), threads_per_worker=1, processes=True, dashboard_address=None,
    resources={"MEMORY": 8 << 30, "CPU": 1},
)
print(cluster.scheduler_address, flush=True)
sys.stdin.read()
cluster.close()
"""
MiB = 1 << 20
HEAVY = (200 * MiB, 0.5, True)
WORKLOADS: dict[str, tuple[Callable[..., Any], Callable[[int], tuple[Any, ...]], Limits]] = {
    "trivial": (bench_tasks.trivial, lambda n: (n,), Limits(memory="256MiB", wall_time=60)),
    "heavy": (bench_tasks.hold, lambda n: HEAVY, Limits(memory="512MiB", wall_time=60)),
}


def measure(
    submit: Callable[..., Any], fn: Callable[..., Any], args: Callable[[int], tuple[Any, ...]], calls: int
) -> dict[str, float]:
    """Run ``calls`` calls, ``IN_FLIGHT`` at a time; throughput and latency percentiles."""
    slots = threading.Semaphore(IN_FLIGHT)
    finished = threading.Event()
    latencies: list[float] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def ended(future: Any, submitted: float) -> None:
        error = future.exception()
        if error is None:
            future.result()  # a Dask future fetches its result here
        latency = time.perf_counter() - submitted
        with lock:
            latencies.append(latency)
            if error is not None:
                failures.append(error)
            if len(latencies) == calls:
                finished.set()
        slots.release()

    start = time.perf_counter()
    for n in range(calls):
        slots.acquire()
        submitted = time.perf_counter()
        future = submit(fn, *args(n))
        future.add_done_callback(lambda f, t=submitted: ended(f, t))
    finished.wait()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} call(s) failed, e.g. {failures[0]!r}")
    latencies.sort()
    return {
        "rate": calls / elapsed,
        "p50": latencies[len(latencies) // 2],
        "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
    }


def governed(backend: object, workload: str, calls: int) -> dict[str, float]:
    fn, args, limits = WORKLOADS[workload]
    with GovernedExecutor(
        IN_FLIGHT, limits=limits, memory_budget=None, cpu_budget=None, backend=backend
    ) as executor:
        for future in [executor.submit(bench_tasks.trivial, n) for n in range(4)]:  # warm up
            future.result()
        return measure(executor.submit, fn, args, calls)


def plain_dask(client: Any, workload: str, calls: int) -> dict[str, float]:
    fn, args, _limits = WORKLOADS[workload]

    def submit(fn: Callable[..., Any], *arguments: Any) -> Future[Any]:
        return client.submit(fn, *arguments, pure=False)  # type: ignore[no-any-return]

    for future in [submit(bench_tasks.trivial, n) for n in range(4)]:
        future.result()
    return measure(submit, fn, args, calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trivial", type=int, default=200, help="trivial calls per run")
    parser.add_argument("--heavy", type=int, default=20, help="heavy calls per run")
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()

    import distributed

    here = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    cluster = subprocess.Popen(
        [sys.executable, "-c", _CLUSTER, str(IN_FLIGHT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert cluster.stdin is not None and cluster.stdout is not None
    client = distributed.Client(cluster.stdout.readline().decode().strip(), timeout=60)
    client.wait_for_workers(IN_FLIGHT, timeout=60)
    contenders: dict[str, Callable[[str, int], dict[str, float]]] = {
        "local backend (GovernedExecutor)": lambda w, n: governed("local", w, n),
        "Dask backend (GovernedExecutor)": lambda w, n: governed(client, w, n),
        "plain client.submit, no governor": lambda w, n: plain_dask(client, w, n),
    }
    sizes = {"trivial": options.trivial, "heavy": options.heavy}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for _ in range(options.repeat):
            for workload, calls in sizes.items():
                for name, run in contenders.items():
                    results.setdefault((workload, name), []).append(run(workload, calls))
    finally:
        client.close()
        cluster.stdin.close()
        cluster.wait()

    print(
        f"{os.cpu_count()} cores, {IN_FLIGHT} in flight, median of {options.repeat} runs, "
        f"Python {platform.python_version()}, distributed {distributed.__version__}"
    )
    header = f"| {'workload':<8} | {'contender':<34} | calls | calls/s | p50 latency | p95 latency |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for (workload, name), runs in results.items():
        rate = statistics.median(r["rate"] for r in runs)
        p50 = statistics.median(r["p50"] for r in runs) * 1000
        p95 = statistics.median(r["p95"] for r in runs) * 1000
        print(
            f"| {workload:<8} | {name:<34} | {sizes[workload]:>5} | {rate:>7.1f} "
            f"| {p50:>8.1f} ms | {p95:>8.1f} ms |"
        )


if __name__ == "__main__":
    main()
