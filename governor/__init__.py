"""The governor: run Python callables and commands in isolated, limited, measured processes.

    >>> import governor
    >>> record = governor.run(sum, [1, 2, 3], limits=governor.Limits(memory="256MiB"))
    >>> record.outcome, record.result
    (<Outcome.SUCCEEDED: 'succeeded'>, 6)

``Scheduler`` runs ``Task``s on triggers (``PeriodicTrigger``, ``EventTrigger``,
``OneTimeTrigger``) by priority with retries; ``GovernedExecutor`` is a
``concurrent.futures.Executor`` on the same machinery. Public names are re-exported here;
``runner`` and ``policies`` hold the machinery; ``governor.abc`` collects the extension points.

    governor/
      scheduling/   the loop and what it owns: tasks, triggers, queued and running work, admission
      backends/     where executions run: local (the default), Dask
      service/      governor serve: the store, the control socket, task files
      observe/      OpenTelemetry, and the facts every view states alike
      views/        reports and governor top
      cli/          the governor command
"""

from governor._executor import GovernedExecutor
from governor._run import run
from governor.abc import Clock, Trigger
from governor.observe import Telemetry
from governor.scheduling import (
    EventTrigger,
    FakeClock,
    OneTimeTrigger,
    PeriodicTrigger,
    Scheduler,
    SystemClock,
    Task,
)
from policies import Limits, RetryPolicy, Sandbox, format_duration, format_size, parse_duration, parse_size
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
    "Sandbox",
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
