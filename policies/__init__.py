"""Pure decisions of the governor: no processes, no threads, no I/O, no clock reads.

This package knows what a limit is and how to read one; later it also decides retries,
priority, admission and estimates. Everything here is deterministic and unit-tested alone.
"""

from typing import TYPE_CHECKING

from policies._lazy import exports, homes

if TYPE_CHECKING:
    from policies._admission import (
        NO_FREE_SLOT,
        WAIT_REASON_LIMIT,
        AdmissionPass,
        AdmissionPolicy,
        Budget,
        Decision,
        Need,
        QueuedWork,
        RunningWork,
        bounded_reason,
    )
    from policies._estimate import Estimate, UsageEstimator
    from policies._eviction import RunningUsage, choose_evictions
    from policies._limits import Limits
    from policies._pressure import Pressure, PressureGate
    from policies._priority import ReadyQueue
    from policies._retry import RetryPolicy
    from policies._sandbox import Sandbox
    from policies._units import format_duration, format_size, parse_duration, parse_size

_HOMES = homes(
    {
        "policies._admission": "NO_FREE_SLOT WAIT_REASON_LIMIT AdmissionPass AdmissionPolicy Budget Decision "
        "Need QueuedWork RunningWork bounded_reason",
        "policies._estimate": "Estimate UsageEstimator",
        "policies._eviction": "RunningUsage choose_evictions",
        "policies._limits": "Limits",
        "policies._pressure": "Pressure PressureGate",
        "policies._priority": "ReadyQueue",
        "policies._retry": "RetryPolicy",
        "policies._sandbox": "Sandbox",
        "policies._units": "format_duration format_size parse_duration parse_size",
    }
)
__getattr__, __dir__ = exports(__name__, _HOMES)

__all__ = [
    "NO_FREE_SLOT",
    "WAIT_REASON_LIMIT",
    "AdmissionPass",
    "AdmissionPolicy",
    "Budget",
    "Decision",
    "Estimate",
    "Limits",
    "Need",
    "Pressure",
    "PressureGate",
    "QueuedWork",
    "ReadyQueue",
    "RetryPolicy",
    "RunningUsage",
    "RunningWork",
    "Sandbox",
    "UsageEstimator",
    "bounded_reason",
    "choose_evictions",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
]
