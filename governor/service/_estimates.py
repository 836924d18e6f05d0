"""Estimates learned from the store: what past executions measured, fed to a ``UsageEstimator``.

The server seeds its scheduler's estimator this way at start (so estimates survive restarts),
and reports show the same estimate beside the measured peaks. The estimator itself decides
what each outcome teaches, exactly as it does for a run that has just ended.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from policies import UsageEstimator


def learn_from_history(
    rows: Iterable[dict[str, Any]], estimator: UsageEstimator | None = None
) -> UsageEstimator:
    """Feed ``rows`` (``Store.history()`` entries, oldest first) to ``estimator`` (a new one
    if ``None``) and return it."""
    estimator = estimator or UsageEstimator()
    for row in rows:
        if row.get("outcome") is None or row.get("pid") is None or row.get("peak_memory_bytes") is None:
            continue  # in flight, never ran (could not start), or ended unmeasured
        limits = row.get("limits") or {}
        estimator.observe(
            row["task"],
            peak_memory_bytes=row["peak_memory_bytes"],
            cpu_seconds=(row.get("cpu_user_seconds") or 0.0) + (row.get("cpu_system_seconds") or 0.0),
            wall_seconds=row.get("wall_seconds") or 0.0,
            outcome=row["outcome"],
            memory_limit=limits.get("memory"),
            cpu_limit=limits.get("cpu_rate"),
        )
    return estimator
