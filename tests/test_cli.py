"""``governor run`` as a user types it: a real subprocess of the installed console script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest
from guards import guard

GOVERNOR = [sys.executable, "-m", "governor"]


def governor(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GOVERNOR, *args], capture_output=True, text=True, timeout=timeout)


def test_readme_promise_memory_hog_ends_as_memory_exceeded() -> None:
    done = governor("run", "--memory", "100M", "--", sys.executable, "-c", "b = bytearray(10**9)")
    assert done.returncode == 121, done.stderr
    assert "memory_exceeded" in done.stderr
    assert "peak memory" in done.stderr and "MiB" in done.stderr


@pytest.mark.parametrize("mode", ["rlimit", "watchdog"])
def test_memory_hog_without_cgroups_still_ends_as_memory_exceeded(mode: str) -> None:
    done = governor(
        "run", "--enforce", mode, "--memory", "100M", "--", sys.executable, "-c", "b = bytearray(10**9)"
    )
    assert done.returncode == 121, done.stderr
    assert f"memory={mode}" in done.stderr


def test_json_record_is_the_last_line_of_stdout() -> None:
    done = governor("run", "--json", "--", "sh", "-c", "printf 'no newline'")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0] == "no newline"
    record = json.loads(lines[-1])
    for key in (
        "outcome",
        "exit_code",
        "signal",
        "peak_memory_bytes",
        "cpu_user_seconds",
        "cpu_system_seconds",
        "wall_seconds",
        "enforcement",
    ):
        assert key in record
    assert record["outcome"] == "succeeded" and record["exit_code"] == 0


def test_output_passes_through_and_summary_goes_to_stderr() -> None:
    done = governor("run", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert done.returncode == 3
    assert done.stdout == "out\n"
    assert done.stderr.startswith("err\n")
    assert "governor: outcome" in done.stderr and "failed" in done.stderr


@pytest.mark.parametrize(
    ("arguments", "status"),
    [
        (["--timeout", "0.2", "--", "sleep", "30"], 124),
        (["--", "no-such-command-xyz"], 127),
        (["--", "sh", "-c", "exit 9"], 9),
        (["--", "sh", "-c", "kill -SEGV $$"], 128 + 11),
        (
            [
                "--cpu-time",
                "0.3",
                "--sample-interval",
                "0.05",
                "--",
                sys.executable,
                "-c",
                "while True: pass",
            ],
            122,
        ),
        (["--memory", "12XB", "--", "true"], 125),
        (["--"], 125),
    ],
)
def test_exit_statuses(arguments: list[str], status: int) -> None:
    assert governor("run", *arguments).returncode == status


def test_not_executable_is_126(tmp_path: os.PathLike[str]) -> None:
    script = os.path.join(tmp_path, "script.sh")
    with open(script, "w") as handle:
        handle.write("#!/bin/sh\necho hi\n")
    assert governor("run", "--", script).returncode == 126


def test_bad_limit_names_the_field() -> None:
    done = governor("run", "--cpus", "-1", "--", "true")
    assert done.returncode == 125
    assert "cpu_rate" in done.stderr and "-1" in done.stderr


def test_cpus_is_cores_and_cpu_its_deprecated_name() -> None:
    done = governor("run", "--cpus", "0.5", "--json", "--", "true")
    assert done.returncode == 0 and json.loads(done.stdout.splitlines()[-1])["limits"]["cpu_rate"] == 0.5
    old = governor("run", "--cpu", "0.5", "--json", "--", "true")
    assert old.returncode == 0 and "--cpu is deprecated" in old.stderr and "--cpus" in old.stderr
    assert json.loads(old.stdout.splitlines()[-1])["limits"]["cpu_rate"] == 0.5
    assert governor("run", "--cpu", "1", "--cpus", "1", "--", "true").returncode == 125


def test_version() -> None:
    done = governor("--version")
    assert done.returncode == 0 and done.stdout.startswith("governor 0.")


@pytest.mark.parametrize(
    ("arguments", "usage"),
    [
        (["bogus"], "usage: governor [-h]"),
        (["run", "--memroy", "1G", "--", "true"], "usage: governor run"),
        (["run", "--kill-grace", "soon", "--", "true"], "usage: governor run"),
        (["run", "--kill-grace", "0s", "--", "true"], "usage: governor run"),
        (["run", "--signal", "NOPE", "--", "true"], "usage: governor run"),
        (["run", "--signal", "STOP", "--", "true"], "usage: governor run"),
        (["run", "--", ""], "usage: governor run"),
        (["history", "--bogus"], "usage: governor history"),
        (["report", "--format", "pdf"], "usage: governor report"),
    ],
)
def test_a_usage_error_exits_125_with_the_subcommands_usage(arguments: list[str], usage: str) -> None:
    """Not 2: a governed command may exit 2 itself; 125 is the governor's own failure. Nothing
    else is said: the fork server, started before the options were read, leaves quietly (it
    printed a BrokenPipeError traceback when it found the command line gone)."""
    done = governor(*arguments)
    assert done.returncode == 125, done.stderr
    assert done.stderr.startswith(usage), done.stderr
    assert "Traceback" not in done.stderr and "Error:" not in done.stderr, done.stderr


@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-", "<&- >&-", "<&- >&- 2>&-"])
def test_started_without_standard_descriptors_it_runs_the_same(
    closed: str, tmp_path: os.PathLike[str]
) -> None:
    """As a cron job or a daemon's child may be. ``--version`` without stdout exited 1 with a
    traceback; with stdin and stdout closed, the fork server's socket took their numbers, the
    fork server died, and ``governor run`` failed with a ConnectionResetError traceback."""
    record = os.path.join(tmp_path, "record.json")
    closing = ["sh", "-c", f'"$@" {closed}', "sh", *GOVERNOR]
    assert subprocess.run([*closing, "--version"], timeout=guard(60)).returncode == 0
    command = ["sh", "-c", "read line; echo out; echo err >&2; exit 3"]
    done = subprocess.run([*closing, "run", "-o", record, "--", *command],
                          capture_output=True, text=True, timeout=guard(60))  # fmt: skip
    assert done.returncode == 3, (closed, done.stderr)
    with open(record) as written:
        assert json.loads(written.read())["exit_code"] == 3
    assert "Traceback" not in done.stderr


def test_quiet_and_the_record_to_a_file(tmp_path: os.PathLike[str]) -> None:
    record = os.path.join(tmp_path, "record.json")
    done = governor("run", "-q", "-o", record, "--kill-grace", "2s", "--sample-interval", "50ms",
                    "--", "sh", "-c", "echo out; exit 3")  # fmt: skip
    assert done.returncode == 3
    assert done.stdout == "out\n" and done.stderr == ""  # the command's output alone
    with open(record) as handle:
        saved = json.load(handle)
    assert saved["command"] == ["sh", "-c", "echo out; exit 3"] and saved["exit_code"] == 3


def test_the_polite_signal_is_the_one_asked_for(tmp_path: os.PathLike[str]) -> None:
    from conftest import wait_until

    ready = os.path.join(tmp_path, "ready")
    script = f'trap "echo got-INT; exit 3" INT; touch {ready}; while :; do sleep 0.01; done'
    process = subprocess.Popen(
        [*GOVERNOR, "run", "-s", "INT", "--kill-grace", "60s", "--json", "--", "sh", "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until(lambda: os.path.exists(ready), timeout=guard(30))
    process.terminate()  # cancels the run: the command is asked with SIGINT, and ends itself
    stdout, stderr = process.communicate(timeout=guard(60))
    assert process.returncode == 143, stderr
    assert "got-INT" in stdout and json.loads(stdout.splitlines()[-1])["outcome"] == "cancelled"


def test_sigterm_to_the_governor_cancels_the_command(tmp_path: os.PathLike[str]) -> None:
    ready = os.path.join(tmp_path, "ready")
    process = subprocess.Popen(
        [
            *GOVERNOR,
            "run",
            "--json",
            "--kill-grace",
            "0.2",
            "--",
            "sh",
            "-c",
            f"touch {ready}; exec sleep 30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    from conftest import wait_until

    wait_until(lambda: os.path.exists(ready), timeout=guard(30))
    process.terminate()
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 143
    assert json.loads(stdout.splitlines()[-1])["outcome"] == "cancelled"


def test_kill_9_of_the_governor_takes_its_command_and_fork_server_with_it(tmp_path: os.PathLike[str]) -> None:
    """The fork server is a fork of the command line now: killed without a word, the command
    line leaves nothing behind, neither the command's setsid'd grandchild nor the server."""
    from conftest import gone, wait_until

    ready = os.path.join(tmp_path, "ready")
    script = f"setsid sleep 60 & echo $! > {ready}.tmp; mv {ready}.tmp {ready}; exec sleep 60"
    process = subprocess.Popen([*GOVERNOR, "run", "--", "sh", "-c", script], stderr=subprocess.DEVNULL)
    wait_until(lambda: os.path.exists(ready), timeout=guard(30))
    with open(ready) as written:
        grandchild = int(written.read())
    server = [child.pid for child in psutil.Process(process.pid).children()]
    assert len(server) == 1
    process.kill()
    process.wait(timeout=guard(30))
    wait_until(lambda: gone(grandchild) and gone(server[0]), timeout=guard(30))


@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGHUP, 129), (signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGQUIT, -signal.SIGQUIT)],
)
def test_a_signal_to_the_whole_process_group_leaves_nothing_behind(
    signum: int, status: int, tmp_path: os.PathLike[str]
) -> None:
    """A closed terminal (HUP), ``timeout`` or ``systemctl stop`` (TERM) and ^\\ (QUIT) reach
    every process of the group: they killed the fork server, which left the command's
    setsid'd processes running for good, and TERM's record said ``crashed``, status 125."""
    from conftest import gone, wait_until

    ready, record = os.path.join(tmp_path, "ready"), os.path.join(tmp_path, "record.json")
    script = f"setsid sleep 60 & echo $! > {ready}.tmp; mv {ready}.tmp {ready}; exec sleep 60"
    process = subprocess.Popen([*GOVERNOR, "run", "-q", "-o", record, "--", "sh", "-c", script],
                               start_new_session=True)  # fmt: skip
    wait_until(lambda: os.path.exists(ready), timeout=guard(30))
    with open(ready) as written:
        grandchild = int(written.read())
    server = psutil.Process(process.pid).children()[0].pid
    os.killpg(process.pid, signum)
    assert process.wait(timeout=guard(30)) == status
    wait_until(lambda: gone(grandchild) and gone(server), timeout=guard(30))
    if status > 0:  # cancelled, and the record says so
        with open(record) as written:
            assert json.loads(written.read())["outcome"] == "cancelled"


def test_the_summary_shows_the_cgroups_charge_and_the_largest_processs_rss(
    tmp_path: os.PathLike[str],
) -> None:
    """The cgroup's charge counts page cache the command caused; ru_maxrss does not: both,
    labelled, as a user comparing with /usr/bin/time -v needs them."""
    from conftest import cgroup_mode_or_skip

    mode = cgroup_mode_or_skip()
    code = "b = bytearray(60 << 20); b[::4096] = b'x' * len(b[::4096])"
    written = os.path.join(tmp_path, "record.json")
    done = governor("run", "--enforce", str(mode), "-o", written, "--", sys.executable, "-c", code)
    with open(written) as record:
        assert json.load(record)["peak_rss_bytes"] >= 60 << 20
    assert "charged to its cgroup (page cache included)" in done.stderr and "peak RSS" in done.stderr


def test_a_run_loads_only_what_running_one_command_needs() -> None:
    """Attack: ``governor run -- true`` took 542 ms, importing the scheduler, the service, the
    store, OpenTelemetry, Dask and croniter to run one command."""
    heavy = (
        "governor.scheduling", "governor.service._store", "governor.observe", "opentelemetry",
        "croniter", "distributed", "cloudpickle", "psutil",
        # and what only other subcommands, the sandbox, rare warnings or --json need
        "governor.cli._service", "runner._sandboxing", "logging", "secrets", "tempfile", "pathlib", "json",
        # the child's side (ctypes with it), which only the fork server loads; what measuring the
        # terminal for a help text loads; the sandbox's settings; a cpu_rate's throttle
        "runner._child", "ctypes", "shutil", "bz2", "lzma", "policies._sandbox", "runner._throttle",
    )  # fmt: skip
    code = (
        "import sys; from governor.cli import main; sys.argv[1:] = ['run', '-q', '--', 'true']\n"
        "status = main()\n"
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))\n"
        "sys.exit(status)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=guard(60))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_help_is_wrapped_to_the_terminals_width() -> None:
    """The parsers are built with a formatter of fixed width (measuring the terminal costs a
    run's start): the help people read must still be wrapped to the width they have."""
    lines = {}
    for columns in (50, 160):
        environment = {**os.environ, "COLUMNS": str(columns)}
        done = subprocess.run([*GOVERNOR, "run", "--help"], capture_output=True, text=True, env=environment,
                              timeout=guard(60))  # fmt: skip
        assert done.returncode == 0, done.stderr
        lines[columns] = done.stdout.splitlines()
    assert max(map(len, lines[50])) <= 50  # an option with its choices is one word, a little wider
    assert max(map(len, lines[160])) > 80  # not the building formatter's 80 columns
    assert len(lines[50]) > len(lines[160])


def test_shell_completion_completes_subcommands_and_options() -> None:
    """bash, for real: the completion function the script installs answers as the shell asks."""
    script = (
        'eval "$(governor completion bash)"\n'
        "COMP_WORDS=(governor ru); COMP_CWORD=1; COMP_LINE='governor ru'; COMP_POINT=11\n"
        '_python_argcomplete governor ru governor; echo "[${COMPREPLY[*]}]"\n'
        "COMP_WORDS=(governor run --mem); COMP_CWORD=2; COMP_LINE='governor run --mem'; COMP_POINT=18\n"
        '_python_argcomplete governor --mem run; echo "[${COMPREPLY[*]}]"\n'
    )
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=guard(60))
    assert done.stdout.splitlines() == ["[run ]", "[--memory ]"], done.stdout + done.stderr
    for shell, marker in (("zsh", "#compdef governor"), ("fish", "complete --command governor")):
        generated = governor("completion", shell)
        assert generated.returncode == 0 and marker in generated.stdout, generated.stdout[:300]


@pytest.mark.parametrize("options", [["--json"], ["--enforce", "rlimit", "--memory", "1G"]])
def test_a_reader_gone_from_stdout_ends_the_command_as_it_would_without_us(
    options: list[str], tmp_path: os.PathLike[str]
) -> None:
    """``--json`` and an rlimit memory limit read the command's output to pass it on: when
    ``head`` had its line, writing on raised a BrokenPipeError traceback, status 1, and the
    ``-o`` record was lost. Now the command meets the closed pipe itself, as ``yes`` does."""
    record = os.path.join(tmp_path, "record.json")
    pipeline = ["bash", "-c", '"$@" | head -1; exit "${PIPESTATUS[0]}"', "bash"]
    done = subprocess.run([*pipeline, *GOVERNOR, "run", *options, "-o", record, "--", "yes"],
                          capture_output=True, text=True, timeout=guard(60))  # fmt: skip
    assert done.stdout == "y\n" and "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 128 + signal.SIGPIPE, done.stderr
    with open(record) as written:
        saved = json.loads(written.read())
    assert saved["signal"] == signal.SIGPIPE
    assert any(note.startswith("stdout: its reader went away") for note in saved["notes"])


def test_a_full_stdout_is_the_governors_failure_and_the_record_is_kept(tmp_path: os.PathLike[str]) -> None:
    """The same with ENOSPC (``> /dev/full``): the command's output and the record cannot
    reach stdout; that is said, the status is 125, and ``-o`` has the record."""
    record = os.path.join(tmp_path, "record.json")
    with open("/dev/full", "w") as full:
        done = subprocess.run([*GOVERNOR, "run", "--json", "-o", record, "--", "echo", "hi"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=guard(60))  # fmt: skip
    assert done.returncode == 125, done.stderr
    said = "governor: stdout: the command's output could not be passed on: No space left on device\n"
    assert done.stderr == said
    with open(record) as written:
        assert json.loads(written.read())["exit_code"] == 0


@pytest.mark.parametrize("path", ["/nonexistent/record.json", ""])
def test_a_record_file_that_cannot_be_written_stops_the_run_before_it_starts(
    path: str, tmp_path: os.PathLike[str]
) -> None:
    """As ``time -o``: it was found only after the command had run, and the status was the
    command's, as if the record had been written."""
    marker = os.path.join(tmp_path, "ran")
    done = governor("run", "-o", path, "--", "touch", marker)
    assert done.returncode == 125, done.stderr
    assert f"governor: -o {path!r}: No such file or directory" in done.stderr
    assert not os.path.exists(marker)


def test_interrupted_while_it_loads_it_exits_130_and_leaves_no_server(tmp_path: os.PathLike[str]) -> None:
    """^C before the run has set its handlers (the first ~150 ms) printed a KeyboardInterrupt
    traceback. SIGINT is sent as the parser is built, the fork server already started."""
    from conftest import gone, wait_until

    server = os.path.join(tmp_path, "server")
    script = f"""
import os, signal, sys
import governor.cli as cli
from runner._forkserver import default_fork_server
build = cli._parser
def interrupted(*args, **kwargs):
    with open({server!r}, "w") as written:
        written.write(str(default_fork_server().pid))
    os.kill(os.getpid(), signal.SIGINT)
    return build(*args, **kwargs)
cli._parser = interrupted
sys.argv = ["governor", "run", "--", "true"]
cli.console()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=guard(60))
    assert done.returncode == 130 and done.stderr == "", done.stderr
    with open(server) as written:
        pid = int(written.read())
    wait_until(lambda: gone(pid), timeout=guard(30))


@pytest.mark.parametrize(
    ("ending", "status"),
    [("exit 3", 3), (f"exec {sys.executable} -c 'b = bytearray(10**9)'", 121), ("exec sleep 100000", 143)],
    ids=["exits", "meets-its-memory-limit", "is-cancelled"],
)
def test_a_command_that_stops_its_fork_server_is_still_held_to_its_limits(
    tmp_path: os.PathLike[str], ending: str, status: int
) -> None:
    """A command's exit status comes through the fork server, its parent, which the same uid
    may stop (without ``--sandbox``): ``kill -STOP $PPID`` held the status back, and the run
    hung for ever, past its limits and a SIGTERM (143). Now the fork server is continued as
    soon as the command has ended, and that is noted."""
    from conftest import wait_until

    ready = os.path.join(tmp_path, "ready")
    process = subprocess.Popen(
        [*GOVERNOR, "run", "--memory", "100M", "--kill-grace", "0.2s", "--", "sh", "-c",
         f"kill -STOP $PPID; touch {ready}; {ending}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        if status == 143:  # cancelled once the fork server is stopped
            wait_until(lambda: os.path.exists(ready), timeout=guard(30))
            process.terminate()
        _, stderr = process.communicate(timeout=guard(60))
    finally:
        process.kill()
        process.wait()
    assert process.returncode == status, stderr
    assert "the fork server had been stopped (SIGSTOP) when the task ended; it was continued" in stderr
