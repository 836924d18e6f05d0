"""``governor run``: one command, governed, like ``timeout`` and ``/usr/bin/time -v`` in one.

``governor run [limits] [--enforce MODE] [--json] [-o FILE] [-q] -- COMMAND [ARG...]`` runs one command
governed, like ``timeout`` and ``/usr/bin/time -v`` in one, with memory, CPU and process
limits. Exit status (documented in the README):

    the command's own    it ended by itself (128+N if a signal we did not send killed it)
    121                  memory_exceeded          122  cpu_time_exceeded
    123                  another limit (pids, file_size) ended it
    124                  timed_out (as coreutils timeout)
    125                  the governor itself failed (bad option, enforcement unavailable)
    126 / 127            the command could not be executed / was not found
    130 / 143            cancelled by SIGINT / SIGTERM sent to the governor
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from policies import Limits, format_duration, format_size, parse_duration
from runner._records import Enforcement, Execution, Outcome

# What starting a child needs (runner._execution and the cgroup backends) is imported by the
# handlers, once the fork server's start is under way: the two overlap.

EXIT_MEMORY = 121
EXIT_CPU_TIME = 122
EXIT_OTHER_LIMIT = 123
EXIT_TIMEOUT = 124
EXIT_GOVERNOR_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
# What cancels the command (its tree killed, the record kept), the exit status 128 + its number.
STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class UsageError(Exception):
    """A bad option or argument: ``main`` prints it and exits 125."""


def add_command(commands: Any) -> None:
    """Register ``run`` on the ``governor`` parser."""
    run = commands.add_parser(
        "run",
        help="run one command under limits and report what it used",
        description="Run COMMAND in a fresh, confined process tree; report its usage.",
        usage="governor run [options] -- COMMAND [ARG...]",
    )
    limits = run.add_argument_group("limits")
    limits.add_argument("--memory", metavar="SIZE", help="memory of the whole tree, e.g. 512M, 1.5GiB")
    limits.add_argument("--cpu-time", metavar="DURATION", help="CPU time (user+system), e.g. 30, 5m")
    limits.add_argument("--cpus", metavar="CORES", help="CPU rate in cores, e.g. 0.5 (as docker run --cpus)")
    limits.add_argument("--cpu", metavar="CORES", dest="cpu_deprecated", help="deprecated: use --cpus")
    limits.add_argument("--timeout", metavar="DURATION", help="wall time, e.g. 90s, 2m")
    limits.add_argument("--pids", metavar="N", type=int, help="processes alive at once")
    limits.add_argument("--open-files", metavar="N", type=int, help="open files per process")
    limits.add_argument("--file-size", metavar="SIZE", help="largest file a process may write")
    run.add_argument(
        "--enforce",
        choices=[mode.value for mode in Enforcement],
        default="auto",
        help="enforcement mechanism (default: auto, the strongest this host offers)",
    )
    run.add_argument(
        "-s",
        "--signal",
        metavar="SIGNAL",
        default="TERM",
        help="the signal that asks it to stop, kill-grace before SIGKILL (default: TERM; as timeout -s)",
    )
    run.add_argument(
        "--kill-grace",
        metavar="DURATION",
        default="2s",
        help="time between the signal and SIGKILL (default: 2s)",
    )
    run.add_argument(
        "--sample-interval",
        metavar="DURATION",
        default="100ms",
        help="time between usage samples (default: 100ms)",
    )
    run.add_argument(
        "--json", action="store_true", help="print the execution record as JSON on the last line of stdout"
    )
    run.add_argument(
        "-o", "--output", metavar="FILE", help="write the execution record as JSON to FILE (as time -o)"
    )
    run.add_argument("-q", "--quiet", action="store_true", help="print no summary on stderr")
    run.add_argument(
        "--sandbox",
        action="store_true",
        help="run it as an unprivileged user of its own, without network, in its own namespaces "
        "(see the README: running untrusted code); the record says how each protection was applied",
    )
    run.add_argument("--sandbox-network", action="store_true", help="with --sandbox: keep the host's network")
    run.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run it on a worker of the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786); "
        "its output is shown when it ends",
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")
    run.set_defaults(handler=_run)


def _limits(arguments: argparse.Namespace) -> Limits:
    cores = arguments.cpus
    if arguments.cpu_deprecated is not None:
        if cores is not None:
            raise UsageError("--cpu: give --cpus alone (--cpu is its deprecated old name)")
        print(
            "governor: --cpu is deprecated and goes in the next release; use --cpus (cores)", file=sys.stderr
        )
        cores = arguments.cpu_deprecated
    try:
        return Limits(
            memory=arguments.memory,
            cpu_time=arguments.cpu_time,
            cpu_rate=cores,
            wall_time=arguments.timeout,
            pids=arguments.pids,
            open_files=arguments.open_files,
            file_size=arguments.file_size,
        )
    except ValueError as error:
        raise UsageError(f"invalid limit: {error}") from None


def _timing(arguments: argparse.Namespace) -> dict[str, Any]:
    """``kill_grace``, ``sample_interval`` and ``stop_signal`` from their options."""
    try:
        timing: dict[str, Any] = {
            "kill_grace": parse_duration(arguments.kill_grace, field="--kill-grace"),
            "sample_interval": parse_duration(arguments.sample_interval, field="--sample-interval"),
        }
    except ValueError as error:
        raise UsageError(str(error)) from None
    for name, value in timing.items():
        if value <= 0:
            raise UsageError(f"--{name.replace('_', '-')}: must be more than 0, got {value:g}s")
    timing["stop_signal"] = signal_number(arguments.signal)
    return timing


def signal_number(text: str) -> signal.Signals:
    """``TERM``, ``SIGTERM``, ``term`` or ``15`` as a signal (``--signal``)."""
    name = text.strip().upper()
    try:
        found = (
            signal.Signals(int(name))
            if name.isdigit()
            else signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
        )
    except (KeyError, ValueError):
        raise UsageError(f"--signal: not a signal: {text!r} (e.g. TERM, INT, HUP, 15)") from None
    if found in (signal.SIGSTOP, signal.SIGCONT):
        raise UsageError(f"--signal: {found.name} cannot end a command")
    return found


def _run(arguments: argparse.Namespace) -> int:
    command = list(arguments.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given (usage: governor run [options] -- COMMAND [ARG...])")
    limits = _limits(arguments)
    if arguments.sandbox_network and not arguments.sandbox:
        raise UsageError("--sandbox-network goes with --sandbox")
    if arguments.sandbox and arguments.dask:
        raise UsageError("--sandbox: not yet on a Dask cluster; run it locally")
    if arguments.dask:
        return _run_on_cluster(arguments, command, limits)
    # main() has started the fork server already: it boots while these load.
    from runner._enforcement import resolve
    from runner._run import run_spec
    from runner._spec import ExecutionSpec

    # Output passes straight through (a terminal stays a terminal) unless we must see it: for
    # --json, to end the command's last line before ours; under an RLIMIT_DATA memory limit,
    # to recognise a refused allocation in its stderr. Then it is forwarded as it arrives.
    rlimit_memory = limits.memory is not None and resolve(arguments.enforce) is Enforcement.RLIMIT
    echo = _Echo() if arguments.json or rlimit_memory else None
    sandbox = None
    if arguments.sandbox:
        from policies import Sandbox  # here: a run without one need not load it

        sandbox = Sandbox(network=arguments.sandbox_network)
    try:
        spec = ExecutionSpec(
            target=command,
            limits=limits,
            enforcement=arguments.enforce,
            capture=echo is not None,
            output_cap=64 * 1024,
            stdin=0,
            on_output=echo,
            **_timing(arguments),
            sandbox=sandbox,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    record_file = _open_record_file(arguments.output)
    received: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        received.append(signum)  # a flag, not an exception: the loop is never cut mid-step

    previous = {signum: signal.signal(signum, interrupt) for signum in STOPPING_SIGNALS}
    try:
        record = run_spec(spec, raise_interrupt=False, cancel_requested=lambda: bool(received))
        status = exit_status(record, received[0] if received else None)
        return _report(arguments, command, record, record_file, status, echo)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _open_record_file(path: str | None) -> Any:
    """``-o FILE`` opened before the command runs, as ``time -o`` does: a path that cannot be
    written is the governor's failure (125), found before the command has done anything."""
    if path is None:
        return None
    try:
        return open(path, "w")  # written and closed by _report
    except OSError as error:
        raise UsageError(f"-o {path!r}: {error.strerror}") from None


def _report(arguments: argparse.Namespace, command: list[str], record: Execution, record_file: Any,
            status: int, echo: _Echo | None = None) -> int:  # fmt: skip
    """The record to ``-o FILE`` first (it is kept whatever becomes of stdout), to stdout with
    ``--json`` (on a line of its own after ``echo``'s), and the summary to stderr (unless
    ``-q`` or ``--json``). Returns the exit status: ``status``, or 125 where a write failed.
    A reader gone from stdout or stderr (a closed pipe) is no failure: it took what it
    wanted, as from any pipeline's writer."""
    for name, error in (echo.failed if echo else {}).items():
        if not isinstance(error, BrokenPipeError):
            _say(f"{name}: the command's output could not be passed on: {error.strerror}")
            status = EXIT_GOVERNOR_FAILED
    line = _json_line(command, record) + "\n" if record_file is not None or arguments.json else ""
    writes = []
    if record_file is not None:
        writes.append((f"-o {arguments.output}", record_file, line))
    if arguments.json and (echo is None or "stdout" not in echo.failed):
        writes.append(("stdout", sys.stdout, (echo.unended_line() if echo else "") + line))
    for name, stream, text in writes:
        try:
            stream.write(text)
            stream.flush()
        except OSError as error:
            _discard(stream)
            if not isinstance(error, BrokenPipeError):
                _say(f"{name}: the record could not be written: {error.strerror}")
                status = EXIT_GOVERNOR_FAILED
        if stream is record_file:
            stream.close()  # flushed, or its descriptor on /dev/null
    if not arguments.quiet and not arguments.json:
        try:
            _print_summary(record, sys.stderr)
        except OSError as error:
            _discard(sys.stderr)
            if not isinstance(error, BrokenPipeError):
                status = EXIT_GOVERNOR_FAILED  # stderr itself failed: nowhere left to say so
    return status


def _discard(stream: Any) -> None:
    """Point ``stream``'s descriptor at /dev/null: its reader is gone, and what is still
    buffered for it (or written later, up to the exit's flush) has nowhere to go."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


def _say(text: str) -> None:
    """``governor: text`` on stderr, where it can still be written."""
    try:
        print(f"governor: {text}", file=sys.stderr, flush=True)
    except OSError:
        _discard(sys.stderr)  # it failed too: the exit status, 125, is left to say so


def _run_on_cluster(arguments: argparse.Namespace, command: list[str], limits: Limits) -> int:
    """``--dask``: the same governed run on a Dask worker; its captured output follows its end."""
    from governor.backends.dask import DaskBackend, connect
    from runner._run import drive
    from runner._spec import ExecutionSpec

    try:
        spec = ExecutionSpec(
            target=command,
            limits=limits,
            enforcement=arguments.enforce,
            **_timing(arguments),
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    record_file = _open_record_file(arguments.output)
    try:
        client = connect(arguments.dask)
    except (RuntimeError, OSError, TimeoutError) as error:
        raise UsageError(f"--dask {arguments.dask}: {error}") from None
    received: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in STOPPING_SIGNALS}
    try:
        backend = DaskBackend(client)
        try:
            handle = backend.start(spec, need=None, priority=0)
            record = drive(handle, cancel_requested=lambda: bool(received))
        finally:
            backend.close()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        client.close()
    echo = _Echo()
    for stream in ("stderr", "stdout"):
        try:
            echo(stream, getattr(record, stream) or b"")
        except OSError:
            continue  # in echo.failed: _report says what it means
    status = exit_status(record, received[0] if received else None)
    return _report(arguments, command, record, record_file, status, echo)


class _Echo:
    """Forwards a captured command's output as it arrives; remembers if stdout ended a line,
    and which of our streams failed (its descriptor then points at /dev/null; the error goes
    on to the runner, which notes it and, for a reader gone, closes the command's stream)."""

    def __init__(self) -> None:
        self.last = b"\n"
        self.failed: dict[str, OSError] = {}

    def __call__(self, stream: str, chunk: bytes) -> None:
        target = sys.stdout if stream == "stdout" else sys.stderr
        try:
            target.buffer.write(chunk)
            target.buffer.flush()
        except OSError as error:
            self.failed[stream] = error
            _discard(target)
            raise
        if stream == "stdout" and chunk:
            self.last = chunk[-1:]

    def unended_line(self) -> str:
        """What ends the command's last line of stdout, where it left one open."""
        return "" if self.last == b"\n" else "\n"


def _json_line(command: list[str], record: Execution) -> str:
    """The record as ``--json`` and ``-o`` write it: one line, the command first."""
    import json  # here: a run that writes no record need not load it

    return json.dumps({"command": command, **record.to_dict(), "enforcement": record.enforcement})


def exit_status(record: Execution, cancelled_by: int | None = None) -> int:
    """The ``governor run`` exit status for ``record`` (see the module docstring)."""
    outcome = record.outcome
    if outcome is Outcome.CANCELLED:
        return 128 + (cancelled_by or signal.SIGTERM)
    if outcome is Outcome.TIMED_OUT:
        return EXIT_TIMEOUT
    if outcome is Outcome.MEMORY_EXCEEDED:
        return EXIT_MEMORY
    if outcome is Outcome.CPU_TIME_EXCEEDED:
        return EXIT_CPU_TIME
    if record.breached_limit is not None:
        return EXIT_OTHER_LIMIT
    if record.signal is not None:
        return 128 + record.signal
    if record.exit_code is not None:
        return record.exit_code
    return EXIT_GOVERNOR_FAILED


def _print_summary(record: Execution, stream: Any) -> None:
    usage = record.usage
    lines = []
    reason = f" ({record.error.message})" if record.error and not record.ok else ""
    lines.append(("outcome", f"{record.outcome}{reason}"))
    if record.signal is not None:
        lines.append(("ended by", f"signal {signal.Signals(record.signal).name} ({record.signal})"))
    else:
        lines.append(("exit status", str(record.exit_code)))
    peak = format_size(usage.peak_memory_bytes)
    limit = f" of {format_size(record.limits.memory)} limit" if record.limits.memory else ""
    if usage.memory_source == "cgroup":  # the kernel's charge counts page cache; say so
        lines.append(("peak memory", f"{peak}{limit}, charged to its cgroup (page cache included)"))
        if usage.peak_rss_bytes:
            rss = format_size(usage.peak_rss_bytes)
            lines.append(("peak RSS", f"{rss}, its largest process (ru_maxrss, as time -v; from the fork)"))
    else:
        lines.append(("peak memory", f"{peak}{limit} (from {usage.memory_source})"))
    if usage.memory_overshoot_bound_bytes:  # sampled, not held by a kernel: say how closely
        bound = format_size(usage.memory_overshoot_bound_bytes)
        lines.append(("overshoot", f"at most {bound} past the limit unseen, at the pace it was seen growing"))
    lines.append(("cpu", f"{usage.cpu_user_seconds:.3f}s user, {usage.cpu_system_seconds:.3f}s system"))
    lines.append(("wall", format_duration(usage.wall_seconds)))
    lines.append(("processes", f"{usage.peak_processes} at most"))
    if record.enforcement:
        lines.append(("enforcement", ", ".join(f"{k}={v}" for k, v in record.enforcement.items())))
    for note in record.notes:
        lines.append(("note", note))
    width = max(len(label) for label, _ in lines)
    for label, text in lines:
        print(f"governor: {label:<{width}}  {text}", file=stream)
    stream.flush()
