"""Facts about a finished execution that every view states the same way: why enforcement
ended it (the kill reason) and whether its usage was measured.

Reports, ``governor top``, metrics and logs all say these in this one vocabulary. The inputs
are plain values (an outcome's name, a breached limit's name), so a live ``Execution`` and a
row read back from the store answer alike.

    kill reasons   memory_exceeded, cpu_time_exceeded, timed_out, evicted, cancelled, and
                   "<limit>_exceeded" for a minor limit (pids, file_size) that failed a run
"""

from __future__ import annotations

# Outcomes by which the governor itself ended an execution.
KILL_OUTCOMES = ("memory_exceeded", "cpu_time_exceeded", "timed_out", "evicted", "cancelled")

# Ended without a measurement of their own: usage is unknown.
_UNMEASURED = (None, "lost")


def kill_reason(outcome: str | None, breached_limit: str | None) -> str | None:
    """Why enforcement ended an execution, or ``None`` if it ended by itself."""
    if outcome in KILL_OUTCOMES:
        return outcome
    if outcome != "succeeded" and breached_limit:
        return f"{breached_limit}_exceeded"
    return None


def measured(
    outcome: str | None, pid: int | None, peak_memory_bytes: int | None, wall_seconds: float | None
) -> bool:
    """Whether an execution ended with a measurement of its own usage: it ran (it has a pid,
    or took time), and it was not lost with its supervisor."""
    if outcome in _UNMEASURED or peak_memory_bytes is None:
        return False
    # An execution that could not start has a zero usage and no pid: nothing was measured.
    return pid is not None or bool(wall_seconds)
