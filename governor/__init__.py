"""The governor: run Python callables and commands in isolated, limited, measured processes.

    >>> import governor
    >>> record = governor.run(sum, [1, 2, 3], limits=governor.Limits(memory="256MiB"))
    >>> record.outcome, record.result
    (<Outcome.SUCCEEDED: 'succeeded'>, 6)

Public names are re-exported here; ``runner`` and ``policies`` hold the machinery.
"""

from policies import Limits, format_duration, format_size, parse_duration, parse_size
from runner import (
    Enforcement,
    EnforcementUnavailable,
    Execution,
    ExecutionFailed,
    ExecutionSpec,
    ForkServer,
    Mechanism,
    Outcome,
    RemoteError,
    RemoteTraceback,
    Sample,
    TaskError,
    Usage,
    run,
)

__all__ = [
    "Enforcement",
    "EnforcementUnavailable",
    "Execution",
    "ExecutionFailed",
    "ExecutionSpec",
    "ForkServer",
    "Limits",
    "Mechanism",
    "Outcome",
    "RemoteError",
    "RemoteTraceback",
    "Sample",
    "TaskError",
    "Usage",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
    "run",
]
