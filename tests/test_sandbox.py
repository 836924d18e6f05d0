"""The sandbox against a hostile task: each attack of issue 13 as a callable and as a command,
under ``sandbox=True`` (it must fail) and without it (the same attempt succeeds: the control
that lets the test fail). Attempts open for writing without writing, so the controls harm
nothing. Needs a root supervisor (a non-root one refuses to start a sandbox)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_attacks import (
    allocate,
    connect_to,
    fill,
    make_user_namespace,
    open_for_writing,
    open_store_and_socket,
    read_path,
    read_secret,
    signal_trace_and_read,
)

import governor
from governor import Outcome, Sandbox
from runner import ExecutionHandle, ExecutionSpec, ForkServer, ForkServerError
from runner._sandboxing import work_root

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs a root supervisor")

SECRET = "hunter2-not-for-tasks"
# Writing is refused by the file's owner and mode, or before that by the read-only mount.
REFUSED = {"Permission denied", "Read-only file system"}


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may traverse: only the files' own modes guard what is in it."""
    where = Path(tempfile.mkdtemp(prefix="governor-sandbox-test-", dir="/var/tmp"))  # /tmp is its own
    where.chmod(0o755)
    try:
        yield where
    finally:
        shutil.rmtree(where)


@pytest.fixture
def secret_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SECRET", SECRET)


# -- helpers -------------------------------------------------------------------------------


def both(call: Callable[..., Any], *args: Any) -> tuple[Any, Any]:
    """What ``call`` got under the sandbox, and without it."""
    confined = governor.run(call, *args, sandbox=True)
    assert confined.ok, confined
    plain = governor.run(call, *args)
    assert plain.ok, plain
    return confined.result, plain.result


def shell(script: str, sandbox: bool) -> str:
    record = governor.run(["bash", "-c", script], sandbox=sandbox)
    assert record.outcome in (Outcome.SUCCEEDED, Outcome.FAILED), record
    return (record.stdout or b"").decode().strip()


@pytest.fixture
def listener() -> Iterator[int]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


# -- (a)-(f), callables and commands ----------------------------------------------------------


def test_a_the_supervisors_environment_is_not_inherited(secret_in_environment: None) -> None:
    assert both(read_secret) == (None, SECRET)
    assert shell('printf %s "$FAKE_SECRET"', sandbox=True) == ""
    assert shell('printf %s "$FAKE_SECRET"', sandbox=False) == SECRET


def test_b_no_network_but_its_own_loopback(listener: int) -> None:
    confined, plain = both(connect_to, listener)
    assert confined == "refused: Connection refused" and plain == "connected"
    probe = f"exec 3<>/dev/tcp/127.0.0.1/{listener} && echo connected || echo refused"
    assert shell(probe, sandbox=True) == "refused"
    assert shell(probe, sandbox=False) == "connected"


def test_c_the_supervisor_cannot_be_signalled_traced_or_read() -> None:
    confined, plain = both(signal_trace_and_read, os.getpid())
    # In its own PID namespace the supervisor's pid names nothing; were it found, its uid
    # would still refuse it.
    assert confined["signal"] in ("No such process", "Operation not permitted")
    assert confined["ptrace"] in ("No such process", "Operation not permitted")
    assert confined["environ"] in ("No such file or directory", "Permission denied")
    assert plain["signal"] == "allowed" and plain["environ"] == "read"
    probe = f"kill -0 {os.getpid()} 2>/dev/null && echo allowed || echo refused"
    assert (shell(probe, sandbox=True), shell(probe, sandbox=False)) == ("refused", "allowed")


def test_c_it_sees_only_its_own_processes() -> None:
    record = governor.run(["sh", "-c", 'echo $$; ls /proc | grep -c "^[0-9]"'], sandbox=True)
    assert record.ok, record
    pid, visible = (int(line) for line in (record.stdout or b"").split())
    assert pid == 2  # PID 1 is its init
    assert visible <= 4  # init, sh, ls, grep
    assert governor.run(os.getpid, sandbox=True).result == 2


def test_d_it_cannot_leave_its_cgroup() -> None:
    candidates = ("/sys/fs/cgroup/memory/cgroup.procs", "/sys/fs/cgroup/cgroup.procs")
    roots = [path for path in candidates if os.path.exists(path)]
    assert roots, "no cgroup hierarchy to try"
    for procs in roots:
        confined, plain = both(open_for_writing, procs)
        assert confined in REFUSED and plain == "opened"


def test_e_it_cannot_write_outside_what_it_owns() -> None:
    confined, plain = both(open_for_writing, "/etc/passwd")
    assert confined in REFUSED and plain == "opened"
    probe = ": >> /etc/passwd 2>/dev/null && echo opened || echo refused"
    assert (shell(probe, sandbox=True), shell(probe, sandbox=False)) == ("refused", "opened")
    record = governor.run(["sh", "-c", 'echo mine > "$HOME/file" && cat "$HOME/file"'], sandbox=True)
    assert record.ok and record.stdout == b"mine\n"  # its own work directory is writable


def test_f_the_store_and_the_control_socket_are_out_of_reach(open_dir: Path) -> None:
    db = open_dir / "governor.db"
    sqlite3.connect(db).close()
    db.chmod(0o600)
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.bind(str(open_dir / "governor.db.sock"))
    os.chmod(open_dir / "governor.db.sock", 0o600)
    control.listen(1)
    try:
        confined, plain = both(open_store_and_socket, str(db), str(open_dir / "governor.db.sock"))
    finally:
        control.close()
    assert confined["store"] in REFUSED and confined["socket"] == "Permission denied"
    assert plain == {"store": "opened", "socket": "connected"}


# -- the record stays true --------------------------------------------------------------------


def test_usage_is_measured_inside_and_the_record_says_how_it_was_confined() -> None:
    record = governor.run(allocate, 50 << 20, sandbox=True)
    assert record.ok and record.result == 50 << 20
    assert record.usage.peak_memory_bytes >= 50 << 20
    assert record.sandbox is not None
    assert record.sandbox["network"] == "own namespace, loopback only"
    assert record.sandbox["privileges"] == "no capabilities (bounding set emptied), no_new_privs"
    assert record.sandbox["user"].startswith("uid ") and "leased for this run" in record.sandbox["user"]
    workdir = record.sandbox["workdir"].split(" ")[0]
    assert not os.path.exists(workdir)  # private, and gone after the run
    assert governor.run(read_secret).sandbox is None
    assert record.to_dict()["sandbox"] == record.sandbox


def test_a_callables_exception_still_comes_back() -> None:
    record = governor.run(int, "not a number", sandbox=True)
    assert record.outcome is Outcome.FAILED and record.error is not None
    assert record.error.type == "builtins.ValueError"


def test_settings_are_checked_where_they_are_given() -> None:
    assert Sandbox.coerce(True) == Sandbox() and Sandbox.coerce(False) is None
    assert Sandbox.coerce({"network": True}) == Sandbox(network=True)
    with pytest.raises(ValueError, match="user: a uid is between 1 and 4294967294"):
        Sandbox(user=0)
    with pytest.raises(ValueError, match="sandbox: unknown setting 'netwrok'"):
        Sandbox.coerce({"netwrok": True})
    with pytest.raises(ValueError, match=r"sandbox\.network: expected true or false"):
        Sandbox.coerce({"network": "yes"})
    record = governor.run(["true"], sandbox=Sandbox(user="no-such-user-here"))
    assert record.outcome is Outcome.CRASHED and record.error is not None
    assert "sandbox: sandbox.user: no such user 'no-such-user-here'" in record.error.message


def test_governor_run_sandbox_json_says_how(secret_in_environment: None) -> None:

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "governor",
            "run",
            "--sandbox",
            "--json",
            "--",
            "sh",
            "-c",
            'echo "[$FAKE_SECRET]"',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[]"
    record = json.loads(lines[-1])
    assert record["sandbox"]["network"] == "own namespace, loopback only"


# -- every way to ask for it ------------------------------------------------------------------


def test_executor_options_tasks_and_task_files_sandbox_their_runs(tmp_path: Path) -> None:
    from governor import GovernedExecutor, Scheduler, Task
    from governor.service._taskfile import load_task_file

    with GovernedExecutor(1, sandbox=True) as executor:
        assert executor.submit(os.getuid).result() >= 61184
        assert executor.options(sandbox=False).submit(os.getuid).result() == 0
    with GovernedExecutor(1) as executor:
        assert executor.submit(os.getuid).result() == 0
        assert executor.options(sandbox=True).submit(os.getuid).result() >= 61184
    scheduler = Scheduler(1)
    task = scheduler.add_task(Task("confined", ["id", "-u"], sandbox=True))
    with scheduler:
        scheduler.fire(task.id or 0)
        assert scheduler.wait(lambda: bool(task.executions), timeout=60)
    (record,) = task.executions
    assert record.ok and int(record.stdout or b"0") >= 61184 and record.sandbox is not None
    path = tmp_path / "tasks.toml"
    path.write_text('[[task]]\nname = "a"\ncommand = ["true"]\nsandbox = true\n'
                    '[[task]]\nname = "b"\ncommand = ["true"]\n[task.sandbox]\nnetwork = true\n')  # fmt: skip
    a, b = (definition.build() for definition in load_task_file(path))
    assert a.spec.sandbox == Sandbox() and b.spec.sandbox == Sandbox(network=True)
    path.write_text('[[task]]\nname = "c"\ncommand = ["true"]\n[task.sandbox]\nnetwrok = true\n')
    with pytest.raises(ValueError, match="task c: sandbox: unknown setting 'netwrok'"):
        load_task_file(path)


def test_the_store_is_owner_only_so_a_sandboxed_task_cannot_touch_it(open_dir: Path) -> None:
    from governor.service._store import Store

    with Store(open_dir / "state" / "governor.db") as store:
        store.flush()
    assert (open_dir / "state" / "governor.db").stat().st_mode & 0o777 == 0o600
    (open_dir / "state").chmod(0o755)
    confined, plain = both(open_for_writing, str(open_dir / "state" / "governor.db"))
    assert confined in REFUSED and plain == "opened"


def test_g_system_calls_a_job_has_no_business_making_are_refused() -> None:
    confined = governor.run(make_user_namespace, sandbox=True)
    unfiltered = governor.run(make_user_namespace, sandbox=Sandbox(seccomp=False))
    assert (confined.result, unfiltered.result) == ("Operation not permitted", "created")
    assert confined.sandbox is not None and confined.sandbox["seccomp"].startswith("refuses ")
    assert unfiltered.sandbox is not None and unfiltered.sandbox["seccomp"] == "off (seccomp=False)"
    probe = "unshare --user true 2>/dev/null && echo created || echo refused"
    assert shell(probe, sandbox=True) == "refused"


def test_g_an_escape_by_setsid_and_double_fork_dies_with_the_run() -> None:
    script = "echo $GOVERNOR_EXECUTION_ID; setsid sh -c 'sleep 300 &' & wait"
    record = governor.run(["sh", "-c", script], sandbox=True)
    assert record.ok, record
    cookie = b"GOVERNOR_EXECUTION_ID=" + (record.stdout or b"").strip()
    alive = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and cookie in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                alive.append(entry)
        except OSError:
            continue
    assert alive == []


def test_a_sandboxed_command_reads_its_event_payload() -> None:
    from governor import EventTrigger, Scheduler, Task

    event = EventTrigger()
    scheduler = Scheduler(1)
    script = 'cat "$GOVERNOR_EVENT_PAYLOAD_FILE"; printf " %s" "$(id -u)"'
    task = scheduler.add_task(Task("reader", ["sh", "-c", script], triggers=[event], sandbox=True))
    with scheduler:
        event.fire({"n": 1})
        assert scheduler.wait(lambda: bool(task.executions), timeout=60)
    (record,) = task.executions
    assert record.ok, record
    payload, uid = (record.stdout or b"").decode().rsplit(" ", 1)
    assert json.loads(payload) == {"n": 1} and int(uid) >= 61184


def test_h_its_tmp_is_its_own_and_bounded_and_the_rest_is_read_only() -> None:
    small = Sandbox(tmp_size="8MiB")
    confined = governor.run(
        fill, "/tmp/governor-sandbox-fill", 16, sandbox=small, limits=governor.Limits(memory="256MiB")
    )
    plain = governor.run(fill, "/tmp/governor-sandbox-fill", 16)
    assert confined.ok and plain.ok, (confined, plain)
    assert confined.result.startswith("stopped at ") and confined.result.endswith("No space left on device")
    assert int(confined.result.split()[2]) <= 8
    assert plain.result == "wrote 16 MiB"
    # World-writable places of the host are read-only to it (its own uid could write them).
    assert both(open_for_writing, "/var/tmp/governor-sandbox-probe")[0] == "Read-only file system"
    os.unlink("/var/tmp/governor-sandbox-probe")  # the control made it
    probe = ": > /var/tmp/governor-sandbox-sh 2>/dev/null && echo opened || echo refused"
    assert (shell(probe, sandbox=True), shell(probe, sandbox=False)) == ("refused", "opened")
    os.unlink("/var/tmp/governor-sandbox-sh")
    assert (
        confined.sandbox is not None
        and confined.sandbox["tmp"] == "private /tmp and /dev/shm of 8.0 MiB each"
    )


# -- what it may write, and what it may not see -----------------------------------------------


def test_hidden_paths_are_covered_and_writable_ones_stay_writable(open_dir: Path) -> None:
    secret, drawer = open_dir / "secret", open_dir / "drawer"
    secret.write_text(SECRET)
    drawer.mkdir()
    (drawer / "inside").write_text(SECRET)
    for path in (secret, drawer, drawer / "inside"):
        path.chmod(0o755)  # readable by anyone: only the sandbox's cover stands in the way
    hiding = Sandbox(hide=(str(secret), str(drawer)))
    assert governor.run(read_path, str(secret), sandbox=hiding).result == ""  # an empty file
    assert governor.run(read_path, str(drawer), sandbox=hiding).result == ""  # an empty directory
    assert (
        governor.run(read_path, str(drawer / "inside"), sandbox=hiding).result == "No such file or directory"
    )
    assert (governor.run(read_path, str(secret), sandbox=True).result, read_path(str(secret))) == (
        SECRET,
        SECRET,
    )

    shared = open_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # a leased uid writes where the modes let it: the mount is what we open
    target = str(shared / "made")
    assert governor.run(open_for_writing, target, sandbox=True).result == "Read-only file system"
    opened = governor.run(open_for_writing, target, sandbox=Sandbox(writable=(str(shared),)))
    assert opened.result == "opened" and os.path.exists(target)
    assert opened.sandbox is not None and str(shared) in opened.sandbox["filesystem"]
    with pytest.raises(ValueError, match="writable: '/tmp/x' is /, or under /tmp"):
        Sandbox(writable=("/tmp/x",))
    record = governor.run(["true"], sandbox=Sandbox(writable=(str(open_dir / "absent"),)))
    assert record.outcome is Outcome.CRASHED and record.error is not None
    assert "sandbox.writable: no such file or directory" in record.error.message


def test_the_service_hides_its_files_and_refuses_a_socket_mode_that_lets_tasks_in(open_dir: Path) -> None:
    from governor.service._service import Service
    from governor.service._store import Store
    from governor.service._taskfile import load_task_file

    tasks = open_dir / "tasks.toml"
    tasks.write_text('[[task]]\nname = "untrusted"\ncommand = ["true"]\nsandbox = true\n'
                     '[[task]]\nname = "trusted"\ncommand = ["true"]\n')  # fmt: skip
    db = open_dir / "governor.db"
    with Store(db) as store:
        service = Service(tasks, store, max_running=1, grace=1, db=db)
        service.apply(load_task_file(tasks))
        untrusted, trusted = (service._loaded[name].task.spec.sandbox for name in ("untrusted", "trusted"))
        assert trusted is None and isinstance(untrusted, Sandbox)
        for private in (db, Path(f"{db}.lock"), Path(f"{db}.sock"), tasks):
            assert str(private) in untrusted.hide
        open_to_all = Service(tasks, store, max_running=1, grace=1, db=db, socket_mode=0o666)
        with pytest.raises(
            ValueError, match="'untrusted' is sandboxed, and --socket-mode 666 lets every user"
        ):
            open_to_all.apply(load_task_file(tasks))
        assert open_to_all._loaded == {}  # refused before anything changed
    done = subprocess.run(
        [sys.executable, "-m", "governor", "serve", str(tasks), "--db", str(db), "--socket-mode", "666"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "--socket-mode 666 lets every user" in done.stderr


# -- how it ended means what it means for any run ---------------------------------------------


def test_its_exit_status_signal_and_limits_are_reported_as_for_any_run() -> None:
    exited = governor.run(["sh", "-c", "exit 3"], sandbox=True)
    assert (exited.outcome, exited.exit_code, exited.signal) == (Outcome.FAILED, 3, None)
    signalled = governor.run(["sh", "-c", "kill -SEGV $$"], sandbox=True)
    assert signalled.outcome is Outcome.CRASHED and signalled.signal == signal.SIGSEGV
    timed_out = governor.run(["sleep", "30"], sandbox=True, limits=governor.Limits(wall_time=0.2))
    assert timed_out.outcome is Outcome.TIMED_OUT and timed_out.breached_limit == "wall_time"
    hog = governor.run(allocate, 400 << 20, sandbox=True, limits=governor.Limits(memory="100MiB"))
    assert hog.outcome is Outcome.MEMORY_EXCEEDED, hog
    assert governor.run(os.getpid, sandbox=True).result == 2  # the task, under its init


def test_a_command_is_told_when_the_directory_it_is_found_in_is_covered(
    open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command's record carried no sandbox notes: hiding the directory a command lives in
    failed it with 127 and no word why."""
    tools = open_dir / "bin"
    tools.mkdir()
    (tools / "governor-test-tool").write_text("#!/bin/sh\necho found\n")
    (tools / "governor-test-tool").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    assert governor.run(["governor-test-tool"], sandbox=True).stdout == b"found\n"
    hidden = governor.run(["governor-test-tool"], sandbox=Sandbox(hide=(str(tools),)))
    assert hidden.outcome is Outcome.FAILED and hidden.exit_code in (126, 127), hidden  # execvp's own
    assert any(note.startswith(f"{tools} is on the import path or PATH but the sandbox covers it")
               for note in hidden.notes), hidden.notes  # fmt: skip


def test_a_start_that_fails_gives_back_the_sandboxs_uid_and_work_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The start fails after the sandbox was prepared (here: the fork server cannot start, as
    one asked to preload a module that does not exist). The uid lease and the work directory
    taken for it stayed held for the life of the supervisor."""
    made: list[str] = []  # this start's work directory: other workers make theirs beside it

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    server = ForkServer(preload=["governor_test_no_such_module"])
    assert not _leases_held()
    try:
        with pytest.raises(ForkServerError, match="failed to start"):
            ExecutionHandle(ExecutionSpec(target=["true"], sandbox=True), fork_server=server)
    finally:
        server.close()
    assert [path for path in made if os.path.dirname(path) == work_root()], made  # one was made
    assert not [path for path in made if os.path.exists(path)]  # and none left behind
    assert not _leases_held()


def _leases_held() -> list[str]:
    """The uid leases this process holds open (a lease is a locked file in the uids directory)."""
    uids = os.path.join(os.path.dirname(work_root()), "uids")
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor, closed by now
            if os.readlink(f"/proc/self/fd/{fd}").startswith(uids + "/"):
                held.append(fd)
    return held
