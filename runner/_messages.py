"""What crosses the process boundary, as named types (pebble's ``pool`` messages are the model).

    supervisor ──Request (header + fds, then a ChildSpec's state)──> zygote
    supervisor <──Reply (pid, errno, when it forked) + a pidfd──── zygote
    supervisor <──one Message, pickled in a frame───────────────── child, over its result pipe
    supervisor <──Exited (wait status, rusage, when it was reaped)── zygote, on the status pipe

A child sends exactly one message: ``Ok`` (the call returned), ``Raised`` (it raised),
``ExecFailed`` (an argv could not be executed) or ``SetupFailed`` (confining it failed before
the task ran). The supervisor makes ``Unreadable`` itself when a frame will not unpickle.

The zygote and every child import this module, so it uses the standard library only. On the
wire a message is a plain tuple, its tag and its fields (``wire()``; ``from_wire`` reads it):
pickling one of these classes by reference would make the child import the whole ``runner``
package to find it. Times are ``time.monotonic()`` seconds, one clock for every process on
the host.
"""

from __future__ import annotations

import struct

# supervisor -> zygote: payload length, number of fds sent with the header.
REQUEST = struct.Struct("<QI")
# zygote -> supervisor: pid (0 on failure), errno, when the fork returned.
REPLY = struct.Struct("<iid")
# zygote -> supervisor, on the child's status pipe: wait status, user s, system s, maxrss KiB,
# when the child was reaped.
STATUS = struct.Struct("<iddqd")


# Exit statuses the child uses for its own failures, before the task runs.
EXIT_SETUP_FAILED = 70
EXIT_EXEC_NOT_FOUND = 127
EXIT_EXEC_FAILED = 126


class ChildSpec:
    """What the zygote's child needs to know; pickled into each fork request (kept small)."""

    __slots__ = ("argv", "cgroup_procs", "cwd", "env", "imports", "payload", "rlimits", "sandbox")

    def __init__(
        self,
        *,
        argv: list[str] | None,
        payload: bytes | None,
        env: dict[bytes, bytes | None] | None = None,
        cwd: str | None,
        rlimits: list[tuple[int, int, int]],
        cgroup_procs: list[str],
        imports: tuple[str, ...] = (),
        sandbox: dict[str, int | bool | str] | None = None,
    ) -> None:
        self.argv = argv
        self.payload = payload
        self.env = env or {}  # changes to the zygote's environment (None: unset); the fork server fills it
        self.cwd = cwd
        self.rlimits = rlimits
        self.cgroup_procs = cgroup_procs
        self.imports = imports  # modules unpickling the payload needs: the zygote loads them once
        self.sandbox = sandbox  # {"uid", "gid", "network"}: who it runs as, and in what namespaces

    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


class Ok:
    """The call returned ``value``."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def wire(self) -> tuple[object, ...]:
        return ("ok", self.value)


class Raised:
    """The call raised. ``pickled`` is the exception itself when it pickles; ``memory_error``
    says it was a ``MemoryError`` (an RLIMIT_DATA limit refusing an allocation looks so)."""

    __slots__ = ("memory_error", "message", "pickled", "traceback", "type")

    def __init__(
        self, pickled: bytes | None, type: str, message: str, traceback: str, memory_error: bool
    ) -> None:
        self.pickled = pickled
        self.type = type  # "module.QualifiedName" of the exception's class
        self.message = message
        self.traceback = traceback
        self.memory_error = memory_error

    def wire(self) -> tuple[object, ...]:
        return ("raised", self.pickled, self.type, self.message, self.traceback, self.memory_error)


class ExecFailed:
    """``execvpe`` failed: the command was not found (errno 2) or could not be executed."""

    __slots__ = ("errno", "text")

    def __init__(self, errno: int, text: str) -> None:
        self.errno = errno
        self.text = text

    def wire(self) -> tuple[object, ...]:
        return ("exec_failed", self.errno, self.text)


class SetupFailed:
    """The child could not be confined (cgroup join, rlimits, cwd); the task never ran."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def wire(self) -> tuple[object, ...]:
        return ("setup_failed", self.text)


class Unreadable:
    """The child's frame did not unpickle (made by the supervisor, never sent)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


Message = Ok | Raised | ExecFailed | SetupFailed | Unreadable

_TAGS: dict[object, type[Ok | Raised | ExecFailed | SetupFailed]] = {
    "ok": Ok,
    "raised": Raised,
    "exec_failed": ExecFailed,
    "setup_failed": SetupFailed,
}


def from_wire(data: object) -> Message:
    """The message a child sent as ``data`` (an ``Unreadable`` if it is not one)."""
    if isinstance(data, tuple) and data and data[0] in _TAGS:
        try:
            return _TAGS[data[0]](*data[1:])
        except TypeError as error:
            return Unreadable(f"a malformed {data[0]!r} message: {error}")
    return Unreadable(f"the child sent a {type(data).__qualname__}, not a message")


class Exited:
    """How the child's process ended, from the zygote that reaped it."""

    __slots__ = ("ended_at", "maxrss_kib", "status", "system", "user")

    def __init__(self, status: int, user: float, system: float, maxrss_kib: int, ended_at: float) -> None:
        self.status = status  # as waitpid returns it
        self.user = user  # CPU seconds of the child itself (wait4's rusage)
        self.system = system
        self.maxrss_kib = maxrss_kib  # its true peak resident set
        self.ended_at = ended_at  # monotonic: when it was reaped

    @classmethod
    def unpack(cls, data: bytes) -> Exited:
        """Read one ``STATUS`` record."""
        return cls(*STATUS.unpack(data))
