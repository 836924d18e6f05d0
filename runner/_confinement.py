"""What every confinement backend offers the execution: a reading of usage now, the member
processes, and cleanup. Backends: ``CgroupV2``, ``CgroupV1`` and ``ProcessTree`` (no cgroup).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple, Protocol


@dataclass(frozen=True, slots=True)
class Reading:
    """Usage of a whole process tree at one moment."""

    memory_bytes: int
    cpu_user: float
    cpu_system: float
    processes: int

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_user + self.cpu_system


class Confinement(Protocol):
    """One execution's container: a cgroup, or a tracked process tree."""

    def procs_files(self) -> list[str]:
        """Files the child writes its pid to, to join (empty without cgroups)."""
        ...

    def attach(self, pid: int) -> None:
        """Note the child's pid once it exists."""
        ...

    def read(self, count_processes: bool = True) -> Reading | None:
        """Current usage of the tree, or ``None`` when it cannot be read; the process count is
        0 when not asked for (it costs a read of the member list)."""
        ...

    def members(self, thorough: bool = False) -> list[int]:
        """Live (non-zombie) pids in the tree; ``thorough`` may cost more to miss none."""
        ...

    def peak_memory(self) -> int | None:
        """The true peak the kernel recorded, or ``None`` if this backend has none."""
        ...

    def oom_kills(self) -> int:
        """Processes the kernel OOM-killed inside this container."""
        ...

    def kill_all(self) -> bool:
        """Kill every member in one kernel operation if the backend can; else ``False``."""
        ...

    def remove(self) -> bool:
        """Release the container; ``False`` if it is still busy (try again later)."""
        ...


class ProcStat(NamedTuple):
    """The few fields of /proc/<pid>/stat the runner needs."""

    parent: int
    session: int
    start: int  # clock ticks since boot
    zombie: bool  # a zombie, or dead and about to vanish


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
    return ProcStat(int(fields[1]), int(fields[3]), int(fields[19]), fields[0] in (b"Z", b"X"))


def is_zombie(pid: int) -> bool:
    """True if ``pid`` is a zombie or gone."""
    stat = proc_stat(pid)
    return stat is None or stat.zombie


def live_pids(pids: list[int]) -> list[int]:
    """Drop zombies and vanished pids."""
    return [pid for pid in pids if not is_zombie(pid)]
