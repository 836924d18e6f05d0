"""What one execution was asked to do, how it ended, and what it used.

``Outcome`` and ``Mechanism`` are enums; ``Usage``, ``Sample``, ``TaskError`` and
``Execution`` are frozen records with readable ``repr``s. ``Execution`` is what
``governor.run`` returns and what the scheduler keeps as history.
"""

from __future__ import annotations

import enum
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from policies import Limits, format_duration, format_size
from runner._errors import RemoteError, RemoteTraceback


class Outcome(enum.StrEnum):
    """How an execution ended; every execution ends in exactly one."""

    SUCCEEDED = "succeeded"  # callable returned / command exited 0
    FAILED = "failed"  # callable raised / command exited non-zero / a minor limit was hit
    MEMORY_EXCEEDED = "memory_exceeded"
    CPU_TIME_EXCEEDED = "cpu_time_exceeded"
    TIMED_OUT = "timed_out"  # wall_time passed
    CRASHED = "crashed"  # killed by a signal we did not send, or ended without a result
    CANCELLED = "cancelled"  # stopped on request
    LOST = "lost"  # the supervisor died while it ran (set on recovery)
    EVICTED = "evicted"  # stopped by the governor to keep within its memory budget (re-queued)

    @property
    def ok(self) -> bool:
        """True only for ``succeeded``."""
        return self is Outcome.SUCCEEDED


class Mechanism(enum.StrEnum):
    """What enforces a limit (or measures usage)."""

    CGROUP2 = "cgroup2"
    CGROUP1 = "cgroup1"
    RLIMIT = "rlimit"
    WATCHDOG = "watchdog"
    DEADLINE = "deadline"  # wall time: a monotonic deadline in the supervisor


class Enforcement(enum.StrEnum):
    """Which family of mechanisms to use; ``auto`` picks the strongest the host offers."""

    AUTO = "auto"
    CGROUP2 = "cgroup2"
    CGROUP1 = "cgroup1"
    RLIMIT = "rlimit"
    WATCHDOG = "watchdog"


@dataclass(frozen=True, slots=True)
class Sample:
    """One point of an execution's usage timeline."""

    seconds: float  # since the start of the execution
    memory_bytes: int
    cpu_seconds: float  # cumulative user + system
    processes: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """What an execution used, measured (never estimated)."""

    peak_memory_bytes: int
    cpu_user_seconds: float
    cpu_system_seconds: float
    wall_seconds: float
    peak_processes: int
    timeline: tuple[Sample, ...] = ()
    oom_kills: int = 0
    memory_source: str = ""  # where the peak came from: cgroup, rusage, sampled
    cpu_throttled_seconds: float = 0.0  # time its cpu_rate limit held it back (quota or duty cycle)
    memory_high_events: int = 0  # times it went past memory_high and was reclaimed, throttled (v2)
    stall_seconds: Mapping[str, float] = field(default_factory=dict)  # PSI "some" totals by resource (v2)
    # How far past its memory limit the tree could have gone unseen: 0 where a cgroup holds it,
    # the watch's resolution where the supervisor samples it (see runner._watch); None: no limit.
    memory_overshoot_bound_bytes: int | None = None
    # The largest resident set of one process of the tree (wait4's ru_maxrss of the child and
    # what it waited for: /usr/bin/time -v's figure), beside the cgroup's charge, which also
    # counts the page cache the tree caused. None where the child's rusage is unknown.
    peak_rss_bytes: int | None = None

    @property
    def cpu_seconds(self) -> float:
        """User + system CPU seconds."""
        return self.cpu_user_seconds + self.cpu_system_seconds

    @classmethod
    def zero(cls) -> Usage:
        """The usage of an execution that never started."""
        return cls(
            peak_memory_bytes=0,
            cpu_user_seconds=0.0,
            cpu_system_seconds=0.0,
            wall_seconds=0.0,
            peak_processes=0,
        )

    def __repr__(self) -> str:
        throttled = self.cpu_throttled_seconds
        return (
            f"Usage(peak={format_size(self.peak_memory_bytes)}, cpu={self.cpu_seconds:.3f}s "
            f"(user {self.cpu_user_seconds:.3f}s, sys {self.cpu_system_seconds:.3f}s), "
            f"wall={format_duration(self.wall_seconds)}, processes={self.peak_processes}, "
            + (f"throttled={format_duration(throttled)}, " if throttled else "")
            + f"samples={len(self.timeline)})"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskError:
    """Why an execution did not succeed, as facts: type, message, and the remote traceback."""

    type: str  # e.g. "builtins.ValueError", "OSError", "MemoryLimit"
    message: str
    traceback: str = ""
    pickled: bytes | None = field(default=None, repr=False)

    def exception(self) -> BaseException:
        """Rebuild the exception, with the remote traceback attached as ``__cause__``."""
        error: BaseException
        try:
            error = pickle.loads(self.pickled) if self.pickled else RemoteError(self.type, self.message)
        except Exception:  # the class is not importable here, or its __init__ is picky
            error = RemoteError(self.type, self.message)
        if self.traceback:
            error.__cause__ = RemoteTraceback(self.traceback)
        return error


@dataclass(frozen=True, kw_only=True, slots=True)
class Execution:
    """The record of one execution: how it ended, why, and what it used."""

    outcome: Outcome
    exit_code: int | None  # when it exited by itself
    signal: int | None  # when a signal ended it
    breached_limit: str | None  # the Limits field that ended it, if any
    error: TaskError | None
    usage: Usage
    limits: Limits
    enforcement: dict[str, str]  # limit name -> mechanism that enforced it
    unenforced: tuple[str, ...]  # limits this host could not enforce
    started_at: datetime
    ended_at: datetime
    pid: int | None
    result: Any = field(default=None, repr=False)
    stdout: bytes | None = field(default=None, repr=False)
    stderr: bytes | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()  # facts worth knowing that are not errors
    attempt: int = 1
    queued_at: datetime | None = None  # when a scheduler queued it (None for a direct run)
    wait_reason: str | None = None  # why admission held it back (None: it did not wait for resources)
    sandbox: dict[str, str] | None = None  # protection -> how it was applied (None: not sandboxed)

    @classmethod
    def unstarted(
        cls, limits: Limits, error: BaseException, *, outcome: Outcome = Outcome.FAILED
    ) -> Execution:
        """The record of an execution that could not be started (``error`` says why)."""
        now = datetime.now(UTC)
        kind = type(error)
        return cls(
            outcome=outcome,
            exit_code=None,
            signal=None,
            breached_limit=None,
            error=TaskError(
                type=f"{kind.__module__}.{kind.__qualname__}", message=f"could not start: {error}"
            ),
            usage=Usage.zero(),
            limits=limits,
            enforcement={},
            unenforced=(),
            started_at=now,
            ended_at=now,
            pid=None,
        )

    @property
    def ok(self) -> bool:
        """True when the execution succeeded."""
        return self.outcome is Outcome.SUCCEEDED

    def exception(self) -> BaseException | None:
        """The task's exception (with remote traceback as cause), or ``None``."""
        return self.error.exception() if self.error is not None else None

    def unwrap(self) -> Any:
        """Return the callable's result, or raise why there is none.

        A task's own exception is re-raised as its original type, its remote traceback as
        the cause; any other outcome raises ``ExecutionFailed``.
        """
        if self.ok:
            return self.result
        if self.error is not None and self.error.pickled is not None:
            raise self.error.exception()
        raise ExecutionFailed(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (the shape of ``governor run --json``)."""
        usage = self.usage
        return {
            "outcome": str(self.outcome),
            "exit_code": self.exit_code,
            "signal": self.signal,
            "breached_limit": self.breached_limit,
            "error": None if self.error is None else {"type": self.error.type, "message": self.error.message},
            "peak_memory_bytes": usage.peak_memory_bytes,
            "cpu_user_seconds": round(usage.cpu_user_seconds, 6),
            "cpu_system_seconds": round(usage.cpu_system_seconds, 6),
            "wall_seconds": round(usage.wall_seconds, 6),
            "peak_processes": usage.peak_processes,
            "oom_kills": usage.oom_kills,
            "cpu_throttled_seconds": round(usage.cpu_throttled_seconds, 6),
            "memory_high_events": usage.memory_high_events,
            "stall_seconds": {name: round(value, 6) for name, value in usage.stall_seconds.items()},
            "memory_overshoot_bound_bytes": usage.memory_overshoot_bound_bytes,
            "peak_rss_bytes": usage.peak_rss_bytes,
            "limits": self.limits.as_dict(),
            "enforcement": dict(self.enforcement),
            "unenforced": list(self.unenforced),
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat(),
            "pid": self.pid,
            "attempt": self.attempt,
            "queued_at": self.queued_at.isoformat() if self.queued_at else None,
            "wait_reason": self.wait_reason,
            "sandbox": None if self.sandbox is None else dict(self.sandbox),
            "notes": list(self.notes),
            "timeline": [asdict(sample) for sample in usage.timeline],
        }


class ExecutionFailed(Exception):
    """Raised by ``Execution.unwrap`` when an execution did not succeed with a result."""

    def __init__(self, execution: Execution) -> None:
        reason = execution.error.message if execution.error else ""
        limit = f" ({execution.breached_limit})" if execution.breached_limit else ""
        super().__init__(f"execution {execution.outcome}{limit}" + (f": {reason}" if reason else ""))
        self.execution = execution

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.execution,))
