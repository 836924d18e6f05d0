"""Estimates learned from the store: what past executions measured, fed to a ``UsageEstimator``.

The server seeds its scheduler's estimator this way at start (so estimates survive restarts),
and reports show the same estimate beside the measured peaks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from policies import UsageEstimator

# Runs that measured nothing worth learning from: never ran to an end of their own.
_NOT_MEASURED = (None, "lost", "cancelled", "evicted")


def learn_from_history(
    rows: Iterable[dict[str, Any]], estimator: UsageEstimator | None = None
) -> UsageEstimator:
    """Feed ``rows`` (``Store.history()`` entries, oldest first) to ``estimator`` (a new one
    if ``None``) and return it."""
    estimator = estimator or UsageEstimator()
    for row in rows:
        if row.get("outcome") in _NOT_MEASURED or row.get("pid") is None:
            continue  # never ran (could not start), or ended unmeasured
        if row.get("peak_memory_bytes") is None:
            continue
        estimator.observe(
            row["task"],
            peak_memory_bytes=row["peak_memory_bytes"],
            cpu_seconds=(row.get("cpu_user_seconds") or 0.0) + (row.get("cpu_system_seconds") or 0.0),
            wall_seconds=row.get("wall_seconds") or 0.0,
            memory_exceeded=row["outcome"] == "memory_exceeded",
            memory_limit=(row.get("limits") or {}).get("memory"),
        )
    return estimator
