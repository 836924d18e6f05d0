"""Choosing, per limit, the mechanism that enforces it on this host.

    limit        cgroup2           cgroup1               rlimit mode               watchdog mode
    memory       memory.max        memory.limit(+memsw)  RLIMIT_DATA + tree watch  tree watch
                 (+swap.max=0,                           (runner._watch: looks sooner near the
                 oom.group=1)                            limit; the record states its bound)
    memory_high  memory.high       not enforced anywhere else (v1 has no throttle below the
                                   limit); listed in the record's unenforced
    cpu_time     cpu.stat check    cpuacct check         RLIMIT_CPU + tree check   tree check
                 + RLIMIT_CPU      + RLIMIT_CPU
    cpu_rate     cpu.max           cfs quota             SIGSTOP/SIGCONT duty cycle (all non-cgroup)
    pids         pids.max          pids.max (if the      tree check (RLIMIT_NPROC is per user
                                   controller is there)  and ignored for root: unfit)
                 a fork the kernel refuses at pids.max stops the tree: failed, pids breached
    wall_time    a monotonic deadline in the supervisor, everywhere
    open_files   RLIMIT_NOFILE, everywhere (a per-process limit by nature)
    file_size    RLIMIT_FSIZE, everywhere

The README's enforcement table says the same for users; tests/readme_table.py checks it
against real records.

RLIMIT_CORE is always 0: a killed task must not fill the disk with cores.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass, field
from functools import cache, lru_cache

from policies import Limits
from runner import _cgroup_v1, _cgroup_v2
from runner._errors import EnforcementUnavailable
from runner._records import Enforcement, Mechanism

# Seconds between RLIMIT_CPU's SIGXCPU (soft) and its SIGKILL (hard).
CPU_RLIMIT_GRACE = 1


def cgroup_unavailable(mode: Enforcement | str) -> str | None:
    """Why a cgroup mode cannot be used here (``None`` when it can). Cached per process."""
    return _cgroup_unavailable(Enforcement(mode))


@cache
def _cgroup_unavailable(mode: Enforcement) -> str | None:
    if mode is Enforcement.CGROUP2:
        return _cgroup_v2.unavailable_reason()
    if mode is Enforcement.CGROUP1:
        return _cgroup_v1.unavailable_reason()
    raise ValueError(f"not a cgroup mode: {mode}")


def resolve(mode: Enforcement | str) -> Enforcement:
    """Turn ``auto`` into the strongest mode available; check that a forced mode is."""
    mode = Enforcement(mode)
    if mode is Enforcement.AUTO:
        for candidate in (Enforcement.CGROUP2, Enforcement.CGROUP1):
            if cgroup_unavailable(candidate) is None:
                return candidate
        return Enforcement.RLIMIT
    if mode in (Enforcement.CGROUP2, Enforcement.CGROUP1):
        reason = cgroup_unavailable(mode)
        if reason is not None:
            raise EnforcementUnavailable(str(mode), reason)
    return mode


@dataclass(frozen=True, slots=True)
class Plan:
    """How one execution's limits are enforced."""

    mode: Enforcement
    mechanisms: dict[str, Mechanism]
    rlimits: list[tuple[int, int, int]]
    watch: frozenset[str]  # limits the supervisor checks on every sample
    duty_cycle: bool  # cpu_rate by SIGSTOP/SIGCONT
    unenforced: tuple[str, ...] = field(default=())


def plan_for(limits: Limits, enforcement: Enforcement | str) -> Plan:
    """The plan for ``limits`` under ``enforcement`` (resolved here), the same object for the
    same question: executions of one task share it."""
    return _plan(limits, resolve(enforcement))


@lru_cache(maxsize=512)
def _plan(limits: Limits, mode: Enforcement) -> Plan:
    return plan(limits, mode)


def plan(limits: Limits, mode: Enforcement) -> Plan:
    """Decide mechanisms for ``limits`` under a resolved ``mode``."""
    cgroup = {Enforcement.CGROUP2: Mechanism.CGROUP2, Enforcement.CGROUP1: Mechanism.CGROUP1}.get(mode)
    mechanisms: dict[str, Mechanism] = {}
    rlimits: list[tuple[int, int, int]] = [(resource.RLIMIT_CORE, 0, 0)]
    watch: set[str] = set()
    unenforced: list[str] = []
    duty_cycle = False

    if limits.memory is not None:
        if cgroup is not None:
            mechanisms["memory"] = cgroup
        elif mode is Enforcement.RLIMIT:
            mechanisms["memory"] = Mechanism.RLIMIT
            rlimits.append((resource.RLIMIT_DATA, limits.memory, limits.memory))
            watch.add("memory")  # RLIMIT_DATA is per process; the tree's sum is watched
        else:
            mechanisms["memory"] = Mechanism.WATCHDOG
            watch.add("memory")
    if limits.memory_high is not None:
        if mode is Enforcement.CGROUP2:
            mechanisms["memory_high"] = Mechanism.CGROUP2
        else:  # v1's soft limit only steers reclaim under host pressure: not the same promise
            unenforced.append("memory_high")
    if limits.cpu_time is not None:
        watch.add("cpu_time")
        if mode is Enforcement.WATCHDOG:
            mechanisms["cpu_time"] = Mechanism.WATCHDOG
        else:
            soft = max(1, math.ceil(limits.cpu_time))
            rlimits.append((resource.RLIMIT_CPU, soft, soft + CPU_RLIMIT_GRACE))
            mechanisms["cpu_time"] = cgroup or Mechanism.RLIMIT
    if limits.cpu_rate is not None:
        if cgroup is not None:
            mechanisms["cpu_rate"] = cgroup
        else:
            mechanisms["cpu_rate"] = Mechanism.WATCHDOG
            duty_cycle = True
    if limits.wall_time is not None:
        mechanisms["wall_time"] = Mechanism.DEADLINE
    if limits.pids is not None:
        if cgroup is not None and _pids_controller(mode):
            mechanisms["pids"] = cgroup
        else:
            mechanisms["pids"] = Mechanism.WATCHDOG
            watch.add("pids")
    if limits.open_files is not None:
        mechanisms["open_files"] = Mechanism.RLIMIT
        rlimits.append((resource.RLIMIT_NOFILE, limits.open_files, limits.open_files))
    if limits.file_size is not None:
        mechanisms["file_size"] = Mechanism.RLIMIT
        rlimits.append((resource.RLIMIT_FSIZE, limits.file_size, limits.file_size))
    return Plan(mode, mechanisms, rlimits, frozenset(watch), duty_cycle, tuple(unenforced))


def _pids_controller(mode: Enforcement) -> bool:
    if mode is Enforcement.CGROUP1:
        return "pids" in _cgroup_v1.available_controllers()
    return True
