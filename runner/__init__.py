"""One isolated, governed execution: start a child, confine it, measure it, end it, say why.

Public names only; the modules behind them are private. ``run`` is the blocking entry point;
``ExecutionHandle`` is the non-blocking one that a supervisor loop drives.
"""

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
