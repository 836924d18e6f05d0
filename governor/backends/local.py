"""The default backend: executions are children of this host's zygote fork server."""

from __future__ import annotations

import os

from policies import Need
from runner import ExecutionHandle, ExecutionSpec, ForkServer, default_fork_server

_TICKS = os.sysconf("SC_CLK_TCK")


class LocalBackend:
    """Children of this process, forked by the zygote fork server."""

    def __init__(self, fork_server: ForkServer | None = None) -> None:
        self.fork_server = fork_server

    def start(
        self, spec: ExecutionSpec, *, need: Need | None, priority: int, run_id: str | None = None
    ) -> ExecutionHandle:
        return ExecutionHandle(spec, fork_server=self.fork_server, run_id=run_id)

    def close(self) -> None:
        return None

    def cpu_seconds(self) -> float:
        """CPU seconds the fork server has spent forking so far (0 before it has started)."""
        server = self.fork_server or default_fork_server()
        pid = server.pid
        if pid is None:
            return 0.0
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            return 0.0
        fields = data[data.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def __repr__(self) -> str:
        return "LocalBackend()"
