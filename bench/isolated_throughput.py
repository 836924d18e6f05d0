"""Fresh-process-per-task throughput and latency, side by side, 2 tasks in flight at a time.

Contenders (each runs the same trivial task, ``bench_tasks.trivial``, N times):

- raw fork          os.fork() per task from this process, result over a pipe: the floor
- governor          runner.ExecutionHandle per task: zygote fork, cgroup or tree confinement,
                    usage sampling, a memory + wall limit, full execution record
- ProcessPool       concurrent.futures.ProcessPoolExecutor(max_tasks_per_child=1)
- pebble            pebble.ProcessPool(max_tasks=1)

Throughput is tasks per second over the whole batch; latency is submit-to-result per task
(p50 and p99). Every figure is the median of ``--repeat`` runs.

    python bench/isolated_throughput.py [--tasks 400] [--repeat 5]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import pickle
import select
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tasks

from policies import Limits
from runner import ExecutionHandle, ExecutionSpec, ForkServer

IN_FLIGHT = 2


def raw_fork(tasks: int) -> list[float]:
    """The floor: fork, compute, write the pickled result to a pipe, exit; 2 at a time."""
    latencies: list[float] = []
    running: dict[int, tuple[int, float]] = {}  # read fd -> (pid, submitted)
    submitted = 0
    while submitted < tasks or running:
        while submitted < tasks and len(running) < IN_FLIGHT:
            read_end, write_end = os.pipe()
            start = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                os.write(write_end, pickle.dumps(bench_tasks.trivial(submitted)))
                os._exit(0)
            os.close(write_end)
            running[read_end] = (pid, start)
            submitted += 1
        ready, _, _ = select.select(list(running), [], [])
        for fd in ready:
            pickle.loads(os.read(fd, 65536))
            pid, start = running.pop(fd)
            os.close(fd)
            os.waitpid(pid, 0)
            latencies.append(time.perf_counter() - start)
    return latencies


def governor_handles(tasks: int, server: ForkServer, enforcement: str = "auto") -> list[float]:
    """Our runner driven like the scheduler's loop: 2 handles in flight, one poll."""
    limits = Limits(memory="256MiB", wall_time=60)
    latencies: list[float] = []
    running: dict[ExecutionHandle, float] = {}
    submitted = 0
    poller = select.poll()
    while submitted < tasks or running:
        while submitted < tasks and len(running) < IN_FLIGHT:
            start = time.perf_counter()
            spec = ExecutionSpec(
                target=bench_tasks.trivial, args=(submitted,), limits=limits, enforcement=enforcement
            )
            running[ExecutionHandle(spec, fork_server=server)] = start
            submitted += 1
        owners = {}
        for handle in running:
            for fd in handle.fds():
                owners[fd] = handle
        poller = select.poll()
        for fd in owners:
            poller.register(fd, select.POLLIN)
        deadline = min((h.deadline() or time.monotonic() + 1) for h in running)
        for fd, _ in poller.poll(max(0, int((deadline - time.monotonic()) * 1000) + 1)):
            owners[fd].on_readable(fd)
        for handle in list(running):
            handle.on_time()
            if handle.done:
                start = running.pop(handle)
                assert handle.execution is not None and handle.execution.ok, handle.execution
                latencies.append(time.perf_counter() - start)
    return latencies


def futures_pool(make: Callable[[], concurrent.futures.Executor], tasks: int) -> list[float]:
    """Submit-to-result latency with at most IN_FLIGHT calls outstanding, as for the others."""
    latencies: list[float] = []
    with make() as pool:
        outstanding: dict[concurrent.futures.Future[int], float] = {}
        for index in range(tasks):
            if len(outstanding) >= IN_FLIGHT:
                _collect(outstanding, latencies)
            outstanding[pool.submit(bench_tasks.trivial, index)] = time.perf_counter()
        while outstanding:
            _collect(outstanding, latencies)
    return latencies


def _collect(outstanding: dict[concurrent.futures.Future[int], float], latencies: list[float]) -> None:
    done, _ = concurrent.futures.wait(outstanding, return_when=concurrent.futures.FIRST_COMPLETED)
    now = time.perf_counter()
    for future in done:
        future.result()
        latencies.append(now - outstanding.pop(future))


def process_pool(tasks: int) -> list[float]:
    # max_tasks_per_child refuses the fork context; its default then is spawn.
    return futures_pool(
        lambda: concurrent.futures.ProcessPoolExecutor(IN_FLIGHT, max_tasks_per_child=1), tasks
    )


def process_pool_forkserver(tasks: int) -> list[float]:
    context = multiprocessing.get_context("forkserver")
    return futures_pool(
        lambda: concurrent.futures.ProcessPoolExecutor(IN_FLIGHT, mp_context=context, max_tasks_per_child=1),
        tasks,
    )


def pebble_pool(tasks: int) -> list[float]:
    import pebble

    class Submitter:  # pebble's schedule() in the Executor shape futures_pool expects
        def __init__(self) -> None:
            self.pool = pebble.ProcessPool(max_workers=IN_FLIGHT, max_tasks=1)

        def submit(self, function: Callable[[int], int], argument: int) -> concurrent.futures.Future[int]:
            return self.pool.schedule(function, args=(argument,))

        def __enter__(self) -> Submitter:
            return self

        def __exit__(self, *exc: object) -> None:
            self.pool.close()
            self.pool.join()

    return futures_pool(Submitter, tasks)  # type: ignore[arg-type]


def measure(run: Callable[[int], list[float]], tasks: int, repeat: int) -> tuple[float, float, float]:
    rates, p50s, p99s = [], [], []
    for _ in range(repeat):
        start = time.perf_counter()
        latencies = run(tasks)
        elapsed = time.perf_counter() - start
        latencies.sort()
        rates.append(tasks / elapsed)
        p50s.append(latencies[len(latencies) // 2])
        p99s.append(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))])
    return statistics.median(rates), statistics.median(p50s), statistics.median(p99s)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=400, help="tasks per run (slow peers run a tenth)")
    parser.add_argument("--repeat", type=int, default=5)
    arguments = parser.parse_args()
    server = ForkServer(preload=["bench_tasks"])
    from runner._enforcement import resolve

    mode = resolve("auto")
    contenders: list[tuple[str, Callable[[int], list[float]], int]] = [
        ("raw os.fork() loop (floor)", raw_fork, arguments.tasks),
        (f"governor ({mode}, limits + sampling)", lambda n: governor_handles(n, server), arguments.tasks),
        (
            "governor (no cgroups: rlimit + watchdog)",
            lambda n: governor_handles(n, server, "rlimit"),
            arguments.tasks,
        ),
        ("ProcessPoolExecutor(max_tasks_per_child=1)", process_pool, max(20, arguments.tasks // 10)),
        ("  same, forkserver context", process_pool_forkserver, max(20, arguments.tasks // 10)),
        ("pebble ProcessPool(max_tasks=1)", pebble_pool, max(20, arguments.tasks // 10)),
    ]
    governor_handles(20, server)  # start the zygote and create the cgroup parents
    results = []
    for name, run, tasks in contenders:
        rate, p50, p99 = measure(run, tasks, arguments.repeat)
        results.append((name, tasks, rate, p50, p99))
    server.close()
    floor = results[0][2]
    python = sys.version.split()[0]
    print(
        f"{os.cpu_count()} cores, {IN_FLIGHT} in flight, median of {arguments.repeat} runs, Python {python}"
    )
    columns = ("contender", "tasks", "tasks/s", "vs raw fork", "p50 latency", "p99 latency")
    print("| {:<44} | {:>5} | {:>8} | {:>11} | {:>11} | {:>11} |".format(*columns))
    print(f"|{'-' * 46}|{'-' * 7}|{'-' * 10}|{'-' * 13}|{'-' * 13}|{'-' * 13}|")
    for name, tasks, rate, p50, p99 in results:
        cells = (
            name,
            tasks,
            f"{rate:.0f}",
            f"{rate / floor:.2f}x",
            f"{p50 * 1e3:.2f} ms",
            f"{p99 * 1e3:.2f} ms",
        )
        print("| {:<44} | {:>5} | {:>8} | {:>11} | {:>11} | {:>11} |".format(*cells))


if __name__ == "__main__":
    main()
