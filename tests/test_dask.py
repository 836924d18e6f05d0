"""The Dask backend on a real cluster: a ``LocalCluster`` of 2 worker processes.

The cluster runs in a helper process (``python -c _CLUSTER``) rather than in this one: its
scheduler, nanny threads and multiprocessing's resource tracker then live and die with the
helper instead of outliving the module in the test process. The suite's leak guard is
overridden here (``no_leaks``): the helper's tree is the cluster's own, and within it only an
execution's process (it carries the runner's cookie) or a worker's cgroup left after a test
counts as a leak. When the module's cluster closes, every one of its processes must be gone.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest

distributed = pytest.importorskip("distributed")

import task_helpers as th  # noqa: E402
from conftest import _governor_parents, _our_cgroups, _our_execution_processes, gone, wait_until  # noqa: E402
from guards import guard  # noqa: E402
from test_service import GOVERNOR, Server, write  # noqa: E402

import governor  # noqa: E402
from governor import (  # noqa: E402
    ExecutionFailed,
    ExecutionSpec,
    GovernedExecutor,
    Limits,
    Outcome,
    RemoteTraceback,
    RetryPolicy,
    Scheduler,
    Task,
)
from governor.backends.dask import DaskBackend, resource_claim, worker_capacity  # noqa: E402
from governor.backends.dask_worker import execute_on_worker  # noqa: E402
from policies import Need  # noqa: E402
from runner import default_fork_server, drive, kill_leftovers  # noqa: E402
from runner._tree import COOKIE_VARIABLE  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20
WORKER_MEMORY = 4 * GiB

# The task bodies below travel by value: a worker or its child need not import this module
# (and pytest with it) to run them.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

_CLUSTER = """
import sys
import dask
from distributed import LocalCluster

# A task whose worker dies is not run again by Dask: the governor's retry policy decides.
dask.config.set({"distributed.scheduler.allowed-failures": 0})
cluster = LocalCluster(
    n_workers=int(sys.argv[1]), threads_per_worker=1, processes=True, dashboard_address=None,
    resources={"MEMORY": int(sys.argv[2]), "CPU": 2},
)
print(cluster.scheduler_address, flush=True)
sys.stdin.read()  # until the test closes our stdin
cluster.close()
"""

_helpers: set[int] = set()  # pids of the cluster helpers alive now


@dataclass
class Cluster:
    """A LocalCluster in a helper process, and a client of it."""

    helper: subprocess.Popen[bytes]
    address: str
    client: Any
    log: Path

    def processes(self) -> list[psutil.Process]:
        """The helper and everything under it (scheduler side, workers, their fork servers)."""
        root = psutil.Process(self.helper.pid)
        return [root, *root.children(recursive=True)]

    def worker_pids(self) -> set[int]:
        return set(self.client.run(os.getpid).values())


def _start_cluster(workers: int, log: Path) -> Cluster:
    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as stderr:
        helper = subprocess.Popen(
            [sys.executable, "-c", _CLUSTER, str(workers), str(WORKER_MEMORY)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    _helpers.add(helper.pid)
    assert helper.stdout is not None
    ready, _, _ = select.select([helper.stdout], [], [], guard(60))
    address = helper.stdout.readline().decode().strip() if ready else ""
    if not address:
        _stop_helper(helper)
        pytest.fail(f"the LocalCluster did not start: {log.read_text()[-2000:]}")
    client = distributed.Client(address, timeout=guard(30))
    client.wait_for_workers(workers, timeout=guard(60))
    return Cluster(helper, address, client, log)


def _stop_helper(helper: subprocess.Popen[bytes]) -> None:
    assert helper.stdin is not None
    helper.stdin.close()
    try:
        helper.wait(timeout=guard(60))
    finally:
        _helpers.discard(helper.pid)
        if helper.returncode is None:
            helper.kill()
            helper.wait()
        if helper.stdout is not None:
            helper.stdout.close()


def _stop_cluster(cluster: Cluster) -> None:
    """Close the client and the cluster; assert that none of the cluster's processes is left."""
    tree = cluster.processes()
    cluster.client.close()
    _stop_helper(cluster.helper)
    wait_until(lambda: not [p for p in tree if _alive(p)], timeout=guard(30))


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = _start_cluster(2, tmp_path_factory.mktemp("dask") / "cluster.log")
    try:
        yield started
    finally:
        _stop_cluster(started)


@pytest.fixture
def client(cluster: Cluster) -> Any:
    return cluster.client


# -- the leak guard, for a module whose cluster outlives its tests ----------------------------


def _cluster_pids() -> set[int]:
    pids: set[int] = set()
    for pid in list(_helpers):
        try:
            root = psutil.Process(pid)
            pids |= {root.pid, *(p.pid for p in root.children(recursive=True))}
        except psutil.NoSuchProcess:
            continue
    return pids


def _is_execution(process: psutil.Process) -> bool:
    try:
        return COOKIE_VARIABLE in process.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _leftover_processes() -> list[psutil.Process]:
    cluster = _cluster_pids()
    zygote = default_fork_server().pid
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid == zygote or child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.NoSuchProcess:
            continue
        if child.pid not in cluster or _is_execution(child):
            found.append(child)
    return found + _our_execution_processes()


def _leftover_cgroups() -> list[str]:
    owners = {str(pid) for pid in _cluster_pids()}
    found = _our_cgroups()
    for parent in _governor_parents():
        if parent.is_dir():
            found += [str(c) for c in parent.iterdir() if c.is_dir() and c.name.split("-", 1)[0] in owners]
    return found


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """This module's leak guard (it overrides the suite's): see the module docstring."""
    yield
    deadline = time.monotonic() + 10
    while True:
        processes, cgroups = _leftover_processes(), _leftover_cgroups()
        if (not processes and not cgroups) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    assert not processes, f"processes left behind: {processes}"
    assert not cgroups, f"cgroups left behind: {cgroups}"


# -- task bodies (they travel by value) -----------------------------------------------------


def write_pid_and_sleep(path: str, seconds: float = 120.0) -> str:
    """Publish this process's pid in ``path`` (atomically), then sleep."""
    Path(path + ".tmp").write_text(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(seconds)
    return "woke"


def hang_on_first_attempt(path: str) -> str:
    """The first attempt publishes its pid and hangs; any later one returns at once."""
    if os.path.exists(path):
        return "second attempt"
    return write_pid_and_sleep(path)


def start_a_process() -> int:
    """A task that starts a process of its own (multiprocessing)."""
    import multiprocessing

    process = multiprocessing.get_context("fork").Process(target=time.sleep, args=(0.01,))
    process.start()
    process.join()
    return process.exitcode or 0


def _pid_from(path: Path) -> int:
    wait_until(path.exists, timeout=guard(60))
    return int(path.read_text())


# -- placement (no cluster) -------------------------------------------------------------------


def test_the_estimate_becomes_the_claim_in_resources_the_workers_declare() -> None:
    capacity = worker_capacity(
        {"workers": {"a": {"resources": {"MEMORY": 4e9, "CPU": 2}}, "b": {"resources": {"MEMORY": 8e9}}}}
    )
    assert capacity == {"MEMORY": 8e9, "CPU": 2.0}
    claim, notes = resource_claim(Need(1 * GiB, 0.5), Limits(memory="2GiB"), capacity)
    assert claim == {"MEMORY": 1 * GiB, "CPU": 0.5} and notes == []
    # Without an estimate, the declared limits; with nothing declared, no claim at all.
    declared = Limits(memory="2GiB", cpu_rate=1)
    assert resource_claim(None, declared, capacity)[0] == {"MEMORY": 2 * GiB, "CPU": 1}
    assert resource_claim(None, Limits(), capacity) == ({}, [])


def test_a_claim_no_worker_could_meet_is_capped_or_left_out() -> None:
    claim, notes = resource_claim(Need(16 * GiB, 1.0), Limits(), {"MEMORY": 8e9})
    assert claim == {"MEMORY": 8e9}  # no worker declares CPU: claiming it would wait for ever
    assert len(notes) == 1 and "capped" in notes[0]


# -- on the cluster -----------------------------------------------------------------------------


def test_results_and_exceptions_come_back(client: Any) -> None:
    with GovernedExecutor(2, backend=client) as executor:
        assert executor.submit(th.add, 2, 3).result(timeout=guard(60)) == 5
        failing = executor.submit(th.raise_value_error, "nope")
        with pytest.raises(ValueError, match="nope") as caught:
            failing.result(timeout=guard(60))
    assert isinstance(caught.value.__cause__, RemoteTraceback)
    record = failing.execution  # type: ignore[attr-defined]
    assert record.outcome is Outcome.FAILED and record.pid is not None
    assert any(note.startswith("ran on the Dask worker tcp://") for note in record.notes)
    direct = governor.run(th.add, 1, 2, backend=client)
    assert direct.outcome is Outcome.SUCCEEDED and direct.result == 3
    assert direct.usage.peak_memory_bytes > 0  # measured on the worker, like a local run


def test_a_memory_hog_is_killed_on_the_worker(client: Any) -> None:
    with GovernedExecutor(1, backend=client, limits=Limits(memory="64MiB")) as executor:
        future = executor.submit(th.memory_hog, 512 * MiB)
        with pytest.raises(ExecutionFailed):
            future.result(timeout=guard(60))
    record = future.execution  # type: ignore[attr-defined]
    assert record.outcome is Outcome.MEMORY_EXCEEDED and record.breached_limit == "memory"
    assert record.usage.peak_memory_bytes < 256 * MiB


def test_a_wall_time_limit_ends_it_on_the_worker(client: Any) -> None:
    record = governor.run(time.sleep, 60, limits=Limits(wall_time=0.5), backend=client)
    assert record.outcome is Outcome.TIMED_OUT
    assert 0.5 <= record.usage.wall_seconds < 10


def test_a_task_may_start_processes_of_its_own_on_a_worker(client: Any) -> None:
    # The runner forks children from its own zygote (a subprocess), so a worker's daemon flag
    # does not reach them: workers need no special flag for tasks that use multiprocessing.
    record = governor.run(start_a_process, backend=client)
    assert record.outcome is Outcome.SUCCEEDED and record.result == 0


def test_cancel_reaches_the_child_on_the_worker(client: Any, tmp_path: Path) -> None:
    backend = DaskBackend(client)
    try:
        spec = ExecutionSpec(target=write_pid_and_sleep, args=(str(tmp_path / "pid"),))
        handle = backend.start(spec, need=None, priority=0)
        pid = _pid_from(tmp_path / "pid")
        assert not gone(pid)  # the worker is on this host in this test: its child is visible
        started = time.monotonic()
        handle.cancel()
        record = drive(handle)
    finally:
        backend.close()
    assert record.outcome is Outcome.CANCELLED and record.pid == pid
    assert time.monotonic() - started < 5
    wait_until(lambda: gone(pid))


def test_cancel_before_a_worker_takes_it_never_starts_it(client: Any, tmp_path: Path) -> None:
    backend = DaskBackend(client)
    try:
        # Two runs claiming a worker's whole MEMORY each occupy the cluster; a third waits in Dask.
        whole = Limits(memory=WORKER_MEMORY)
        running = [
            backend.start(
                ExecutionSpec(target=write_pid_and_sleep, args=(str(tmp_path / f"pid{n}"),), limits=whole),
                need=None,
                priority=0,
            )
            for n in range(2)
        ]
        pids = [_pid_from(tmp_path / f"pid{n}") for n in range(2)]
        waiting = backend.start(
            ExecutionSpec(target=write_pid_and_sleep, args=(str(tmp_path / "never"),), limits=whole),
            need=None,
            priority=0,
        )
        assert waiting.resources == {"MEMORY": WORKER_MEMORY}
        waiting.cancel()
        record = drive(waiting)
        for handle in running:
            handle.cancel()
        ended = [drive(handle) for handle in running]
    finally:
        backend.close()
    assert record.outcome is Outcome.CANCELLED and record.pid is None, record.error
    assert record.error is not None and "before it started" in record.error.message
    assert [r.outcome for r in ended] == [Outcome.CANCELLED, Outcome.CANCELLED]
    assert not (tmp_path / "never").exists()
    wait_until(lambda: all(gone(pid) for pid in pids))


def test_a_governor_that_goes_away_leaves_nothing_running(cluster: Cluster, tmp_path: Path) -> None:
    governor_client = distributed.Client(cluster.address, timeout=guard(30))
    backend = DaskBackend(governor_client)
    handle = backend.start(
        ExecutionSpec(target=write_pid_and_sleep, args=(str(tmp_path / "pid"),)), need=None, priority=0
    )
    pid = _pid_from(tmp_path / "pid")
    governor_client.close()  # as its process dying would: the cluster drops what it asked for
    wait_until(lambda: gone(pid))  # the body saw its task let go and killed the child
    record = drive(handle)
    assert record.outcome is Outcome.LOST and record.error is not None, record.error
    assert record.error.type in ("DaskCancelled", "ClientClosed")  # whichever the client saw first


def test_a_run_dask_starts_again_is_not_run_twice(client: Any) -> None:
    # What a worker's death does with ``allowed-failures`` above 0: Dask runs the task again.
    spec = ExecutionSpec(target=th.add, args=(1, 1))
    run_id = f"{os.getpid()}-rerun-{time.monotonic_ns()}"
    first = client.submit(execute_on_worker, spec, run_id, pure=False).result(timeout=guard(60))
    again = client.submit(execute_on_worker, spec, run_id, pure=False).result(timeout=guard(60))
    assert first.outcome is Outcome.SUCCEEDED
    assert again.outcome is Outcome.LOST and again.pid is None
    assert again.error is not None and again.error.type == "WorkerDied"
    for name in (f"governor-started-{run_id}", f"governor-cancel-{run_id}"):
        distributed.Event(name, client=client).clear()


def test_a_worker_killed_mid_run_is_lost_and_retried(cluster: Cluster, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    policy = RetryPolicy(max_retries=1, retry_on=("lost",))
    task = Task("killed-worker", hang_on_first_attempt, args=(str(marker),), retry_policy=policy)
    scheduler = Scheduler(2, backend=cluster.client)
    with scheduler:
        scheduler.add_task(task)
        assert task.id is not None
        scheduler.fire(task.id)
        pid = _pid_from(marker)
        worker = psutil.Process(pid).parent().parent()  # child <- the worker's zygote <- the worker
        assert worker.pid in cluster.worker_pids()
        worker.kill()
        assert scheduler.wait(lambda: len(task.executions) == 2, timeout=guard(60)), task.executions
    first, second = task.executions
    assert first.outcome is Outcome.LOST and first.error is not None and first.error.type == "WorkerDied"
    assert second.outcome is Outcome.SUCCEEDED and second.result == "second attempt"
    assert second.attempt == 2
    wait_until(lambda: gone(pid))  # the child died with its worker (parent-death signal)
    # The dead worker's (now empty) cgroup is this host's to remove: nothing of it runs.
    for parent in _governor_parents():
        if parent.is_dir():
            for path in parent.glob(f"{worker.pid}-*"):
                assert kill_leftovers(path.name, None, None, [str(path)]) == []
    cluster.client.wait_for_workers(2, timeout=guard(60))  # the nanny starts a new one


def test_on_a_cluster_auto_budgets_are_the_workers_own(client: Any) -> None:
    # "auto" measures the governor's host, which is not where the work runs: no budget here,
    # the workers' declared resources bound what runs on each. A given budget still holds.
    with Scheduler(2, backend=client) as scheduler:
        assert scheduler.snapshot()["budget"] == {"memory_bytes": None, "cpu_cores": None}
    with Scheduler(2, backend=client, memory_budget="6GiB", cpu_budget=3) as scheduler:
        assert scheduler.snapshot()["budget"] == {"memory_bytes": 6 * GiB, "cpu_cores": 3}
    with GovernedExecutor(2, backend=client) as executor:
        assert executor.submit(th.add, 2, 3).result(timeout=guard(60)) == 5  # the client is still usable


def test_stopping_the_scheduler_cancels_what_runs_on_the_workers(client: Any, tmp_path: Path) -> None:
    task = Task("long", write_pid_and_sleep, args=(str(tmp_path / "pid"),))
    scheduler = Scheduler(2, backend=client)
    scheduler.start()
    try:
        scheduler.add_task(task)
        assert task.id is not None
        scheduler.fire(task.id)
        pid = _pid_from(tmp_path / "pid")
    finally:
        scheduler.stop(cancel=True)
    assert [r.outcome for r in task.executions] == [Outcome.CANCELLED]
    wait_until(lambda: gone(pid))


def test_governor_run_on_the_command_line(cluster: Cluster) -> None:
    command = [sys.executable, "-m", "governor", "run", "--dask", cluster.address]
    done = subprocess.run(
        [*command, "--json", "--", "sh", "-c", "echo out; echo err >&2"],
        capture_output=True,
        text=True,
        timeout=guard(120),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "out" and "err" in done.stderr
    assert '"outcome": "succeeded"' in lines[-1]
    hog = subprocess.run(
        [*command, "--memory", "64M", "--", sys.executable, "-c", "b = bytearray(10**9)"],
        capture_output=True,
        text=True,
        timeout=guard(120),
    )
    assert hog.returncode == 121, hog.stderr
    assert "memory_exceeded" in hog.stderr


def test_governor_serve_runs_its_schedule_on_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "governor.db"
    task_file = write(
        tmp_path / "tasks.toml",
        """
        [[task]]
        name = "hello"
        command = ["sh", "-c", "echo hello from $(hostname)"]
        event = "go"

        [[task]]
        name = "hog"
        command = ["python3", "-c", "b = bytearray(10**9)"]
        event = "go"
        [task.limits]
        memory = "64MiB"
        """,
    )
    server = Server(task_file, db, "--dask", cluster.address)
    try:
        server.wait_for("serving 2 task(s)")
        fired = subprocess.run(
            [*GOVERNOR, "fire", "go", "--db", str(db)], capture_output=True, timeout=guard(60)
        )
        assert fired.returncode == 0, fired.stderr
        assert "outcome=succeeded" in server.wait_for("task=hello", timeout=guard(60))
        assert "outcome=memory_exceeded" in server.wait_for("task=hog", timeout=guard(60))
    finally:
        assert server.stop() == 0
    history = subprocess.run(
        [*GOVERNOR, "history", "--json", "--db", str(db)], capture_output=True, text=True, timeout=guard(60)
    )
    rows = {row["task"]: row for row in map(json.loads, history.stdout.splitlines())}
    assert rows["hog"]["outcome"] == "memory_exceeded" and rows["hello"]["outcome"] == "succeeded"
    assert rows["hog"]["pid"] not in (None, os.getpid())  # a child on a worker, measured there


def test_closing_the_cluster_mid_run_loses_the_run_and_leaves_nothing(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    small = _start_cluster(1, tmp_path_factory.mktemp("dask-small") / "cluster.log")
    tree = small.processes()
    try:
        with GovernedExecutor(1, backend=small.client) as executor:
            future = executor.submit(write_pid_and_sleep, str(tmp_path / "pid"))
            pid = _pid_from(tmp_path / "pid")
            _stop_helper(small.helper)  # the whole cluster goes while the child runs
            with pytest.raises(ExecutionFailed):
                future.result(timeout=guard(60))
        assert future.execution.outcome is Outcome.LOST  # type: ignore[attr-defined]
        wait_until(lambda: gone(pid))
        wait_until(lambda: not [p for p in tree if _alive(p)], timeout=guard(30))
    finally:
        small.client.close()
        if small.helper.returncode is None:
            _stop_helper(small.helper)
    for parent in _governor_parents():  # the killed worker's emptied cgroup, if any
        if parent.is_dir():
            for process in tree:
                for path in parent.glob(f"{process.pid}-*"):
                    assert kill_leftovers(path.name, None, None, [str(path)]) == []
