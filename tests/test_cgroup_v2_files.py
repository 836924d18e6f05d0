"""The cgroup v2 backend's file protocol.

This host binds memory, cpu and pids to cgroup v1, so a real v2 cgroup cannot be made here;
these tests run the backend against a directory laid out like a v2 cgroup (a stand-in for
the kernel, and only for that). On a v2 host the real-process tests in
test_limits_enforced.py run the backend for real (their ``cgroup2`` parameter).
"""

from __future__ import annotations

from pathlib import Path

from policies import Limits
from runner._cgroup_v2 import CgroupV2, mount_point, own_path, unavailable_reason
from runner._confinement import CounterFile


def _fake_parent(tmp_path: Path) -> Path:
    parent = tmp_path / "governor"
    parent.mkdir()
    return parent


def test_limits_are_written_to_the_v2_files(tmp_path: Path) -> None:
    parent = _fake_parent(tmp_path)

    # The kernel creates the interface files with mkdir; the stand-in creates them first.
    class Prepared(CgroupV2):
        def _configure(self, limits: Limits) -> None:
            for name in ("memory.swap.max", "memory.oom.group"):
                (Path(self.path) / name).write_text("max\n")
            super()._configure(limits)

    group = Prepared("exec-1", Limits(memory="256MiB", cpu_rate=0.5, pids=64), parent=str(parent))
    directory = parent / "exec-1"
    assert (directory / "memory.max").read_text() == str(256 << 20)
    assert (directory / "memory.swap.max").read_text() == "0"
    assert (directory / "memory.oom.group").read_text() == "1"
    assert (directory / "cpu.max").read_text() == "50000 100000"
    assert (directory / "pids.max").read_text() == "64"
    assert group.procs_files() == [str(directory / "cgroup.procs")]


def _fake_group(tmp_path: Path, name: str, files: dict[str, str]) -> tuple[CgroupV2, Path]:
    """A group under the stand-in parent, and its directory, with ``files`` as the kernel would
    show them."""
    parent = _fake_parent(tmp_path)
    group = CgroupV2(name, Limits(), parent=str(parent))
    for file, text in files.items():
        (parent / name / file).write_text(text)
    return group, parent / name


def test_readings_come_from_the_v2_files(tmp_path: Path) -> None:
    files = {
        "memory.current": "1048576\n",
        "memory.peak": "5242880\n",
        "cpu.stat": "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\n",
        "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        "cgroup.procs": "",
    }
    group, directory = _fake_group(tmp_path, "exec-2", files)
    reading = group.read()
    assert reading is not None
    assert (reading.memory_bytes, reading.cpu_seconds) == (1 << 20, 3.0)
    assert group.final_cpu() == (2.0, 1.0)
    assert group.peak_memory() == 5 << 20
    assert group.oom_kills() == 1
    assert group.kill_all() is False  # no cgroup.kill file: the caller falls back to a loop
    (directory / "cgroup.kill").write_text("")
    assert group.kill_all() is True and (directory / "cgroup.kill").read_text() == "1"


def test_a_child_joining_between_two_reads_is_not_counted_without_its_memory(tmp_path: Path) -> None:
    """The child moves itself into its cgroup after the fork. A reading that took memory.current
    before that move and cgroup.procs after it counted a process with 0 bytes charged: a
    timeline point the cgroup v2 lane saw on its slow VM. The stand-in kernel here moves the
    child in just after the first file is read, whichever that is."""
    files = {"memory.current": "0\n", "cpu.stat": "usage_usec 0\n", "cgroup.procs": ""}
    group, directory = _fake_group(tmp_path, "exec-3", files)
    moved: list[str] = []

    class MovesTheChildInOnceRead(CounterFile):
        __slots__ = ()

        def read(self) -> bytes:
            data = super().read()
            if not moved:
                moved.append(self.path)
                (directory / "cgroup.procs").write_text("4242\n")
                (directory / "memory.current").write_text("65536\n")
            return data

    group._memory, group._cpu, group._procs = (
        MovesTheChildInOnceRead(counter.path) for counter in (group._memory, group._cpu, group._procs)
    )
    reading = group.read()
    assert reading is not None and moved
    assert reading.processes == 0 or reading.memory_bytes > 0, (moved, reading)


def test_unavailable_reason_names_missing_controllers(tmp_path: Path) -> None:
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text("hugetlb\n")
    reason = unavailable_reason(mount=str(root), own="/")
    assert reason is not None and "memory, cpu, pids" in reason


def test_mount_and_own_path_parsing(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "cgroup /sys/fs/cgroup/memory cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    )
    assert mount_point(str(mounts)) == "/sys/fs/cgroup/unified"
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("4:memory:/a\n0::/user.slice/session-1.scope\n")
    assert own_path(str(cgroup)) == "/user.slice/session-1.scope"
