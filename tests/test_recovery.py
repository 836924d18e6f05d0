"""Crash recovery helpers on real processes and cgroups."""

from __future__ import annotations

import fcntl
import os
import secrets
import subprocess

from conftest import cgroup_mode_or_skip, wait_until
from guards import guard

from runner import _cgroup_v2, kill_leftovers, run, sweep_orphan_cgroups
from runner._cgroup_v1 import parent_dir
from runner._owners import forget_owner, owner_is_dead, owner_token, registry, token_of
from runner._tree import COOKIE_VARIABLE


def _dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


def test_kill_leftovers_finds_processes_by_their_cookie() -> None:
    run_id = f"{_dead_pid()}-1-cookie"
    stray = subprocess.Popen(["sleep", "60"], env={**os.environ, COOKIE_VARIABLE: run_id})
    try:
        killed = kill_leftovers(run_id, None, None, [])
        assert killed == [stray.pid]
        assert stray.wait(timeout=10) == -9
    finally:
        stray.kill()
        stray.wait()


def test_a_reused_pid_is_not_killed() -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        assert kill_leftovers("nobody-1-x", bystander.pid, pid_start_ticks=1, cgroups=[]) == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def _registered_owner(*, alive: bool, token: str | None = None) -> tuple[str, int | None]:
    """A token in the owner registry: held by a live owner (its lock fd) or left by a dead one."""
    token = token or secrets.token_hex(8)
    os.makedirs(registry(), exist_ok=True)
    fd = os.open(os.path.join(registry(), token), os.O_RDWR | os.O_CREAT, 0o600)
    if alive:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return token, fd
    os.close(fd)
    return token, None


def _execution_parent() -> str:
    """Where this process's executions' cgroups go: the v1 memory hierarchy's, or v2's."""
    if str(cgroup_mode_or_skip()) == "cgroup1":
        return parent_dir("memory")
    mount = _cgroup_v2.mount_point()
    assert mount is not None
    parent = _cgroup_v2.parent_dir(mount, _cgroup_v2.own_path())
    os.makedirs(parent, exist_ok=True)
    return parent


def test_cgroups_of_a_dead_supervisor_are_swept_and_no_others() -> None:
    """Tests running in parallel start services, which sweep too: the dead owner is registered
    only once its cgroup holds its stray (registered first, it was once forgotten by such a
    sweep as an owner with nothing left, and its cgroup was then never swept), and what
    another sweep may be doing at the same moment is waited for."""
    dead = secrets.token_hex(8)
    # A live governor in another pid namespace: its pid means nothing here (it is dead in ours).
    living, lock = _registered_owner(alive=True)
    unknown = secrets.token_hex(8)  # a governor with another registry: nothing proves it dead
    paths = {
        owner: os.path.join(_execution_parent(), f"{_dead_pid()}-1-{owner}")
        for owner in (dead, living, unknown)
    }
    strays = {owner: subprocess.Popen(["sleep", "60"]) for owner in paths}
    try:
        for owner, path in paths.items():
            os.mkdir(path)
            with open(os.path.join(path, "cgroup.procs"), "w") as procs:
                procs.write(str(strays[owner].pid))
        _registered_owner(alive=False, token=dead)
        swept = sweep_orphan_cgroups()
        assert swept.get(paths[dead], [strays[dead].pid]) == [strays[dead].pid]
        assert paths[living] not in swept and paths[unknown] not in swept
        assert strays[dead].wait(timeout=guard(10)) == -9
        wait_until(lambda: not os.path.exists(paths[dead]))
        wait_until(lambda: not os.path.exists(os.path.join(registry(), dead)))  # forgotten once swept
        assert strays[living].poll() is None and strays[unknown].poll() is None
    finally:
        for stray in strays.values():
            stray.kill()
            stray.wait()
        for path in paths.values():
            if os.path.isdir(path):
                os.rmdir(path)
        if lock is not None:
            os.close(lock)
        for owner in (dead, living):
            forget_owner(owner)


def test_every_execution_carries_its_owners_registered_token() -> None:
    record = run(["sh", "-c", f"printf %s ${COOKIE_VARIABLE}"], capture=True)
    assert record.ok, record
    run_id = (record.stdout or b"").decode()
    assert token_of(run_id) == owner_token() and len(owner_token()) == 16
    assert not owner_is_dead(owner_token())  # this process holds its lock
