"""One isolated, governed execution: start a child, confine it, measure it, end it, say why.

Public names only, each imported on first use (``policies._lazy``); the modules behind them
are private. ``run`` is the blocking entry point;
``ExecutionHandle`` is the non-blocking one that a supervisor loop drives.
"""

from typing import TYPE_CHECKING

from policies._lazy import exports, homes

if TYPE_CHECKING:
    from runner._cgroup_v2 import executions_cgroup
    from runner._errors import (
        EnforcementUnavailable,
        ForkServerError,
        RemoteError,
        RemoteTraceback,
        RunnerError,
    )
    from runner._execution import ExecutionHandle, new_execution_id
    from runner._forkserver import ForkServer, default_fork_server
    from runner._handle import Handle
    from runner._leftovers import kill_leftovers, sweep_orphan_cgroups
    from runner._records import (
        Enforcement,
        Execution,
        ExecutionFailed,
        Mechanism,
        Outcome,
        Sample,
        TaskError,
        Usage,
    )
    from runner._run import adrive, drive, run, run_spec
    from runner._spec import ExecutionSpec

_HOMES = homes(
    {
        "runner._cgroup_v2": "executions_cgroup",
        "runner._errors": "EnforcementUnavailable ForkServerError RemoteError RemoteTraceback RunnerError",
        "runner._execution": "ExecutionHandle new_execution_id",
        "runner._forkserver": "ForkServer default_fork_server",
        "runner._handle": "Handle",
        "runner._leftovers": "kill_leftovers sweep_orphan_cgroups",
        "runner._records": "Enforcement Execution ExecutionFailed Mechanism Outcome Sample TaskError Usage",
        "runner._run": "adrive drive run run_spec",
        "runner._spec": "ExecutionSpec",
    }
)
__getattr__, __dir__ = exports(__name__, _HOMES)

__all__ = [
    "Enforcement",
    "EnforcementUnavailable",
    "Execution",
    "ExecutionFailed",
    "ExecutionHandle",
    "ExecutionSpec",
    "ForkServer",
    "ForkServerError",
    "Handle",
    "Mechanism",
    "Outcome",
    "RemoteError",
    "RemoteTraceback",
    "RunnerError",
    "Sample",
    "TaskError",
    "Usage",
    "adrive",
    "default_fork_server",
    "drive",
    "executions_cgroup",
    "kill_leftovers",
    "new_execution_id",
    "run",
    "run_spec",
    "sweep_orphan_cgroups",
]
