"""Confinement without cgroups: the execution's process tree, tracked with psutil.

Membership is the union of: the child and its descendants now (one scan of the process
table), every descendant seen at an earlier sample (a pid + creation time, so pid reuse
cannot fool it), and — in a ``thorough`` pass, used when killing — every process whose
session is the child's or whose environment carries the execution's cookie
(``GOVERNOR_EXECUTION_ID``). Double-forked and setsid'd descendants of a command keep the
cookie, so they are found after their parent is gone; a descendant that both scrubs its
environment and leaves the session escapes, which only a cgroup prevents.
"""

from __future__ import annotations

import os

import psutil

from runner._confinement import Reading, proc_stat

COOKIE_VARIABLE = "GOVERNOR_EXECUTION_ID"


class ProcessTree:
    """One execution's processes, found by ancestry, memory of past samples, session and cookie."""

    def __init__(self, cookie: str) -> None:
        self._cookie = f"{COOKIE_VARIABLE}={cookie}".encode()
        self._root: psutil.Process | None = None
        self._seen: dict[tuple[int, float], psutil.Process] = {}
        self._cpu_floor = (0.0, 0.0)  # CPU can only grow; members that vanish keep theirs
        self._root_start = 0  # the child's start time in clock ticks since boot

    def procs_files(self) -> list[str]:
        return []

    def attach(self, pid: int) -> None:
        try:
            self._root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            self._root = None
            return
        stat = proc_stat(pid)
        self._root_start = stat.start if stat is not None else 0
        self._remember([self._root])

    def _remember(self, processes: list[psutil.Process]) -> None:
        for process in processes:
            try:
                self._seen.setdefault((process.pid, process.create_time()), process)
            except psutil.NoSuchProcess:
                continue

    def _current(self) -> list[psutil.Process]:
        if self._root is None:
            return []
        try:
            found = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            found = []
        self._remember(found)
        return [process for process in self._seen.values() if _alive(process)]

    def read(self, count_processes: bool = True) -> Reading | None:
        # Summing RSS counts pages shared between forked processes once per process; counting
        # each process's private part plus the largest shared part is far closer to the truth.
        private = 0
        shared = 0
        user = system = 0.0
        count = 0
        for process in self._current():
            try:
                with process.oneshot():
                    info = process.memory_info()
                    times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            private += info.rss - info.shared
            shared = max(shared, info.shared)
            user += times.user + times.children_user
            system += times.system + times.children_system
            count += 1
        user = max(user, self._cpu_floor[0])
        system = max(system, self._cpu_floor[1])
        self._cpu_floor = (user, system)
        return Reading(private + shared, user, system, count)

    def members(self, thorough: bool = False) -> list[int]:
        pids = self._scan_proc() if thorough else {process.pid for process in self._current()}
        pids.discard(os.getpid())
        return sorted(pids)

    def _scan_proc(self) -> set[int]:
        """One pass over /proc: descendants (by parent links), the child's session, and the
        cookie holders. Only processes started no earlier than the child can be any of these,
        so older ones are skipped after reading their stat line (no environ read)."""
        root = self._root.pid if self._root is not None else None
        seen = {pid for pid, _ in self._seen}
        table: dict[int, tuple[int, int]] = {}  # pid -> (parent, session), young live ones only
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            stat = proc_stat(int(entry))
            if stat is None or stat.zombie or stat.start < self._root_start:
                continue
            table[int(entry)] = (stat.parent, stat.session)
        found = {pid for pid in table if pid in seen or pid == root or table[pid][1] == root}
        changed = True
        while changed:  # close over parent links: children of members are members
            changed = False
            for pid, (parent, _session) in table.items():
                if pid not in found and parent in found:
                    found.add(pid)
                    changed = True
        for pid in table.keys() - found:
            try:
                with open(f"/proc/{pid}/environ", "rb") as environ:
                    if self._cookie in environ.read().split(b"\0"):
                        found.add(pid)
            except OSError:
                continue
        return found

    def peak_memory(self) -> int | None:
        return None

    def oom_kills(self) -> int:
        return 0

    def kill_all(self) -> bool:
        return False

    def remove(self) -> bool:
        return True


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
