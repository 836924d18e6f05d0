"""cgroup v1 backend, through cgroup-utils (``cgutils``).

Per execution, one cgroup named after it under ``<own cgroup>/governor/`` in each hierarchy it
needs: memory (limit, memsw, true peak, OOM count, membership), cpuacct (CPU of the whole tree,
reaped descendants included), and cpu / pids only when a cpu_rate / pids limit asks for them.
v1 has no ``cgroup.kill``: killing is a loop over ``cgroup.procs`` until it is empty.
"""

from __future__ import annotations

import errno
import os
from functools import cache
from typing import Any

from policies import Limits
from runner._confinement import (
    CounterFile,
    Reading,
    keyed,
    live_pids,
    read_file,
    release_at_exit,
    remove_cgroup,
    split_cpu,
)

PARENT = "governor"
CFS_PERIOD_US = 100_000


@cache
def _cgutils() -> Any:
    from cgutils import cgroup  # imported lazily: it reads host files at import (~30 ms)

    return cgroup


@cache
def _mounts() -> dict[str, str]:
    return dict(_cgutils().SubsystemStatus().paths)


@cache
def _own_paths(pid: int) -> dict[str, str]:
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup") as lines:
        for line in lines:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                if controller:
                    paths[controller] = path
    return paths


def own_paths() -> dict[str, str]:
    """This process's cgroup path in each v1 hierarchy, by controller name (cached per pid)."""
    return _own_paths(os.getpid())


def parent_dir(controller: str) -> str:
    """``<mount>/<own path>/governor`` for ``controller``."""
    return _parent_dir(controller, os.getpid())


@cache
def _parent_dir(controller: str, pid: int) -> str:
    path = os.path.join(_mounts()[controller] + own_paths().get(controller, "/").rstrip("/"), PARENT)
    os.makedirs(path, exist_ok=True)
    release_at_exit(path)
    return path


def _make_child(controller: str, name: str) -> str:
    parent = parent_dir(controller)
    path = os.path.join(parent, name)
    try:
        os.mkdir(path)
    except FileNotFoundError:  # another supervisor sharing the parent removed it as it exited
        os.makedirs(parent, exist_ok=True)
        os.mkdir(path)
    return path


def unavailable_reason() -> str | None:
    """Why v1 enforcement cannot be used here, or ``None`` when it can."""
    try:
        mounts = _mounts()
    except Exception as error:  # cgutils failed to read /proc: report it as the reason
        return f"cannot read the cgroup mounts: {error}"
    for controller in ("memory", "cpuacct"):
        if controller not in mounts:
            return f"the v1 {controller} controller is not mounted"
    try:
        for controller in ("memory", "cpuacct"):
            parent = parent_dir(controller)
            os.makedirs(parent, exist_ok=True)
            # It may exist already, made by another user (root): ours must be able to use it.
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"cannot create cgroups in {parent}: it is not writable by uid {os.geteuid()}"
    except OSError as error:
        return f"cannot create {PARENT!r} cgroups: {error.strerror}"
    return None


def available_controllers() -> set[str]:
    """The v1 controllers mounted on this host."""
    return set(_mounts())


class CgroupV1:
    """One execution's v1 cgroups.

    cgroup-utils finds the hierarchies and parses what it reads; the per-execution files are
    written and read by path, because building a ``cgutils.CGroup`` re-reads /proc/mounts
    and /proc/cgroups (about 0.5 ms each time) and this sits on every execution's path.
    """

    def __init__(self, name: str, limits: Limits) -> None:
        wanted = ["memory", "cpuacct"]
        if limits.cpu_rate is not None:
            wanted.append("cpu")
        if limits.pids is not None and "pids" in available_controllers():
            wanted.append("pids")
        self._dir: dict[str, str] = {}
        self._dirs: list[str] = []
        self._counters: tuple[CounterFile, ...] = ()
        self._pids_events: CounterFile | None = None
        try:
            for controller in wanted:
                path = os.path.join(parent_dir(controller), name)
                if path not in self._dirs:  # comounted controllers (cpu,cpuacct) share a dir
                    self._dirs.append(_make_child(controller, name))
                self._dir[controller] = path
            self._configure(limits)
        except BaseException:
            self.remove()
            raise

    def _file(self, controller: str, name: str) -> str:
        return os.path.join(self._dir[controller], name)

    def _set(self, controller: str, name: str, value: int) -> None:
        with open(self._file(controller, f"{controller}.{name}"), "w") as handle:
            handle.write(str(value))

    def _configure(self, limits: Limits) -> None:
        if limits.memory is not None:
            self._set("memory", "limit_in_bytes", limits.memory)
            if _host_has_swap() and os.path.exists(self._file("memory", "memory.memsw.limit_in_bytes")):
                try:  # swap counted too, so the limit cannot be dodged by swapping out
                    self._set("memory", "memsw.limit_in_bytes", limits.memory)
                except OSError as error:
                    if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
        if limits.cpu_rate is not None:
            self._set("cpu", "cfs_period_us", CFS_PERIOD_US)
            self._set("cpu", "cfs_quota_us", max(1000, int(limits.cpu_rate * CFS_PERIOD_US)))
        if "pids" in self._dir and limits.pids is not None:
            self._set("pids", "max", limits.pids)

    @property
    def paths(self) -> list[str]:
        """The cgroup directories of this execution."""
        return list(self._dirs)

    def procs_files(self) -> list[str]:
        return [os.path.join(path, "cgroup.procs") for path in self._dirs]

    def attach(self, pid: int, reaper: int | None = None) -> None:
        return None  # the child joins by itself, before it runs anything

    def read(self, count_processes: bool = True) -> Reading | None:
        if not self._counters:
            self._counters = tuple(
                CounterFile(self._file(controller, name))
                for controller, name in (
                    ("memory", "memory.usage_in_bytes"),
                    ("cpuacct", "cpuacct.usage"),  # exact, in ns
                    ("memory", "cgroup.procs"),  # lists no zombies
                )
            )
        memory, total, procs = self._counters
        try:
            processes = procs.read().count(b"\n") if count_processes else 0
            return Reading(memory.number(), total.number() / 1e9, processes)
        except (OSError, ValueError):
            return None

    def members(self, thorough: bool = False) -> list[int]:
        try:
            pids = [int(line) for line in read_file(self._file("memory", "cgroup.procs")).split()]
        except OSError:
            return []
        return live_pids(pids)

    def final_cpu(self) -> tuple[float, float] | None:
        try:
            total = int(read_file(self._file("cpuacct", "cpuacct.usage"))) / 1e9
            ticks = keyed(read_file(self._file("cpuacct", "cpuacct.stat")))
        except (OSError, ValueError):
            return None
        return split_cpu(total, ticks.get(b"user", 0), ticks.get(b"system", 0))

    def peak_memory(self) -> int | None:
        try:
            return int(read_file(self._file("memory", "memory.max_usage_in_bytes"))) or None
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        try:
            return keyed(read_file(self._file("memory", "memory.oom_control"))).get(b"oom_kill", 0)
        except (OSError, ValueError):
            return 0

    def refused_forks(self) -> int:
        if "pids" not in self._dir:
            return 0
        if self._pids_events is None:  # read at every sample with a pids limit: held open
            self._pids_events = CounterFile(self._file("pids", "pids.events"))
        try:
            return keyed(self._pids_events.read()).get(b"max", 0)
        except (OSError, ValueError):
            return 0

    def throttled_seconds(self) -> float:
        if "cpu" not in self._dir:
            return 0.0
        try:
            with open(self._file("cpu", "cpu.stat"), "rb") as handle:
                stat = dict(line.split() for line in handle.read().splitlines() if line.strip())
            return int(stat.get(b"throttled_time", 0)) / 1e9
        except (OSError, ValueError):
            return 0.0

    def memory_high_events(self) -> int:
        return 0  # memory_high is v2's alone

    def stall_seconds(self) -> dict[str, float]:
        return {}  # per-task pressure is v2's alone

    def kill_all(self) -> bool:
        return False

    def remove(self) -> bool:
        for counter in (*self._counters, *([self._pids_events] if self._pids_events else [])):
            counter.close()
        self._dirs = [path for path in self._dirs if not remove_cgroup(path)]
        return not self._dirs


@cache
def _host_has_swap() -> bool:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("SwapTotal:"):
                return int(line.split()[1]) > 0
    return True
