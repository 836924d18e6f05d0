"""Pure: the facts of an ended child -> its one outcome, the limit that caused it, the error.

The execution's state machine gathers the facts (``Ending``); ``classify`` decides, in this
order, the first that holds:

    cancelled on request                         cancelled
    a limit the supervisor acted on              that limit's outcome (memory_exceeded, ...)
    the kernel OOM-killed a member, no success   memory_exceeded
    the kernel refused a fork at pids            failed, breached pids (even if it coped)
    SIGXCPU, or SIGKILL past its cpu_time        cpu_time_exceeded
    SIGXFSZ                                      failed, breached file_size
    the zygote died under it                     crashed
    it could not be confined                     crashed
    a signal nobody of ours sent                 crashed
    the callable raised                          failed (memory_exceeded: a MemoryError under
                                                 an RLIMIT_DATA memory limit)
    exec failed, or its frame would not unpickle failed
    a command: exit 0 / a refused allocation / other    succeeded / memory_exceeded / failed
    a callable that returned                     succeeded
    a callable that ended without a word         crashed

No clock, no process, no file: everything is handed in.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from policies import Limits, format_duration, format_size
from runner._messages import (
    EXIT_EXEC_FAILED,
    EXIT_EXEC_NOT_FOUND,
    ExecFailed,
    Exited,
    Message,
    Ok,
    Raised,
    SetupFailed,
    Unreadable,
)
from runner._records import Outcome, TaskError, Usage

# The outcome of a violation of each limit the supervisor itself acts on.
VIOLATION_OUTCOME = {
    "memory": Outcome.MEMORY_EXCEEDED,
    "cpu_time": Outcome.CPU_TIME_EXCEEDED,
    "wall_time": Outcome.TIMED_OUT,
    "pids": Outcome.FAILED,
}

# What common runtimes print when an allocation is refused (RLIMIT_DATA makes mmap/brk fail).
ALLOCATION_FAILURES = (b"MemoryError", b"Cannot allocate memory", b"std::bad_alloc", b"out of memory")


@dataclass(frozen=True, kw_only=True, slots=True)
class Ending:
    """Everything known about an execution once its tree is gone."""

    is_command: bool
    limits: Limits
    message: Message | None  # the child's one message, if it sent one
    exited: Exited | None  # from the zygote; None if it died first
    zygote_died: bool
    cancelled: bool  # stopped on request
    violation: str | None  # the limit the supervisor acted on
    usage: Usage
    memory_by_rlimit: bool  # memory is held by RLIMIT_DATA: a refused allocation is the sign
    stderr_tail: bytes = b""  # the last bytes of captured stderr
    processes_seen: int | None = None  # the latest sampled process count
    refused_forks: int = 0  # forks the kernel refused at the cgroup's pids limit


@dataclass(frozen=True, slots=True)
class Verdict:
    """How an execution ended: its outcome, the limit that ended it, and why, as facts."""

    outcome: Outcome
    breached_limit: str | None
    error: TaskError | None


def exit_facts(exited: Exited | None) -> tuple[int | None, int | None]:
    """``(exit_code, signal)`` of an ended child (both ``None`` if unknown)."""
    if exited is None:
        return None, None
    status = exited.status
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return None, None


def classify(ending: Ending) -> Verdict:
    """Decide the one outcome (see the module docstring)."""
    limits, message, usage = ending.limits, ending.message, ending.usage
    exit_code, signum = exit_facts(ending.exited)
    error = error_from(message)
    if ending.cancelled:
        return Verdict(Outcome.CANCELLED, None, TaskError(type="Cancelled", message="cancelled on request"))
    if ending.violation is not None:
        limit = ending.violation
        text = (
            f"{limit} limit {limit_text(limit, limits)} exceeded{_observed(limit, ending)}; "
            "killed by the supervisor"
        )
        return Verdict(VIOLATION_OUTCOME[limit], limit, TaskError(type="LimitExceeded", message=text))
    succeeded = exit_code == 0 and (ending.is_command or isinstance(message, Ok))
    if usage.oom_kills and not succeeded:
        text = (
            f"memory limit {limit_text('memory', limits)} reached; "
            f"the kernel OOM-killed {usage.oom_kills} process(es)"
        )
        return Verdict(Outcome.MEMORY_EXCEEDED, "memory", TaskError(type="LimitExceeded", message=text))
    if ending.refused_forks:  # it met its limit: the same outcome however the task took the refusal
        text = f"pids limit {limit_text('pids', limits)} reached{_observed('pids', ending)}"
        return Verdict(Outcome.FAILED, "pids", TaskError(type="LimitExceeded", message=text))
    if signum == signal.SIGXCPU or (
        signum == signal.SIGKILL and limits.cpu_time is not None and usage.cpu_seconds >= limits.cpu_time
    ):
        text = f"cpu_time limit {limit_text('cpu_time', limits)} exceeded (RLIMIT_CPU)"
        return Verdict(Outcome.CPU_TIME_EXCEEDED, "cpu_time", TaskError(type="LimitExceeded", message=text))
    if signum == signal.SIGXFSZ:
        text = f"file_size limit {limit_text('file_size', limits)} exceeded (RLIMIT_FSIZE)"
        return Verdict(Outcome.FAILED, "file_size", TaskError(type="LimitExceeded", message=text))
    if ending.zygote_died:
        text = "the fork server died while the child ran"
        return Verdict(Outcome.CRASHED, None, TaskError(type="ForkServerDied", message=text))
    if isinstance(message, SetupFailed):
        return Verdict(Outcome.CRASHED, None, error)
    if signum is not None:
        text = f"killed by {signal.Signals(signum).name} ({-signum})" + _oom_hint(signum)
        return Verdict(Outcome.CRASHED, None, TaskError(type="Signal", message=text))
    if isinstance(message, Raised):
        if message.memory_error and ending.memory_by_rlimit:
            return Verdict(Outcome.MEMORY_EXCEEDED, "memory", error)
        return Verdict(Outcome.FAILED, None, error)
    if isinstance(message, ExecFailed | Unreadable):
        return Verdict(Outcome.FAILED, None, error)
    if ending.is_command:
        return _command_verdict(ending, exit_code)
    if isinstance(message, Ok):
        return Verdict(Outcome.SUCCEEDED, None, None)
    text = f"the child exited with status {exit_code} without sending a result"
    return Verdict(Outcome.CRASHED, None, TaskError(type="NoResult", message=text))


def _command_verdict(ending: Ending, exit_code: int | None) -> Verdict:
    if exit_code == 0:
        return Verdict(Outcome.SUCCEEDED, None, None)
    marker = allocation_failure(ending.stderr_tail) if ending.memory_by_rlimit else None
    if marker is not None:
        text = (
            f"memory limit {limit_text('memory', ending.limits)} (RLIMIT_DATA) refused an allocation; "
            f"inferred from {marker!r} in the command's stderr, exit status {exit_code}"
        )
        return Verdict(Outcome.MEMORY_EXCEEDED, "memory", TaskError(type="LimitExceeded", message=text))
    return Verdict(
        Outcome.FAILED, None, TaskError(type="ExitStatus", message=f"exited with status {exit_code}")
    )


def allocation_failure(stderr_tail: bytes) -> str | None:
    """Under an RLIMIT_DATA memory limit a command cannot be told it hit the limit; it fails
    its allocation and exits. The runtimes' own words for that, if ``stderr_tail`` has them."""
    for marker in ALLOCATION_FAILURES:
        if marker in stderr_tail:
            return marker.decode()
    return None


def error_from(message: Message | None) -> TaskError | None:
    """The error facts a child's message carries (``None`` for a result or no message)."""
    if isinstance(message, Raised):
        return TaskError(
            type=message.type, message=message.message, traceback=message.traceback, pickled=message.pickled
        )
    if isinstance(message, ExecFailed):
        code = EXIT_EXEC_NOT_FOUND if message.errno == 2 else EXIT_EXEC_FAILED
        text = f"cannot execute: {message.text} (errno {message.errno}; exit {code})"
        return TaskError(type="ExecFailed", message=text)
    if isinstance(message, SetupFailed):
        return TaskError(type="SetupFailed", message=f"the child could not be set up: {message.text}")
    if isinstance(message, Unreadable):
        return TaskError(
            type="UnpicklingError", message=f"the child's result could not be unpickled: {message.text}"
        )
    return None


def limit_text(limit: str, limits: Limits) -> str:
    """A limit's value as a person reads it: ``100.0 MiB``, ``2.0s``, ``64``."""
    value = getattr(limits, limit)
    if limit in ("memory", "file_size"):
        return format_size(value)
    if limit in ("cpu_time", "wall_time"):
        return format_duration(value)
    return str(value)


def _observed(limit: str, ending: Ending) -> str:
    if limit == "memory":
        return f" (observed {format_size(ending.usage.peak_memory_bytes)})"
    if limit == "cpu_time":
        return f" (observed {format_duration(ending.usage.cpu_seconds)})"
    if limit == "pids" and ending.refused_forks:
        return f" (the kernel refused {ending.refused_forks} fork(s))"
    if limit == "pids" and ending.processes_seen is not None:
        return f" (observed {ending.processes_seen} processes)"
    return ""


def _oom_hint(signum: int) -> str:
    if signum == signal.SIGKILL:
        return "; SIGKILL not sent by the governor (the system OOM killer?)"
    return ""
