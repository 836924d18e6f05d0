"""The governor: run Python callables and commands in isolated, limited, measured processes.

    >>> import governor
    >>> record = governor.run(sum, [1, 2, 3], limits=governor.Limits(memory="256MiB"))
    >>> record.outcome, record.result
    (<Outcome.SUCCEEDED: 'succeeded'>, 6)

``Scheduler`` runs ``Task``s on triggers (``PeriodicTrigger``, ``EventTrigger``,
``OneTimeTrigger``) by priority with retries; ``GovernedExecutor`` is a
``concurrent.futures.Executor`` on the same machinery. Public names are re-exported here;
``runner`` and ``policies`` hold the machinery.
"""

from governor._clock import Clock, FakeClock, SystemClock
from governor._executor import GovernedExecutor
from governor._run import run
from governor._scheduler import Scheduler
from governor._task import Task
from governor._telemetry import Telemetry
from governor._triggers import EventTrigger, OneTimeTrigger, PeriodicTrigger, Trigger
from policies import Limits, RetryPolicy, format_duration, format_size, parse_duration, parse_size
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
)

__all__ = [
    "Clock",
    "Enforcement",
    "EnforcementUnavailable",
    "EventTrigger",
    "Execution",
    "ExecutionFailed",
    "ExecutionSpec",
    "FakeClock",
    "ForkServer",
    "GovernedExecutor",
    "Limits",
    "Mechanism",
    "OneTimeTrigger",
    "Outcome",
    "PeriodicTrigger",
    "RemoteError",
    "RemoteTraceback",
    "RetryPolicy",
    "Sample",
    "Scheduler",
    "SystemClock",
    "Task",
    "TaskError",
    "Telemetry",
    "Trigger",
    "Usage",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
    "run",
]
