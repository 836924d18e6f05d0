"""Rootless cgroup v2: a governor run by an unprivileged user in a cgroup subtree delegated
to it (as systemd's ``Delegate=yes`` gives every ``user@.service``) enforces its limits with
cgroup v2. The test delegates a subtree to ``nobody`` by hand, as systemd would (the
directory and its ``cgroup.procs``, ``cgroup.subtree_control`` and ``cgroup.threads`` owned by
the user), starts a real supervisor as ``nobody`` inside it, and reads its records.
Needs a root test run on a cgroup v2 host (the cgroup v2 lane runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
from pathlib import Path

import pytest
from guards import guard
from readme_table import enforcement_column
from test_sandbox_unprivileged import HERE, NOBODY, ROOT, nobody_interpreter

from runner import _cgroup_v2
from runner._enforcement import cgroup_unavailable
from runner._records import Enforcement

SCRIPT = r"""
import json
import governor
from governor import Limits
import task_helpers as th
hog = governor.run(th.memory_hog, 1 << 30, limits=Limits(memory="64MiB"))
fine = governor.run(th.add, 1, 2, limits=Limits(memory="64MiB", cpu_rate=0.5))
every = governor.run(th.add, 1, 2, limits=Limits(
    memory="256MiB", memory_high="128MiB", cpu_time=30, cpu_rate=1.5, wall_time=120,
    pids=64, open_files=256, file_size="1GiB",
))
print(json.dumps({
    "every": [str(every.outcome), every.enforcement, list(every.unenforced)],
    "hog": [str(hog.outcome), hog.enforcement, hog.usage.peak_memory_bytes],
    "fine": [str(fine.outcome), fine.enforcement, fine.result],
    "cgroup": open("/proc/self/cgroup").read().strip(),
}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to delegate a subtree to another user")
def test_an_unprivileged_governor_uses_its_delegated_subtree(tmp_path: Path) -> None:
    if cgroup_unavailable(Enforcement.CGROUP2) is not None:
        pytest.skip(f"host lacks cgroup2: {cgroup_unavailable(Enforcement.CGROUP2)}")
    mount = _cgroup_v2.mount_point()
    assert mount is not None
    delegated = Path(mount) / f"delegated-{os.getpid()}"  # the root's controllers reach it
    delegated.mkdir()
    try:
        for path in (
            delegated,
            *(delegated / name for name in ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")),
        ):
            os.chown(path, NOBODY, NOBODY)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "PYTHONPATH": os.pathsep.join((str(ROOT), str(HERE), sysconfig.get_paths()["purelib"])),
        }
        interpreter = nobody_interpreter(env)
        if interpreter is None:
            pytest.skip(f"no interpreter that uid {NOBODY} may run imports this checkout ({ROOT})")
        # Into the delegated subtree as root, then become nobody (as systemd starts user@.service).
        become = f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups"
        enter = f'echo $$ > {delegated}/cgroup.procs && exec {become} "$@"'
        done = subprocess.run(
            ["sh", "-c", enter, "sh", interpreter, "-c", SCRIPT],
            env=env, cwd="/", capture_output=True, text=True, timeout=guard(120),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        found = json.loads(done.stdout.splitlines()[-1])
    finally:
        for directory in sorted((path for path in delegated.rglob("*") if path.is_dir()), reverse=True):
            directory.rmdir()
        delegated.rmdir()
    outcome, enforcement, peak = found["hog"]
    assert outcome == "memory_exceeded" and enforcement["memory"] == "cgroup2"
    assert peak <= 64 << 20
    assert found["fine"][0] == "succeeded" and found["fine"][1] == {
        "memory": "cgroup2",
        "cpu_rate": "cgroup2",
    }
    # Every limit as the README's "cgroup v2, delegated" column says.
    outcome, enforcement, unenforced = found["every"]
    expected = enforcement_column("cgroup v2, delegated")
    assert outcome == "succeeded"
    assert enforcement == {limit: how for limit, how in expected.items() if how is not None}
    assert set(unenforced) == {limit for limit, how in expected.items() if how is None}
    # It moved itself into a leaf of its own, so its subtree could hold its executions.
    assert f"/delegated-{os.getpid()}/{_cgroup_v2.SUPERVISOR_LEAF}" in found["cgroup"]
