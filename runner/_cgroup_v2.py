"""cgroup v2 backend: one cgroup per execution under ``<own cgroup>/governor/``.

Uses memory.max with memory.swap.max=0 and memory.oom.group=1 (an OOM kill takes the whole
tree), cpu.max, pids.max; reads memory.current, memory.peak (kernel 5.19+), cpu.stat,
memory.events; kills with cgroup.kill (kernel 5.14+) where present.

The v2 "no internal processes" rule means controllers can be enabled for ``governor/`` only
if our own cgroup holds no processes. A supervisor alone in its cgroup (a systemd service, a
user's delegated ``Delegate=yes`` subtree, a ``systemd-run --scope``) first moves itself into
a leaf of its own, ``governor-supervisor-<pid>``, and puts its executions beside it under
``governor/``; one that shares its cgroup with other processes (a login shell's) cannot, and
this backend reports itself unavailable, saying so.
"""

from __future__ import annotations

import contextlib
import errno
import os

from policies import Limits
from runner._confinement import (
    CounterFile,
    Reading,
    live_pids,
    read_file,
    release_at_exit,
    remove_cgroup,
    split_cpu,
)
from runner._psi import stall_totals

PARENT = "governor"
NEEDED = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000


def mount_point(mounts_file: str = "/proc/mounts") -> str | None:
    """Where the cgroup2 hierarchy is mounted, or ``None``."""
    with open(mounts_file) as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return parts[1]
    return None


SUPERVISOR_LEAF = "governor-supervisor-"


def own_path(cgroup_file: str = "/proc/self/cgroup") -> str:
    """This process's home in the v2 hierarchy (the ``0::`` line): where it was before it
    moved itself into its own leaf, if it did."""
    with open(cgroup_file) as lines:
        for line in lines:
            if line.startswith("0::"):
                path = line[3:].rstrip("\n")
                head, _, leaf = path.rpartition("/")
                return (head or "/") if leaf.startswith(SUPERVISOR_LEAF) else path
    return "/"


def _move_into_own_leaf(base: str) -> None:
    """Leave ``base`` for a leaf of our own below it, so that ``base`` holds no process and
    may enable controllers for its children. Leaves of supervisors that have exited go."""
    for entry in os.listdir(base):
        if entry.startswith(SUPERVISOR_LEAF):
            with contextlib.suppress(OSError):  # a live supervisor's (busy), or another user's
                os.rmdir(os.path.join(base, entry))
    leaf = os.path.join(base, f"{SUPERVISOR_LEAF}{os.getpid()}")
    os.makedirs(leaf, exist_ok=True)
    with open(os.path.join(leaf, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))


def parent_dir(mount: str, own: str) -> str:
    """``<mount>/<own path>/governor``."""
    return os.path.join(mount + own.rstrip("/"), PARENT)


def executions_cgroup() -> str | None:
    """The v2 cgroup that holds this supervisor's executions' cgroups (``governor/`` beside it),
    once v2 enforcement has made it; ``None`` before, or where v2 is not what enforces."""
    mount = mount_point()
    if mount is None:
        return None
    parent = parent_dir(mount, own_path())
    return parent if os.path.isdir(parent) else None


def unavailable_reason(mount: str | None = None, own: str | None = None) -> str | None:
    """Why v2 enforcement cannot be used here, or ``None`` when it can."""
    mount = mount if mount is not None else mount_point()
    if mount is None:
        return "no cgroup2 hierarchy is mounted"
    own = own if own is not None else own_path()
    base = mount + own.rstrip("/")
    try:
        with open(os.path.join(base, "cgroup.controllers")) as handle:
            offered = set(handle.read().split())
    except OSError as error:
        return f"cannot read {base}/cgroup.controllers: {error.strerror}"
    missing = [name for name in NEEDED if name not in offered]
    if missing:
        return f"the v2 controllers {', '.join(missing)} are not available to {base} (bound to v1?)"
    parent = parent_dir(mount, own)
    try:
        try:
            _enable(base)
        except OSError as error:
            if error.errno != errno.EBUSY or own == "/":
                raise
            # Processes in our cgroup: if we are the only one, we move into a leaf of our own.
            others = [pid for pid in _pids(base) if pid != os.getpid()]
            if others:
                return (
                    f"{base} holds other processes ({len(others)}, e.g. pid {others[0]}) beside this "
                    "supervisor, and cgroup v2 lets no cgroup with processes of its own have "
                    "children; run it in a cgroup of its own (systemd-run --user --scope -p "
                    "Delegate=yes governor ...)"
                )
            _move_into_own_leaf(base)
            _enable(base)
        os.makedirs(parent, exist_ok=True)
        release_at_exit(parent)
        with open(os.path.join(parent, "cgroup.subtree_control"), "w") as control:
            control.write(" ".join(f"+{name}" for name in NEEDED))
    except OSError as error:
        return f"cannot delegate {', '.join(NEEDED)} to {parent}: {error.strerror}"
    return None


def _enable(base: str) -> None:
    with open(os.path.join(base, "cgroup.subtree_control"), "w") as control:
        control.write(" ".join(f"+{name}" for name in NEEDED))


def _pids(cgroup: str) -> list[int]:
    with open(os.path.join(cgroup, "cgroup.procs")) as procs:
        return [int(line) for line in procs if line.strip()]


class CgroupV2:
    """One execution's v2 cgroup."""

    def __init__(self, name: str, limits: Limits, parent: str | None = None) -> None:
        if parent is None:
            mount = mount_point()
            if mount is None:
                raise OSError(errno.ENOENT, "no cgroup2 hierarchy is mounted")
            parent = parent_dir(mount, own_path())
            if not os.path.isdir(parent):  # another supervisor sharing it removed it as it exited
                reason = unavailable_reason(mount)
                if reason is not None:
                    raise OSError(errno.ENOENT, reason)
        self.path = os.path.join(parent, name)
        self._memory = CounterFile(self._file("memory.current"))
        self._cpu = CounterFile(self._file("cpu.stat"))
        self._procs = CounterFile(self._file("cgroup.procs"))
        self._pids_events = CounterFile(self._file("pids.events"))  # read each sample under a pids limit
        os.makedirs(self.path)
        try:
            self._configure(limits)
        except BaseException:
            self.remove()
            raise

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _write(self, name: str, value: str) -> None:
        with open(self._file(name), "w") as handle:
            handle.write(value)

    def _configure(self, limits: Limits) -> None:
        if limits.memory is not None:
            self._write("memory.max", str(limits.memory))
            if os.path.exists(self._file("memory.swap.max")):
                self._write("memory.swap.max", "0")
            if os.path.exists(self._file("memory.oom.group")):
                self._write("memory.oom.group", "1")
        if limits.memory_high is not None:
            self._write("memory.high", str(limits.memory_high))
        if limits.cpu_rate is not None:
            quota = max(1000, int(limits.cpu_rate * CPU_PERIOD_US))
            self._write("cpu.max", f"{quota} {CPU_PERIOD_US}")
        if limits.pids is not None:
            self._write("pids.max", str(limits.pids))

    @property
    def paths(self) -> list[str]:
        return [self.path]

    def procs_files(self) -> list[str]:
        return [self._file("cgroup.procs")]

    def attach(self, pid: int, reaper: int | None = None) -> None:
        return None  # the child joins by itself, before it runs anything

    def _keyed(self, name: str) -> dict[str, int]:
        return _keyed(read_file(self._file(name)))

    def read(self, count_processes: bool = True) -> Reading | None:
        try:
            # The members first: the child moves itself in after the fork, and a reading that
            # counts it must have read its memory after it moved (cgroup v1 reads the same way).
            processes = self._procs.read().count(b"\n") if count_processes else 0
            memory = self._memory.number()
            cpu = _keyed(self._cpu.read())
        except (OSError, ValueError):
            return None
        return Reading(memory, _total_cpu(cpu), processes)

    def final_cpu(self) -> tuple[float, float] | None:
        try:
            cpu = _keyed(self._cpu.read())
        except (OSError, ValueError):
            return None
        return split_cpu(_total_cpu(cpu), cpu.get("user_usec", 0), cpu.get("system_usec", 0))

    def members(self, thorough: bool = False) -> list[int]:
        try:
            with open(self._file("cgroup.procs")) as procs:
                return live_pids([int(line) for line in procs if line.strip()])
        except OSError:
            return []

    def peak_memory(self) -> int | None:
        try:
            with open(self._file("memory.peak")) as handle:
                return int(handle.read())
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        try:
            return self._keyed("memory.events").get("oom_kill", 0)
        except (OSError, ValueError):
            return 0

    def refused_forks(self) -> int:
        try:
            return _keyed(self._pids_events.read()).get("max", 0)
        except (OSError, ValueError):
            return 0

    def throttled_seconds(self) -> float:
        try:
            return self._keyed("cpu.stat").get("throttled_usec", 0) / 1e6
        except (OSError, ValueError):
            return 0.0

    def memory_high_events(self) -> int:
        try:
            return self._keyed("memory.events").get("high", 0)
        except (OSError, ValueError):
            return 0

    def stall_seconds(self) -> dict[str, float]:
        """How long some of its tasks stalled on CPU, memory and I/O over its life (PSI's
        ``some`` totals); what the kernel does not report (PSI off) is left out."""
        return stall_totals(self.path)

    def kill_all(self) -> bool:
        if not os.path.exists(self._file("cgroup.kill")):
            return False
        self._write("cgroup.kill", "1")
        return True

    def remove(self) -> bool:
        for counter in (self._memory, self._cpu, self._procs, self._pids_events):
            counter.close()
        return remove_cgroup(self.path)


def _keyed(text: bytes) -> dict[str, int]:
    """A flat-keyed cgroup file (``key value`` per line) as a dict."""
    return {
        key.decode(): int(value)
        for key, value in (line.split() for line in text.splitlines() if line.strip())
    }


def _total_cpu(stat: dict[str, int]) -> float:
    """CPU seconds from cpu.stat: ``usage_usec``, exact (user + system where it lacks it)."""
    return stat.get("usage_usec", stat.get("user_usec", 0) + stat.get("system_usec", 0)) / 1e6
