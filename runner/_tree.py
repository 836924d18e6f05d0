"""Confinement without cgroups: the execution's process tree, read from /proc.

Membership is the union of: the child and its descendants now (followed through each
member's ``/proc/<pid>/task/<tid>/children``, so a sample reads the tree, never the whole
process table), every member seen at an earlier sample (its /proc files are held open, which
binds them to that process: pid reuse cannot fool it), and, in a ``thorough`` pass used when
killing, every process whose session is the child's or whose environment carries the
execution's cookie (``GOVERNOR_EXECUTION_ID``). Those are looked for among the children of the
zygote, a subreaper: a descendant whose parent died is reparented to it, so the orphans of
every execution are its children, and the pass costs what runs under the zygote, not what
runs on the host (without a known subreaper, among every process on the host). Double-forked
and setsid'd descendants of a command keep the cookie, so they are found after their parent
is gone; a descendant that both scrubs its environment and leaves the session escapes, which
only a cgroup prevents.

A kernel without ``children`` files (``CONFIG_PROC_CHILDREN``) is served by psutil's scan of
the process table instead.
"""

from __future__ import annotations

import os

from runner._confinement import CounterFile, Reading, proc_stat

COOKIE_VARIABLE = "GOVERNOR_EXECUTION_ID"
THREADS_RECHECK = 10  # samples between looks at which threads a member has (children hang off each)
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class _Member:
    """One process of the tree, its /proc files held open (so bound to that very process)."""

    __slots__ = ("_looks", "_threads", "pid", "stat", "statm")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stat = CounterFile(f"/proc/{pid}/stat")
        self.statm = CounterFile(f"/proc/{pid}/statm")
        self._threads: dict[str, CounterFile] = {}  # tid -> its children file
        self._looks = 0

    def children(self) -> list[int]:
        """The pids of its children now: read from each of its threads' ``children`` file (a
        child is listed under the thread that forked it); which threads it has is looked at
        again every ``THREADS_RECHECK`` calls. ``FileNotFoundError`` if the kernel has no such
        files (``CONFIG_PROC_CHILDREN``)."""
        if self._looks % THREADS_RECHECK == 0:
            self._find_threads()
        self._looks += 1
        found: list[int] = []
        for tid, listed in list(self._threads.items()):
            try:
                found.extend(map(int, listed.read().split()))
            except OSError:  # the thread ended
                listed.close()
                del self._threads[tid]
        return found

    def _find_threads(self) -> None:
        try:
            tids = set(os.listdir(f"/proc/{self.pid}/task"))
        except OSError:
            tids = set()  # it is gone
        for tid in self._threads.keys() - tids:
            self._threads.pop(tid).close()
        for tid in tids - self._threads.keys():
            listed = CounterFile(f"/proc/{self.pid}/task/{tid}/children")
            try:
                listed.read()  # opens it: a kernel without children files says so now
            except FileNotFoundError:
                if os.path.exists(f"/proc/{self.pid}/task/{tid}"):
                    raise
                continue  # the thread ended meanwhile
            except OSError:
                continue
            self._threads[tid] = listed

    def fields(self) -> list[bytes] | None:
        """Its stat fields after the command name (state first), or ``None`` once it is dead."""
        try:
            data = self.stat.read()
        except OSError:
            return None
        fields = data[data.rindex(b")") + 2 :].split()
        return None if fields[0] in (b"Z", b"X") else fields

    def close(self) -> None:
        self.stat.close()
        self.statm.close()
        for listed in self._threads.values():
            listed.close()
        self._threads.clear()


class ProcessTree:
    """One execution's processes, found by ancestry, memory of past samples, session and cookie."""

    def __init__(self, cookie: str) -> None:
        self._cookie = f"{COOKIE_VARIABLE}={cookie}".encode()
        self._root: int | None = None
        self._members: dict[int, _Member] = {}
        self._cpu_floor = (0.0, 0.0)  # CPU can only grow; members that vanish keep theirs
        self._root_start = 0  # the child's start time in clock ticks since boot
        self._reaper: _Member | None = None  # where its orphans go

    def procs_files(self) -> list[str]:
        return []

    def attach(self, pid: int, reaper: int | None = None) -> None:
        stat = proc_stat(pid)
        if stat is None:
            return
        self._root = pid
        self._root_start = stat.start
        self._members[pid] = _Member(pid)
        if reaper is not None:
            self._reaper = _Member(reaper)

    def _live(self) -> list[tuple[_Member, list[bytes]]]:
        """The members alive now, with their stat fields: the dead are forgotten, and the
        descendants the live ones have forked since the last look join."""
        live = []
        for member in list(self._members.values()):
            fields = member.fields()
            if fields is None:
                self._forget(member)
            else:
                live.append((member, fields))
        pending = [member for member, _ in live]
        try:
            while pending:
                parent = pending.pop()
                for pid in parent.children():
                    joined = self._join(parent.pid, pid, live)
                    if joined is not None:
                        pending.append(joined)
        except FileNotFoundError:  # no children files in this kernel: a scan instead
            for parent_pid, pid in self._children_by_scan([member.pid for member, _ in live]):
                self._join(parent_pid, pid, live)
        return live

    def _join(self, parent: int, pid: int, live: list[tuple[_Member, list[bytes]]]) -> _Member | None:
        """Make ``pid``, listed as a child of ``parent``, a member if it is still that child
        (pid reuse: a child of that parent, born after the root); the new member, if any."""
        if pid in self._members:
            return None
        member = _Member(pid)
        fields = member.fields()
        if fields is None or int(fields[1]) != parent or int(fields[19]) < self._root_start:
            member.close()
            return None
        self._members[pid] = member
        live.append((member, fields))
        return member

    def _children_by_scan(self, pids: list[int]) -> list[tuple[int, int]]:
        import psutil  # only for kernels without children files; a plain run never needs it

        found: list[tuple[int, int]] = []
        for pid in pids:
            try:
                children = psutil.Process(pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for child in children:
                if child.pid not in self._members:
                    try:
                        found.append((child.ppid(), child.pid))
                    except psutil.NoSuchProcess:
                        continue
        return found

    def read(self, count_processes: bool = True) -> Reading | None:
        # Summing RSS counts pages shared between forked processes once per process; counting
        # each process's private part plus the largest shared part is far closer to the truth.
        private = shared = ticks_user = ticks_system = 0
        count = 0
        for member, fields in self._live():
            try:
                statm = member.statm.read().split()
            except OSError:  # it has exited since: its CPU stays in the floor
                self._forget(member)
                continue
            # utime, stime, cutime, cstime: its own CPU and that of the children it waited for.
            ticks_user += int(fields[11]) + int(fields[13])
            ticks_system += int(fields[12]) + int(fields[14])
            resident, shared_pages = int(statm[1]), int(statm[2])
            private += resident - shared_pages
            shared = max(shared, shared_pages)
            count += 1
        user = max(ticks_user / _TICKS, self._cpu_floor[0])
        system = max(ticks_system / _TICKS, self._cpu_floor[1])
        self._cpu_floor = (user, system)
        return Reading((private + shared) * _PAGE, user + system, count)

    def _forget(self, member: _Member) -> None:
        member.close()
        self._members.pop(member.pid, None)

    def members(self, thorough: bool = False) -> list[int]:
        if thorough:
            pids = self._scan_orphans() if self._reaper is not None else self._scan_proc()
        else:
            pids = {member.pid for member, _ in self._live()}
        pids.discard(os.getpid())
        return sorted(pids)

    def _scan_orphans(self) -> set[int]:
        """The members, and the zygote's children that are this execution's orphans (by their
        session or their cookie), which join, with their descendants."""
        assert self._reaper is not None
        live = self._live()
        try:
            orphans = self._reaper.children()
        except (FileNotFoundError, OSError):
            return self._scan_proc()
        joined = False
        for pid in orphans:
            if pid in self._members:
                continue
            stat = proc_stat(pid)
            if stat is None or stat.zombie or stat.start < self._root_start:
                continue
            if stat.session == self._root or self._has_cookie(pid):
                joined = self._join(stat.parent, pid, live) is not None or joined
        if joined:
            live = self._live()  # and what the orphans have forked
        return {member.pid for member, _ in live}

    def _has_cookie(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                return self._cookie in environ.read().split(b"\0")
        except OSError:
            return False

    def _scan_proc(self) -> set[int]:
        """One pass over /proc: descendants (by parent links), the child's session, and the
        cookie holders. Only processes started no earlier than the child can be any of these,
        so older ones are skipped after reading their stat line (no environ read)."""
        root = self._root
        known = {member.pid for member, _ in self._live()}  # held open: never a reused pid
        table: dict[int, tuple[int, int]] = {}  # pid -> (parent, session), young live ones only
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            stat = proc_stat(int(entry))
            if stat is None or stat.zombie or stat.start < self._root_start:
                continue
            table[int(entry)] = (stat.parent, stat.session)
        found = {pid for pid in table if pid in known or pid == root or table[pid][1] == root}
        changed = True
        while changed:  # close over parent links: children of members are members
            changed = False
            for pid, (parent, _session) in table.items():
                if pid not in found and parent in found:
                    found.add(pid)
                    changed = True
        found.update(pid for pid in table.keys() - found if self._has_cookie(pid))
        return found

    def final_cpu(self) -> tuple[float, float] | None:
        return self._cpu_floor  # what every member measured, the vanished included

    def peak_memory(self) -> int | None:
        return None

    def oom_kills(self) -> int:
        return 0

    def throttled_seconds(self) -> float:
        return 0.0  # without a cgroup the duty cycle throttles, and keeps its own account

    def refused_forks(self) -> int:
        return 0  # nothing refuses a fork here: the watchdog counts and kills instead

    def memory_high_events(self) -> int:
        return 0  # memory_high is v2's alone

    def stall_seconds(self) -> dict[str, float]:
        return {}  # per-task pressure is v2's alone

    def kill_all(self) -> bool:
        return False

    def remove(self) -> bool:
        for member in self._members.values():
            member.close()
        self._members.clear()
        if self._reaper is not None:
            self._reaper.close()
            self._reaper = None
        return True
