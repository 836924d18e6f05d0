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

from __future__ import annotations

from typing import TYPE_CHECKING

from policies._lazy import exports, homes

__version__ = "0.2.0"

if TYPE_CHECKING:  # what a type checker and an IDE see; at run time each name loads on first use
    from governor._executor import GovernedExecutor
    from governor._future import GovernedFuture
    from governor._governed import governed
    from governor._run import arun, run
    from governor.abc import Clock, ExecutionListener, Trigger
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
    from policies import (
        Limits,
        RetryPolicy,
        Sandbox,
        format_duration,
        format_size,
        parse_duration,
        parse_size,
    )
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

# Where each public name lives. Importing ``governor`` imports none of them: the command line
# (``governor run``) must not pay for the scheduler, the service, OpenTelemetry and croniter.
_HOMES = homes(
    {
        "governor._executor": "GovernedExecutor",
        "governor._future": "GovernedFuture",
        "governor._governed": "governed",
        "governor._run": "arun run",
        "governor.abc": "Clock ExecutionListener Trigger",
        "governor.observe": "Telemetry",
        "governor.scheduling": "EventTrigger FakeClock OneTimeTrigger PeriodicTrigger Scheduler SystemClock "
        "Task",
        "policies": "Limits RetryPolicy Sandbox format_duration format_size parse_duration parse_size",
        "runner": "Enforcement EnforcementUnavailable Execution ExecutionFailed ExecutionSpec ForkServer "
        "Mechanism Outcome RemoteError RemoteTraceback Sample TaskError Usage",
    }
)
__getattr__, __dir__ = exports(__name__, _HOMES)


__all__ = [
    "Clock",
    "Enforcement",
    "EnforcementUnavailable",
    "EventTrigger",
    "Execution",
    "ExecutionFailed",
    "ExecutionListener",
    "ExecutionSpec",
    "FakeClock",
    "ForkServer",
    "GovernedExecutor",
    "GovernedFuture",
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
    "arun",
    "format_duration",
    "format_size",
    "governed",
    "parse_duration",
    "parse_size",
    "run",
]
