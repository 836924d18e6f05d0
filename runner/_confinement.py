"""What every confinement backend offers the execution: a reading of usage now, the member
processes, and cleanup. Backends: ``CgroupV2``, ``CgroupV1`` and ``ProcessTree`` (no cgroup).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol


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


def is_zombie(pid: int) -> bool:
    """True if ``pid`` is a zombie or gone (state read from /proc, no psutil)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return True
    return data[data.rindex(b")") + 2 : data.rindex(b")") + 3] in (b"Z", b"X")


def live_pids(pids: list[int]) -> list[int]:
    """Drop zombies and vanished pids."""
    return [pid for pid in pids if not is_zombie(pid)]
