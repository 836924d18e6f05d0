"""The sandbox under a supervisor that is not root: the same namespaces through a user
namespace, the task keeping the supervisor's uid (so its home and runtime directories are
hidden from it), each attack against a control that succeeds without the sandbox.

The supervisor here is a real one, run as ``nobody`` in a subprocess: an interpreter that
``nobody`` may execute, with this checkout and its installed packages on ``PYTHONPATH``.
Where no such interpreter exists (this machine's own Python lives under a 0700 ``/root``;
the system's ``/usr/bin/python3.X`` of the same version serves), the tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from guards import guard

NOBODY = 65534
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECRET = "hunter2-in-the-home"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to become an unprivileged user")

# Run as nobody: every attack under the sandbox and without it, as JSON on stdout.
SCRIPT = r"""
import json, os, sys
import governor
from governor import Sandbox
from sandbox_attacks import (allocate, connect_to, make_user_namespace, open_for_writing,
                             read_secret, signal_trace_and_read)

port, outside, home_secret = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as error:
        return error.strerror

def who():
    with open("/proc/self/status") as status:
        caps = [line.split()[1] for line in status if line.startswith("CapEff")]
    return {"uid": os.getuid(), "pid": os.getpid(), "caps": caps[0], "home": os.environ["HOME"]}

found = {}
for name, sandbox in (("confined", True), ("plain", False)):
    def run(*call):
        record = governor.run(*call, sandbox=sandbox)
        assert record.ok, record
        return record.result
    found[name] = {
        "secret": run(read_secret),
        "connect": run(connect_to, port),
        "supervisor": run(signal_trace_and_read, os.getpid()),
        "outside": run(open_for_writing, outside),
        "home": run(read, home_secret),
        "userns": run(make_user_namespace),
        "who": run(who),
    }
record = governor.run(allocate, 50 << 20, sandbox=True)
found["allocate"] = {"ok": record.ok, "peak": record.usage.peak_memory_bytes, "sandbox": record.sandbox}
command = governor.run(["sh", "-c", 'id -u; echo $$; cat "$0" 2>&1; touch "$1" 2>/dev/null || echo refused',
                        home_secret, outside], sandbox=True)
found["command"] = {"ok": command.ok, "stdout": command.stdout.decode()}
asked = governor.run(["true"], sandbox=Sandbox(user="nobody"))
found["user"] = {"outcome": str(asked.outcome), "error": asked.error.message if asked.error else None}
print(json.dumps(found))
"""


def nobody_interpreter(env: dict[str, str]) -> str | None:
    """An interpreter ``nobody`` can run that imports this checkout and its packages."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if not os.path.exists(candidate):
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import governor, psutil, pyseccomp"],
                user=NOBODY, group=NOBODY, extra_groups=[], env=env, cwd="/",
                capture_output=True, timeout=guard(60),
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return candidate
    return None


@pytest.fixture(scope="module")
def unprivileged() -> Iterator[dict[str, Any]]:
    """What a supervisor running as nobody found, confined and plain."""
    base = Path(tempfile.mkdtemp(prefix="governor-unprivileged-", dir="/var/tmp"))
    try:
        base.chmod(0o755)
        home, runtime = base / "home", base / "runtime"
        for directory in (home, runtime):
            directory.mkdir(mode=0o700)
            os.chown(directory, NOBODY, NOBODY)
        secret = home / "secret"
        secret.write_text(SECRET)
        os.chown(secret, NOBODY, NOBODY)
        outside = base / "outside"
        outside.mkdir()
        os.chown(outside, NOBODY, NOBODY)
        packages = sysconfig.get_paths()["purelib"]
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(runtime),
            "PYTHONPATH": os.pathsep.join((str(ROOT), str(HERE), packages)),
            "FAKE_SECRET": "hunter2-not-for-tasks",
        }
        interpreter = nobody_interpreter(env)
        if interpreter is None:
            pytest.skip(
                f"no interpreter that uid {NOBODY} may run imports this checkout ({ROOT}) and its "
                f"packages ({packages}): a Python under a private directory, or a checkout in one"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            port = str(listener.getsockname()[1])
            done = subprocess.run(
                [interpreter, "-c", SCRIPT, port, str(outside / "file"), str(secret)],
                user=NOBODY, group=NOBODY, extra_groups=[], env=env, cwd="/",
                capture_output=True, text=True, timeout=guard(120),
            )  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield {**json.loads(done.stdout.splitlines()[-1]), "runtime": str(runtime)}
    finally:
        shutil.rmtree(base)


def test_it_runs_in_namespaces_of_its_own_with_no_capabilities(unprivileged: dict[str, Any]) -> None:
    confined, plain = unprivileged["confined"]["who"], unprivileged["plain"]["who"]
    assert confined["uid"] == plain["uid"] == NOBODY  # a user namespace maps the supervisor's uid
    assert confined["pid"] == 2 and plain["pid"] != 2  # its own PID namespace
    assert confined["caps"] == "0000000000000000"
    runtime = unprivileged["runtime"]
    assert confined["home"].startswith(runtime + "/governor/work/sandbox-")  # carried back in


def test_the_attacks_fail_under_it_and_succeed_without(unprivileged: dict[str, Any]) -> None:
    confined, plain = unprivileged["confined"], unprivileged["plain"]
    assert (confined["secret"], plain["secret"]) == (None, "hunter2-not-for-tasks")  # (a)
    assert (confined["connect"], plain["connect"]) == ("refused: Connection refused", "connected")  # (b)
    assert confined["supervisor"]["signal"] == "No such process"  # (c): the same uid, out of sight
    assert confined["supervisor"]["ptrace"] in ("No such process", "Operation not permitted")
    assert plain["supervisor"]["signal"] == "allowed" and plain["supervisor"]["environ"] == "read"
    assert (confined["outside"], plain["outside"]) == ("Read-only file system", "opened")  # (e)
    assert (confined["home"], plain["home"]) == ("No such file or directory", SECRET)  # its home is hidden
    assert (confined["userns"], plain["userns"]) == ("Operation not permitted", "created")  # seccomp


def test_a_command_is_confined_the_same_way(unprivileged: dict[str, Any]) -> None:
    command = unprivileged["command"]
    assert command["ok"], command
    uid, pid, home, written = command["stdout"].splitlines()
    assert (int(uid), int(pid)) == (NOBODY, 2)
    assert "No such file or directory" in home and written == "refused"


def test_the_record_is_true_and_says_how(unprivileged: dict[str, Any]) -> None:
    allocated = unprivileged["allocate"]
    assert allocated["ok"] and allocated["peak"] >= 50 << 20
    sandbox = allocated["sandbox"]
    assert "user namespace of its own" in sandbox["user"] and "supplementary groups stay" in sandbox["user"]
    assert "hidden: " in sandbox["filesystem"] and unprivileged["runtime"] in sandbox["filesystem"]


def test_another_user_needs_a_root_supervisor(unprivileged: dict[str, Any]) -> None:
    asked = unprivileged["user"]
    assert asked["outcome"] == "crashed"
    assert "running as another user ('nobody') needs a root supervisor" in asked["error"]
