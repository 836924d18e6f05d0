"""Exceptions of the runner.

    RunnerError                 base of everything the runner raises itself
    ├── ForkServerError         the zygote could not be started or died during a spawn
    ├── EnforcementUnavailable  an enforcement mechanism was asked for that this host lacks
    └── RemoteError             a task's exception that could not be rebuilt in the supervisor

``RemoteTraceback`` is not raised: it is attached as ``__cause__`` of a task's exception
re-raised in the supervisor, carrying the traceback text from the child.
"""

from __future__ import annotations


class RunnerError(Exception):
    """Base class of the runner's own errors."""


class ForkServerError(RunnerError):
    """The fork server (zygote) failed to start or to fork."""


class EnforcementUnavailable(RunnerError):
    """An enforcement mechanism was requested that this host cannot provide."""

    def __init__(self, mechanism: str, reason: str) -> None:
        super().__init__(f"{mechanism} enforcement is unavailable here: {reason}")
        self.mechanism = mechanism
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.mechanism, self.reason))


class RemoteError(RunnerError):
    """A task raised an exception that could not be pickled or rebuilt here."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message))


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in a child, shown as the cause."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'
