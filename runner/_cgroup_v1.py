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
from runner._confinement import Reading, live_pids

PARENT = "governor"
CFS_PERIOD_US = 100_000
# What cgutils reads in get_stats()/get_configs(); without filters it reads every file,
# memory.kmem.slabinfo included.
_FILTERS = {"memory": ["max_usage_in_bytes", "usage_in_bytes", "oom_control"]}


@cache
def _cgutils() -> Any:
    from cgutils import cgroup  # imported lazily: it reads host files at import (~30 ms)

    return cgroup


@cache
def _mounts() -> dict[str, str]:
    return dict(_cgutils().SubsystemStatus().paths)


def own_paths() -> dict[str, str]:
    """This process's cgroup path in each v1 hierarchy, by controller name."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup") as lines:
        for line in lines:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                if controller:
                    paths[controller] = path
    return paths


def parent_dir(controller: str) -> str:
    """``<mount>/<own path>/governor`` for ``controller``."""
    return os.path.join(_mounts()[controller] + own_paths().get(controller, "/"), PARENT)


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
            os.makedirs(parent_dir(controller), exist_ok=True)
    except OSError as error:
        return f"cannot create {PARENT!r} cgroups: {error.strerror}"
    return None


def available_controllers() -> set[str]:
    """The v1 controllers mounted on this host."""
    return set(_mounts())


class CgroupV1:
    """One execution's v1 cgroups."""

    def __init__(self, name: str, limits: Limits) -> None:
        cgutils = _cgutils()
        wanted = ["memory", "cpuacct"]
        if limits.cpu_rate is not None:
            wanted.append("cpu")
        if limits.pids is not None and "pids" in available_controllers():
            wanted.append("pids")
        self._groups: dict[str, Any] = {}
        self._dirs: list[str] = []
        try:
            for controller in wanted:
                path = os.path.join(parent_dir(controller), name)
                if path not in self._dirs:  # comounted controllers (cpu,cpuacct) share a dir
                    os.makedirs(path)
                    self._dirs.append(path)
                subsystem = cgutils._get_subsystem(controller)
                root = cgutils.CGroup(subsystem, _mounts()[controller])
                self._groups[controller] = cgutils.CGroup(
                    subsystem, path, parent=root, filters=_FILTERS.get(controller, [])
                )
            self._configure(limits)
        except BaseException:
            self.remove()
            raise

    def _configure(self, limits: Limits) -> None:
        memory = self._groups["memory"]
        if limits.memory is not None:
            memory.set_config("limit_in_bytes", limits.memory)
            if os.path.exists(memory.paths["memsw.limit_in_bytes"]):
                try:  # swap counted too, so the limit cannot be dodged by swapping out
                    memory.set_config("memsw.limit_in_bytes", limits.memory)
                except OSError as error:
                    if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
        if limits.cpu_rate is not None:
            cpu = self._groups["cpu"]
            cpu.set_config("cfs_period_us", CFS_PERIOD_US)
            cpu.set_config("cfs_quota_us", max(1000, int(limits.cpu_rate * CFS_PERIOD_US)))
        if "pids" in self._groups and limits.pids is not None:
            self._groups["pids"].set_config("max", limits.pids)

    @property
    def paths(self) -> list[str]:
        """The cgroup directories of this execution."""
        return list(self._dirs)

    def procs_files(self) -> list[str]:
        return [os.path.join(path, "cgroup.procs") for path in self._dirs]

    def attach(self, pid: int) -> None:
        return None  # the child joins by itself, before it runs anything

    def read(self) -> Reading | None:
        try:
            memory = _read_int(self._groups["memory"].paths["usage_in_bytes"])
            cpuacct = self._groups["cpuacct"].paths
            user = _read_int(cpuacct["usage_user"]) / 1e9
            system = _read_int(cpuacct["usage_sys"]) / 1e9
        except (OSError, ValueError):
            return None
        return Reading(memory, user, system, len(self.members()))

    def members(self, thorough: bool = False) -> list[int]:
        try:
            with open(self._groups["memory"].paths["cgroup.procs"]) as procs:
                pids = [int(line) for line in procs if line.strip()]
        except OSError:
            return []
        return live_pids(pids)

    def peak_memory(self) -> int | None:
        try:
            return int(self._groups["memory"].get_stats().get("max_usage_in_bytes", 0)) or None
        except OSError:
            return None

    def oom_kills(self) -> int:
        try:
            control = self._groups["memory"].get_configs().get("oom_control", {})
        except OSError:
            return 0
        return int(control.get("oom_kill", 0))

    def kill_all(self) -> bool:
        return False

    def remove(self) -> bool:
        remaining = []
        for path in reversed(self._dirs):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                continue
            except OSError as error:
                if error.errno != errno.EBUSY:
                    raise
                remaining.append(path)
        self._dirs = [path for path in self._dirs if path in remaining]
        return not self._dirs


def _read_int(path: str) -> int:
    with open(path, "rb") as handle:
        return int(handle.read())
