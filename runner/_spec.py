"""``ExecutionSpec``: what to run, under which limits, with which environment and output."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from policies import Limits
from runner._records import Enforcement

if TYPE_CHECKING:
    from policies import Sandbox

DEFAULT_OUTPUT_CAP = 1 << 20


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecutionSpec:
    """One execution, fully described. Validated when built.

    ``target`` is a callable (run with ``args``/``kwargs`` in the child) or an argv list.
    ``env`` replaces the child's environment (``None``: the supervisor's, copied at start).
    ``capture`` keeps up to ``output_cap`` bytes of stdout and stderr each; without it the
    child writes to the supervisor's own stdout/stderr. ``stdin`` is an fd to read from, or
    ``None`` for /dev/null. ``kill_grace`` is the time between SIGTERM and SIGKILL.
    ``on_output(stream, chunk)`` sees every captured chunk as it arrives, beyond the cap too
    (``stream`` is ``"stdout"`` or ``"stderr"``).
    """

    target: Callable[..., Any] | Sequence[str]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    enforcement: Enforcement | str = Enforcement.AUTO
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    capture: bool = True
    output_cap: int = DEFAULT_OUTPUT_CAP
    stdin: int | None = None
    sandbox: Sandbox | bool | None = None
    sample_interval: float = 0.1
    kill_grace: float = 2.0
    stop_signal: int = signal.SIGTERM  # the polite one, sent kill_grace before SIGKILL
    on_output: Callable[[str, bytes], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        target = self.target
        if isinstance(target, str | bytes):
            raise ValueError(f"target: give an argv list, not a string: {target!r} (try {[target]!r})")
        if not callable(target):
            if not isinstance(target, Sequence) or isinstance(target, bytes):
                raise ValueError(f"target: expected a callable or an argv list, got {target!r}")
            argv = list(target)
            if not argv:
                raise ValueError("target: argv must not be empty")
            if not all(isinstance(part, str | os.PathLike) for part in argv):
                raise ValueError(f"target: every argv item must be a string, got {argv!r}")
            if self.args or self.kwargs:
                raise ValueError("args/kwargs: only a callable target takes arguments; put them in argv")
            argv = [os.fspath(part) for part in argv]
            if not argv[0]:  # execve would refuse it in the child, as a traceback
                raise ValueError("target: argv[0], the program to run, is an empty string")
            for index, part in enumerate(argv):
                if "\0" in part:  # execve could not pass it: refuse now, not in the child
                    raise ValueError(f"target: argv[{index}] contains a NUL byte: {part!r}")
            object.__setattr__(self, "target", argv)
        if self.sandbox is None or self.sandbox is False:
            object.__setattr__(self, "sandbox", None)
        else:  # here: a run without a sandbox need not load its class
            from policies import Sandbox

            object.__setattr__(self, "sandbox", Sandbox.coerce(self.sandbox))
        if not isinstance(self.limits, Limits):
            raise ValueError(f"limits: expected a Limits, got {self.limits!r}")
        try:
            object.__setattr__(self, "enforcement", Enforcement(self.enforcement))
        except ValueError:
            choices = ", ".join(mode.value for mode in Enforcement)
            raise ValueError(f"enforcement: expected one of {choices}, got {self.enforcement!r}") from None
        for name in ("sample_interval", "kill_grace"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or math.isnan(value) or value <= 0:
                raise ValueError(f"{name}: must be a positive number of seconds, got {value!r}")
        try:
            object.__setattr__(self, "stop_signal", signal.Signals(self.stop_signal))
        except (ValueError, TypeError):
            raise ValueError(f"stop_signal: not a signal: {self.stop_signal!r}") from None
        if self.stop_signal in (signal.SIGSTOP, signal.SIGCONT):
            raise ValueError(f"stop_signal: {signal.Signals(self.stop_signal).name} cannot end a task")
        if isinstance(self.output_cap, bool) or not isinstance(self.output_cap, int) or self.output_cap < 0:
            raise ValueError(f"output_cap: must be a whole number of bytes >= 0, got {self.output_cap!r}")
        if self.env is not None:
            for key, value in self.env.items():
                if not isinstance(key, str) or not isinstance(value, str) or "=" in key or not key:
                    raise ValueError(f"env: invalid variable {key!r}={value!r}")
                if "\0" in key or "\0" in value:
                    raise ValueError(f"env: {key!r} contains a NUL byte")
        # Whether it is open is asked when a run starts: a spec outlives its descriptors.
        stdin = self.stdin
        if stdin is not None and (isinstance(stdin, bool) or not isinstance(stdin, int) or stdin < 0):
            raise ValueError(f"stdin: expected a file descriptor (an int >= 0) or None: {stdin!r}")
        if self.cwd is not None and "\0" in os.fspath(self.cwd):
            raise ValueError(f"cwd: contains a NUL byte: {self.cwd!r}")

    @property
    def is_command(self) -> bool:
        """True for an argv command, False for a callable."""
        return isinstance(self.target, list)

    @property
    def sandboxed(self) -> Sandbox | None:
        """The sandbox it runs in, or ``None``: ``sandbox`` as building the spec coerced it."""
        return None if isinstance(self.sandbox, bool) else self.sandbox
