"""Fixtures shared by the suite. The ``no_leaks`` fixture runs for every test: it fails a test
that leaves a child process, an execution's process anywhere on the host, or a cgroup behind,
or during which a scheduler's loop caught an error of its own (a bug it carried on from).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from guards import SLOWNESS, guard

from runner import default_fork_server
from runner._tree import COOKIE_VARIABLE


def wait_until(
    predicate: Callable[[], object], timeout: float | None = None, interval: float = 0.005
) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds, by default ``guard(10)``
    (a deadlock guard, not a delay)."""
    limit = guard(10) if timeout is None else timeout
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {limit:.0f}s: {predicate}")
        time.sleep(interval)


def gone(pid: int) -> bool:
    """The process ``pid`` has exited (a zombie awaiting its parent counts), checked without a race."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _our_execution_processes() -> list[psutil.Process]:
    prefix = f"{COOKIE_VARIABLE}={os.getpid()}-".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                variables = environ.read().split(b"\0")
            process = psutil.Process(int(entry))
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
        except (OSError, psutil.NoSuchProcess):
            continue
        if any(variable.startswith(prefix) for variable in variables):
            found.append(process)
    return found


def _governor_parents() -> list[Path]:
    from runner import _cgroup_v1, _cgroup_v2

    parents = []
    if _cgroup_v1.unavailable_reason() is None:
        parents += [
            Path(_cgroup_v1.parent_dir(c))
            for c in ("memory", "cpuacct", "cpu", "pids")
            if c in _cgroup_v1.available_controllers()
        ]
    mount = _cgroup_v2.mount_point()
    if mount is not None:
        parents.append(Path(_cgroup_v2.parent_dir(mount, _cgroup_v2.own_path())))
    return parents


def _our_cgroups() -> list[str]:
    prefix = f"{os.getpid()}-"
    found = []
    for parent in _governor_parents():
        if parent.is_dir():
            found += [
                str(child) for child in parent.iterdir() if child.is_dir() and child.name.startswith(prefix)
            ]
    return found


def _leaked_children() -> list[psutil.Process]:
    zygote = default_fork_server().pid
    leaked = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid != zygote and child.status() != psutil.STATUS_ZOMBIE:
                leaked.append(child)
        except psutil.NoSuchProcess:
            continue
    return leaked


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In the cgroup v2 lane a skipped test fails: each one there is meant to run."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if CGROUP2_LANE and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in the cgroup v2 lane, where every test must run: {reason}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The per-test deadlock guard (pytest-timeout's ``timeout`` in pyproject) stretches with
    the host too, unless one was given on the command line or in ``PYTEST_TIMEOUT``. In the
    cgroup v2 lane, tests marked ``cgroup1`` (a v1 hierarchy built by hand) are left out."""
    if CGROUP2_LANE:
        kept = [item for item in items if item.get_closest_marker("cgroup1") is None]
        left_out = [item for item in items if item.get_closest_marker("cgroup1") is not None]
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = kept
    if SLOWNESS == 1.0 or config.getoption("timeout", None) is not None or "PYTEST_TIMEOUT" in os.environ:
        return
    stretched = pytest.mark.timeout(guard(float(config.getini("timeout"))))
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(stretched)


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves processes or cgroups behind (and clean them up), or if a
    scheduler loop caught an error while it ran (``@pytest.mark.loop_errors(n)``: exactly n)."""
    from governor.scheduling._loop import loop_errors

    marker = request.node.get_closest_marker("loop_errors")
    expected = marker.args[0] if marker is not None else 0
    errors_before = loop_errors()
    yield
    caught = loop_errors() - errors_before
    deadline = time.monotonic() + 5
    while True:
        processes = _leaked_children() + _our_execution_processes()
        cgroups = _our_cgroups()
        if (not processes and not cgroups) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    for path in cgroups:
        try:
            os.rmdir(path)
        except OSError:
            continue
    assert not processes, (
        f"processes left behind: {[(p.pid, p.info if hasattr(p, 'info') else p) for p in processes]}"
    )
    assert not cgroups, f"cgroups left behind: {cgroups}"
    assert caught == expected, (
        f"a scheduler loop caught {caught} error(s) of its own, {expected} expected (see the log)"
    )


@pytest.fixture
def ready_file(tmp_path: Path) -> str:
    """A path a child creates when it is ready (tests wait for it instead of sleeping)."""
    return str(tmp_path / "ready")


# ``GOVERNOR_TEST_LANE=cgroup2`` (``make test-cgroup2``, in the cgroup v2 VM): the tests run
# over the mechanisms this host offers only, cgroup v2 among them, and a skip is a failure.
CGROUP2_LANE = os.environ.get("GOVERNOR_TEST_LANE") == "cgroup2"


def _mode_params() -> list[object]:
    from runner import Enforcement
    from runner._enforcement import cgroup_unavailable

    params = []
    for mode in (Enforcement.CGROUP2, Enforcement.CGROUP1):
        reason = cgroup_unavailable(mode)
        if reason and CGROUP2_LANE and mode is Enforcement.CGROUP2:
            raise pytest.UsageError(f"the cgroup v2 lane runs on a cgroup v2 host; here: {reason}")
        if reason and CGROUP2_LANE:
            continue  # not offered here: nothing to run, rather than a skip
        marks = [pytest.mark.skip(reason=f"host lacks {mode}: {reason}")] if reason else []
        params.append(pytest.param(mode, marks=marks, id=str(mode)))
    params.append(pytest.param(Enforcement.RLIMIT, id="rlimit"))
    params.append(pytest.param(Enforcement.WATCHDOG, id="watchdog"))
    return params


MODES = _mode_params()


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> object:
    """Every enforcement mode; those this host lacks are skipped with the reason."""
    return request.param


def cgroup_mode_or_skip() -> object:
    """The strongest cgroup mode this host has; skips the test when it has none."""
    from runner import Enforcement
    from runner._enforcement import cgroup_unavailable

    for mode in (Enforcement.CGROUP2, Enforcement.CGROUP1):
        if cgroup_unavailable(mode) is None:
            return mode
    pytest.skip("this host offers no writable cgroup hierarchy")


async def until_ready(path: Path, call: asyncio.Future[object]) -> None:
    """Await a readiness file written by ``call``'s child (a deadlock guard, not a delay);
    fail at once if the call ended without writing it."""
    deadline = time.monotonic() + guard(30)
    while not path.exists():
        assert not call.done(), call.result()
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.01)


async def time_out_once_running(call: asyncio.Future[object], ready: Path) -> None:
    """An asyncio timeout (what ``asyncio.wait_for`` is built on) on ``call``, due once its
    child has written ``ready``: never before it surely runs, however slow the host. The call
    can never end by itself, so only the timeout ends it; ``TimeoutError`` must come."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as deadline:
            await until_ready(ready, call)
            deadline.reschedule(asyncio.get_running_loop().time())
            await call
