"""The default backend: executions are children of this host's zygote fork server."""

from __future__ import annotations

from policies import Need
from runner import ExecutionHandle, ExecutionSpec, ForkServer


class LocalBackend:
    """Children of this process, forked by the zygote fork server."""

    def __init__(self, fork_server: ForkServer | None = None) -> None:
        self.fork_server = fork_server

    def start(self, spec: ExecutionSpec, *, need: Need | None, priority: int) -> ExecutionHandle:
        return ExecutionHandle(spec, fork_server=self.fork_server)

    def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return "LocalBackend()"
