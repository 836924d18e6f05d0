"""The child is isolated: own session, dies with its parent, clean fds, chosen env and cwd."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import psutil
import task_helpers as th
from guards import guard

import governor
from governor import Outcome
from runner import ForkServer


def test_child_has_its_own_session_and_parent_death_signal() -> None:
    facts = governor.run(th.describe_self).unwrap()
    assert facts["sid"] == facts["pid"]
    assert facts["pdeathsig"] == signal.SIGKILL


def test_child_inherits_no_descriptors(tmp_path: Path) -> None:
    leaked = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY)
    os.set_inheritable(leaked, True)
    try:
        facts = governor.run(th.describe_self).unwrap()
    finally:
        os.close(leaked)
    # stdin, stdout, stderr, the result pipe; plus the one listdir itself opens.
    assert facts["fds"][:4] == [0, 1, 2, 3]
    assert len(facts["fds"]) <= 5


def test_environment_and_working_directory_are_the_callers_choice(tmp_path: Path) -> None:
    facts = governor.run(th.describe_self, env={"ONLY": "this"}, cwd=str(tmp_path)).unwrap()
    assert facts["cwd"] == str(tmp_path)
    assert facts["env"]["ONLY"] == "this"
    assert set(facts["env"]) == {"ONLY", "GOVERNOR_EXECUTION_ID"}


def test_command_gets_env_and_cwd(tmp_path: Path) -> None:
    record = governor.run(
        ["sh", "-c", 'echo "$GREETING $(pwd)"'],
        env={"GREETING": "hello", "PATH": os.environ["PATH"]},
        cwd=str(tmp_path),
    )
    assert record.stdout == f"hello {tmp_path}\n".encode()


def test_children_are_single_threaded_forks_of_a_small_zygote() -> None:
    facts = governor.run(th.describe_self).unwrap()
    assert facts["threads"] == 1


def test_output_is_captured_and_capped() -> None:
    record = governor.run(th.print_and_return, "hello")
    assert record.stdout == b"hello\n" and record.stderr == b"to stderr\n"
    big = governor.run(["sh", "-c", "head -c 100000 /dev/zero"], output_cap=1000)
    assert big.outcome is Outcome.SUCCEEDED
    assert big.stdout == b"\0" * 1000
    assert any("99000 bytes beyond" in note for note in big.notes)


def test_children_die_with_the_fork_server(ready_file: str) -> None:
    """Parent-death signal: when the zygote dies, its running children die with it."""
    import threading

    from conftest import gone, wait_until

    server = ForkServer()
    result: list[governor.Execution] = []
    worker = threading.Thread(
        target=lambda: result.append(governor.run(th.wait_for_ever, ready_file, fork_server=server))
    )
    worker.start()
    wait_until(lambda: Path(ready_file).exists())
    assert server.pid is not None
    child = psutil.Process(server.pid).children()[0]
    os.kill(server.pid, signal.SIGKILL)
    worker.join(timeout=30)
    server.close()
    assert result and result[0].outcome is Outcome.CRASHED
    assert gone(child.pid)


def test_a_task_that_stops_the_fork_server_holds_back_no_other_start(tmp_path: Path) -> None:
    """A task may stop its parent, the fork server (SIGSTOP, as the same uid may without a
    sandbox), and go on running: every other start then waited for a server that forked
    nothing, until the start gave up (30 s) or that task ended. A start that has had no answer
    now continues a stopped fork server."""
    import threading

    from conftest import wait_until

    ready = tmp_path / "ready"
    server = ForkServer()
    hostile: list[governor.Execution] = []
    worker = threading.Thread(target=lambda: hostile.append(governor.run(
        ["sh", "-c", f"kill -STOP $PPID; echo $$ > {ready}.new; mv {ready}.new {ready}; exec sleep 100000"],
        fork_server=server,
    )))  # fmt: skip
    worker.start()
    try:
        wait_until(ready.exists, timeout=guard(30))
        assert server.pid is not None
        wait_until(lambda: psutil.Process(server.pid).status() == psutil.STATUS_STOPPED, timeout=guard(30))
        other = governor.run(th.add, 1, 1, fork_server=server)
        assert other.result == 2, other.error
        continued = "the fork server had been stopped (SIGSTOP) when this run asked it to start the task"
        assert any(note.startswith(continued) for note in other.notes), other.notes
    finally:
        if ready.exists():
            os.kill(int(ready.read_text()), signal.SIGKILL)
        worker.join(timeout=guard(60))
        server.close()
    assert hostile and hostile[0].outcome is Outcome.CRASHED, hostile


def test_fork_server_restarts_after_dying() -> None:
    server = ForkServer()
    assert governor.run(th.add, 1, 1, fork_server=server).result == 2
    first = server.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    psutil.Process(first).wait(timeout=10)
    assert governor.run(th.add, 2, 2, fork_server=server).result == 4
    assert server.pid != first
    server.close()


FORKED_HERE = """
import os, signal, sys
import governor, task_helpers
from runner import default_fork_server

server = default_fork_server()  # the command line's: the one a call in a child finds too
server.start(fork_here=True)
forked = server.pid
with open(f"/proc/{forked}/cmdline", "rb") as cmdline:
    assert cmdline.read() == open("/proc/self/cmdline", "rb").read(), "not a fork of this process"
record = governor.run(["sh", "-c", "echo $PPID"], fork_server=server)
assert record.ok and int(record.stdout) == forked, record
assert governor.run(task_helpers.add, 1, 2, fork_server=server).result == 3
# A child of this zygote inherits the server's lock as start() held it while forking.
assert governor.run(task_helpers.run_a_governor_inside, fork_server=server).result["inner"] == "succeeded"
os.kill(forked, signal.SIGKILL)
os.waitid(os.P_PID, forked, os.WEXITED | os.WNOWAIT)  # dead, and left for the server to reap
assert governor.run(["true"], fork_server=server).ok  # restarted: a fresh interpreter now
with open(f"/proc/{server.pid}/cmdline", "rb") as cmdline:
    assert b"runner._zygote" in cmdline.read()
server.close()
try:
    os.waitpid(-1, os.WNOHANG)
except ChildProcessError:
    print("no child left")
"""


def test_a_fork_server_forked_from_a_small_process_serves_it_and_restarts_as_an_interpreter() -> None:
    """What the command line does at its start (``start(fork_here=True)``), in a process of its
    own: pytest's has threads, which a forked zygote must not be made from."""
    tests = os.path.dirname(os.path.abspath(__file__))
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run([sys.executable, "-c", FORKED_HERE], capture_output=True, text=True,
                          env=environment, timeout=guard(60))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "no child left\n"


WITHOUT_STDOUT = """
import os, sys
import governor
os.close(1)  # as a daemon's child may be: the next descriptor opened takes number 1
where = "import os, sys; print(os.readlink('/proc/self/fd/1'), file=sys.stderr)"
record = governor.run([sys.executable, "-c", where], capture=False)
other = governor.run(["true"])
sys.stderr.write(f"{record.outcome} {record.exit_code} {other.outcome}\\n")
"""


def test_a_supervisor_without_stdout_never_hands_a_command_its_own_socket() -> None:
    """Started without fd 1, the fork server's control socket took it, and a command given the
    supervisor's stdout wrote into the zygote's requests (the zygote hung; a pickled request
    would have run as root)."""
    done = subprocess.run([sys.executable, "-c", WITHOUT_STDOUT], capture_output=True, text=True,
                          timeout=guard(60))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["/dev/null", "succeeded 0 succeeded"]  # its stdout, ours


def test_bad_definitions_are_refused_with_the_field_named() -> None:
    import pytest

    with pytest.raises(ValueError, match="argv must not be empty"):
        governor.run([])
    with pytest.raises(ValueError, match="not a string"):
        governor.run("ls -l")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kill_grace"):
        governor.run(["true"], kill_grace=-1)
    with pytest.raises(ValueError, match="only a callable"):
        governor.run(["echo"], "extra")


def test_output_callback_sees_every_chunk_even_beyond_the_cap() -> None:
    seen: list[tuple[str, bytes]] = []
    record = governor.run(
        ["sh", "-c", "printf abcdef; printf err >&2"],
        output_cap=2,
        on_output=lambda s, c: seen.append((s, c)),
    )
    assert record.stdout == b"ab"
    assert b"".join(c for s, c in seen if s == "stdout") == b"abcdef"
    assert b"".join(c for s, c in seen if s == "stderr") == b"err"


def test_a_failing_output_callback_is_noted_and_the_run_goes_on() -> None:
    """Its exception escaped the run's loop: the call raised it mid-run, the output and the
    record lost."""

    def callback(stream: str, chunk: bytes) -> None:
        raise ValueError("no room")

    record = governor.run(["sh", "-c", "echo one; echo two >&2; exit 3"], on_output=callback)
    assert (record.exit_code, record.stdout, record.stderr) == (3, b"one\n", b"two\n")
    for stream in ("stdout", "stderr"):
        note = f"{stream}: on_output failed (ValueError: no room); the rest was kept, not passed on"
        assert note in record.notes


def test_an_output_callback_whose_reader_is_gone_closes_the_stream() -> None:
    """As ``governor run --json -- yes | head -1`` meets: the task writes on to a closed pipe,
    and ends by SIGPIPE as it would have written to that reader itself."""

    def callback(stream: str, chunk: bytes) -> None:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    record = governor.run(["yes"], on_output=callback, limits=governor.Limits(wall_time=guard(60)))
    assert record.signal == signal.SIGPIPE, record
    assert "stdout: its reader went away (on_output: [Errno 32] Broken pipe); it was closed" in record.notes


def test_stdin_can_be_given(tmp_path: Path) -> None:
    source = tmp_path / "input"
    source.write_bytes(b"from stdin\n")
    fd = os.open(source, os.O_RDONLY)
    try:
        record = governor.run(["cat"], stdin=fd)
    finally:
        os.close(fd)
    assert record.stdout == b"from stdin\n"


def test_concurrent_runs_from_threads_share_one_fork_server() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        records = list(pool.map(lambda n: governor.run(th.add, n, n), range(24)))
    assert [r.result for r in records] == [2 * n for n in range(24)]
    assert len({r.pid for r in records}) == 24


def test_unknown_enforcement_names_the_field() -> None:
    import pytest

    with pytest.raises(ValueError, match="enforcement: expected one of auto, cgroup2"):
        governor.run(["true"], enforcement="magic")


def test_a_forked_supervisor_gets_its_own_fork_server() -> None:
    """After os.fork(), the child process must not talk over its parent's zygote socket."""
    server = ForkServer()
    assert governor.run(th.add, 1, 1, fork_server=server).result == 2
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns that forking a threaded process is risky;
        warnings.simplefilter("ignore", DeprecationWarning)  # this child only runs governor.run
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked copy of the test process
        try:
            ok = governor.run(th.add, 2, 3, fork_server=server).result == 5
            server.close()
            os.write(write_end, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 1)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert governor.run(th.add, 3, 3, fork_server=server).result == 6  # the parent's still works
    server.close()
