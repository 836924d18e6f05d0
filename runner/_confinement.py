"""What every confinement backend offers the execution: a reading of usage now, the member
processes, and cleanup. Backends: ``CgroupV2``, ``CgroupV1`` and ``ProcessTree`` (no cgroup).
"""

from __future__ import annotations

import atexit
import errno
import os
from dataclasses import dataclass
from typing import NamedTuple, Protocol


@dataclass(frozen=True, slots=True)
class Reading:
    """Usage of a whole process tree at one moment: memory in use, CPU seconds used so far
    (user + system: a sample needs no split, ``final_cpu`` gives it at the end), processes."""

    memory_bytes: int
    cpu_seconds: float
    processes: int


class Confinement(Protocol):
    """One execution's container: a cgroup, or a tracked process tree."""

    def procs_files(self) -> list[str]:
        """Files the child writes its pid to, to join (empty without cgroups)."""
        ...

    def attach(self, pid: int, reaper: int | None = None) -> None:
        """Note the child's pid once it exists; ``reaper`` is the subreaper its orphans are
        reparented to (the zygote)."""
        ...

    def read(self, count_processes: bool = True) -> Reading | None:
        """Current usage of the tree, or ``None`` when it cannot be read; the process count is
        0 when not asked for (it costs a read of the member list)."""
        ...

    def members(self, thorough: bool = False) -> list[int]:
        """Live (non-zombie) pids in the tree; ``thorough`` may cost more to miss none."""
        ...

    def final_cpu(self) -> tuple[float, float] | None:
        """CPU seconds (user, system) of the whole tree once it has ended, or ``None``."""
        ...

    def peak_memory(self) -> int | None:
        """The true peak the kernel recorded, or ``None`` if this backend has none."""
        ...

    def oom_kills(self) -> int:
        """Processes the kernel OOM-killed inside this container."""
        ...

    def throttled_seconds(self) -> float:
        """Time the kernel held the tree back for its cpu_rate quota (0 without one)."""
        ...

    def memory_high_events(self) -> int:
        """Times the tree went past its memory_high and was reclaimed and throttled (v2)."""
        ...

    def stall_seconds(self) -> dict[str, float]:
        """Seconds its tasks stalled, by resource (cpu, memory, io), where the kernel says (v2)."""
        ...

    def refused_forks(self) -> int:
        """Forks the kernel refused because the tree was at its pids limit (cgroups; else 0)."""
        ...

    def kill_all(self) -> bool:
        """Kill every member in one kernel operation if the backend can; else ``False``."""
        ...

    def remove(self) -> bool:
        """Release the container; ``False`` if it is still busy (try again later)."""
        ...


class CounterFile:
    """A counter file read again at every sample: opened once, then one ``pread`` a reading.

    Opening, reading and closing a cgroup or /proc file costs about 7 us; a ``pread`` on a
    descriptor kept open, about 1 us, and the kernel renders the file afresh each time. A
    /proc/<pid> file so held also stays bound to that process: once it is gone, reads fail
    (``OSError``) instead of describing whoever reuses the pid.
    """

    __slots__ = ("_fd", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self) -> bytes:
        """The file's whole content now; ``OSError`` if it cannot be read."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        data = os.pread(self._fd, 4096, 0)
        if len(data) < 4096:
            return data
        chunks = [data]  # a long list of pids: keep reading where the last chunk ended
        offset = len(data)
        while chunk := os.pread(self._fd, 1 << 16, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def number(self) -> int:
        """The file's content as one whole number."""
        return int(self.read())

    def close(self) -> None:
        """Release the descriptor (it is opened again if read again)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_file(path: str) -> bytes:
    """A small file's content, read with one open, one read and one close (``open()`` would
    build a buffered file object around them: most of the cost of a one-off read)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def keyed(text: bytes) -> dict[bytes, int]:
    """A flat-keyed cgroup file (``key value`` per line) as a dict."""
    pairs = (line.split() for line in text.splitlines())
    return {pair[0]: int(pair[1]) for pair in pairs if len(pair) == 2}


def split_cpu(total: float, user_share: float, system_share: float) -> tuple[float, float]:
    """``total`` CPU seconds split between user and system in the ratio of the two shares.

    Kernels keep a task group's total exactly (``cpuacct.usage``, cpu.stat ``usage_usec``) but
    may split it by clock ticks, so the split alone can exceed the run's wall time by a tick;
    scaling the split to the exact total (as the kernel's own ``cputime_adjust`` does for a
    process) keeps both honest.
    """
    shares = user_share + system_share
    if shares <= 0:
        return total, 0.0
    user = total * user_share / shares
    return user, total - user


class ProcStat(NamedTuple):
    """The few fields of /proc/<pid>/stat the runner needs."""

    parent: int
    session: int
    start: int  # clock ticks since boot
    zombie: bool  # a zombie, or dead and about to vanish
    stopped: bool  # by a signal (SIGSTOP, SIGTSTP), which SIGCONT ends; not a tracer's stop


def proc_stat(pid: int) -> ProcStat | None:
    """Read /proc/<pid>/stat; ``None`` if the process is gone.

    os-level calls, not ``open``: this runs for every member at every kill pass and for every
    process on the host at a tree sweep.
    """
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return None
    # After the parenthesised command name, from 0: state, ppid, pgrp, session, ..., starttime.
    fields = data[data.rindex(b")") + 2 :].split()
    state = fields[0]
    return ProcStat(int(fields[1]), int(fields[3]), int(fields[19]), state in (b"Z", b"X"), state == b"T")


def is_zombie(pid: int) -> bool:
    """True if ``pid`` is a zombie or gone."""
    stat = proc_stat(pid)
    return stat is None or stat.zombie


def live_pids(pids: list[int]) -> list[int]:
    """Drop zombies and vanished pids."""
    return [pid for pid in pids if not is_zombie(pid)]


def remove_cgroup(path: str) -> bool:
    """Remove the cgroup ``path``; ``False`` while it is busy (a member not yet gone).

    A governor running inside the execution made cgroups of its own under it, which keep it
    busy once its processes are gone: those are removed too, deepest first. A missing cgroup
    counts as removed.
    """
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError as error:
        if error.errno != errno.EBUSY:
            raise
    for directory, _subdirectories, _files in os.walk(path, topdown=False):  # it comes last
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            continue
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            return False
    return True


_parents: set[str] = set()  # the ``governor`` parent cgroups this process made or used
_parents_of = 0  # the pid they belong to: a forked copy of this process has none of its own


def release_at_exit(parent: str) -> None:
    """Remove the parent cgroup ``parent`` when this process exits, if it is empty then (other
    supervisors sharing it may still use it: the last to leave removes it)."""
    global _parents_of
    if _parents_of != os.getpid():
        _parents.clear()
        _parents_of = os.getpid()
        atexit.register(release_parents)
    _parents.add(parent)


def release_parents() -> None:
    """Remove the empty parent cgroups this process used (at exit, or now when called)."""
    if _parents_of != os.getpid():
        return  # inherited across a fork: the parent process releases them
    for parent in sorted(_parents, key=len, reverse=True):
        try:
            os.rmdir(parent)
        except OSError as error:
            # ENOENT: a supervisor that shared it left last and removed it; EBUSY: another one's
            # executions are still in it, and it removes it as it exits. Both are as they should be.
            if error.errno not in (errno.ENOENT, errno.EBUSY):
                import logging  # here: only this rare path needs it, and every run would load it

                logging.getLogger("runner.cgroups").warning(
                    "could not remove the cgroup %s: %s", parent, error.strerror
                )
    _parents.clear()
