"""Killing what is left of an execution whose supervisor died (crash recovery).

The dead supervisor cannot be asked; what it recorded can: the execution's id (its cgroups'
name and the ``GOVERNOR_EXECUTION_ID`` cookie in its processes' environment), the child's pid
with its start time (so a reused pid is never killed), and its cgroup directories.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable

from runner._confinement import live_pids, proc_stat, remove_cgroup
from runner._owners import forget_owner, owner_is_dead, registered_owners, token_of
from runner._tree import COOKIE_VARIABLE

GIVE_UP = 10.0  # seconds of SIGKILL passes before reporting survivors


def kill_leftovers(
    run_id: str, pid: int | None, pid_start_ticks: int | None, cgroups: Iterable[str]
) -> list[int]:
    """SIGKILL every process of the execution ``run_id`` still alive, then remove its cgroups.

    Returns the pids that were killed. Processes are found in the recorded cgroups, as the
    recorded pid (only if its start time still matches), and by the environment cookie.
    """
    directories = [path for path in cgroups if os.path.isdir(path)]
    killed: set[int] = set()
    deadline = time.monotonic() + GIVE_UP
    while time.monotonic() < deadline:
        found = _members(run_id, pid, pid_start_ticks, directories)
        if not found:
            break
        for member in found:
            with contextlib.suppress(ProcessLookupError):  # it died meanwhile: good
                os.kill(member, signal.SIGKILL)
        killed.update(found)
        time.sleep(0.005)  # recovery runs once, before the schedule starts: a short wait is fine
    for path in sorted(directories, key=len, reverse=True):
        for _ in range(200):  # an emptied cgroup can stay busy for a moment
            if remove_cgroup(path):
                break
            time.sleep(0.005)
    return sorted(killed)


def _members(run_id: str, pid: int | None, start: int | None, cgroups: list[str]) -> set[int]:
    found: set[int] = set()
    for path in cgroups:
        try:
            with open(os.path.join(path, "cgroup.procs")) as procs:
                found.update(int(line) for line in procs if line.strip())
        except OSError:
            continue
    if pid is not None and start is not None:
        stat = proc_stat(pid)
        if stat is not None and stat.start == start and not stat.zombie:
            found.add(pid)
    cookie = f"{COOKIE_VARIABLE}={run_id}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if cookie in environ.read().split(b"\0"):
                    found.add(int(entry))
        except OSError:
            continue
    found.discard(os.getpid())
    return set(live_pids(sorted(found)))


def sweep_orphan_cgroups() -> dict[str, list[int]]:
    """Kill and remove execution cgroups whose supervisor is proved dead.

    An execution's cgroup is named ``<supervisor pid>-<serial>-<owner token>``. Only a cgroup
    whose owner registered here and no longer holds its lock is touched (see ``_owners``): not
    one of a live supervisor in another pid namespace that happens to use a pid dead in ours,
    nor one of a governor with another registry. Returns the removed cgroup paths with the pids
    killed in each.
    """
    from runner import _cgroup_v1, _cgroup_v2

    parents: list[str] = []
    if _cgroup_v1.unavailable_reason() is None:
        parents += [
            _cgroup_v1.parent_dir(c) for c in sorted(_cgroup_v1.available_controllers() & _CONTROLLERS)
        ]
    mount = _cgroup_v2.mount_point()
    if mount is not None:
        parents.append(_cgroup_v2.parent_dir(mount, _cgroup_v2.own_path()))
    swept: dict[str, list[int]] = {}
    dead: set[str] = set()
    for parent in parents:
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            path = os.path.join(parent, name)
            token = token_of(name)
            if not os.path.isdir(path) or not (token in dead or owner_is_dead(token)):
                continue
            dead.add(token)
            swept[path] = kill_leftovers(name, None, None, [path])
    # Owners whose zygote cleaned up after them leave only their registry file.
    for token in dead | {token for token in registered_owners() if owner_is_dead(token)}:
        forget_owner(token)
    return swept


_CONTROLLERS = {"memory", "cpuacct", "cpu", "pids"}
