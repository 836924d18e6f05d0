"""``Sandbox``: what stands between an untrusted task and the machine, validated when built.

``sandbox=True`` anywhere an execution is described means ``Sandbox()``: every protection this
version applies. The runner applies them in the child before anything of the task runs, and
the execution's record says, protection by protection, how each was applied; one that was
asked for and cannot be applied on this host fails the start instead of degrading.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from policies._units import parse_size

# Always passed (the child's identity and its event payload), whatever the allow-list says.
_ALWAYS = ("GOVERNOR_EXECUTION_ID", "GOVERNOR_EVENT_PAYLOAD", "GOVERNOR_EVENT_PAYLOAD_FILE")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def _under(path: str, roots: tuple[str, ...]) -> bool:
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + "/") for root in roots)


@dataclass(frozen=True, kw_only=True, slots=True)
class Sandbox:
    """How an untrusted execution is confined; the defaults are the strictest.

    - ``user``: the user it runs as (a name or a uid); ``None``, the default, takes an unused
      uid of a reserved range for each execution (like systemd's ``DynamicUser=``).
    - ``network``: ``False`` (the default) gives it a network namespace with only loopback.
    - ``env``: variables it gets beyond the allow-list (``PATH``, ``LANG``, ``HOME`` = its work
      directory); ``pass_env``: names passed through from the caller's environment.
    - ``workdir``: its working directory, writable by it; ``None`` makes a fresh private one
      that is removed after the run.
    - ``seccomp``: ``True`` (the default) refuses the system calls a job has no business
      making (``ptrace``, ``mount``, ``unshare``, ``setns``, ``bpf``, ``keyctl``, ...).
    - ``tmp_size``: the size of its private ``/tmp`` and ``/dev/shm`` (each; default 64 MiB).
      The rest of the filesystem is read-only to it, but for its work directory.
    - ``writable``: more paths it may write (their mounts stay writable; the files' owners and
      modes still apply, so a leased uid writes only where others may).
    - ``hide``: paths it may not see at all: a directory is covered by an empty one, a file
      (or socket) by an empty file.

    Invalid values raise ``ValueError`` naming the field and the value.
    """

    user: int | str | None = None
    network: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    pass_env: tuple[str, ...] = ()
    workdir: str | None = None
    seccomp: bool = True
    tmp_size: int | str = "64MiB"
    writable: tuple[str, ...] = ()
    hide: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        user = self.user
        if isinstance(user, bool) or not (user is None or isinstance(user, int | str)):
            raise ValueError(f"user: expected a user name or a uid, got {user!r}")
        if isinstance(user, int) and not 0 < user < (1 << 32) - 1:
            raise ValueError(f"user: a uid is between 1 and 4294967294 (never root), got {user!r}")
        if isinstance(user, str) and (not user or "\0" in user or user == "root"):
            raise ValueError(f"user: expected a user name other than root, got {user!r}")
        for flag in ("network", "seccomp"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag}: expected true or false, got {getattr(self, flag)!r}")
        if not isinstance(self.env, Mapping):
            raise ValueError(f"env: expected a mapping of names to strings, got {self.env!r}")
        for name, value in self.env.items():
            if (
                not (isinstance(name, str) and _NAME.fullmatch(name))
                or not isinstance(value, str)
                or "\0" in value
            ):
                raise ValueError(f"env: invalid variable {name!r}={value!r}")
        object.__setattr__(self, "env", dict(self.env))
        if isinstance(self.pass_env, str) or not all(
            isinstance(name, str) and _NAME.fullmatch(name) for name in self.pass_env
        ):
            raise ValueError(f"pass_env: expected a list of variable names, got {self.pass_env!r}")
        object.__setattr__(self, "pass_env", tuple(self.pass_env))
        if self.workdir is not None and (
            not isinstance(self.workdir, str) or not os.path.isabs(self.workdir)
        ):
            raise ValueError(f"workdir: expected an absolute path, got {self.workdir!r}")
        if self.workdir is not None and _under(self.workdir, ("/tmp", "/dev/shm")):
            raise ValueError(f"workdir: {self.workdir!r} is under /tmp or /dev/shm, which it gets afresh")
        for name in ("writable", "hide"):
            paths = getattr(self, name)
            if isinstance(paths, str) or not all(
                isinstance(path, str) and os.path.isabs(path) and "\0" not in path for path in paths
            ):
                raise ValueError(f"{name}: expected a list of absolute paths, got {paths!r}")
            object.__setattr__(self, name, tuple(os.path.normpath(path) for path in paths))
        for path in self.writable:
            if path == "/" or _under(path, ("/tmp", "/dev/shm", "/proc", "/sys")):
                raise ValueError(f"writable: {path!r} is /, or under /tmp, /dev/shm, /proc or /sys")
        for path in self.hide:
            if path == "/":
                raise ValueError("hide: '/' would hide everything")
        size = parse_size(self.tmp_size, field="tmp_size")
        if size < 1 << 20:
            raise ValueError(f"tmp_size: at least 1 MiB, got {self.tmp_size!r}")
        object.__setattr__(self, "tmp_size", size)

    @classmethod
    def coerce(cls, value: Any, *, where: str = "sandbox") -> Sandbox | None:
        """``True`` → ``Sandbox()``; ``False``/``None`` → no sandbox; a mapping (a TOML table)
        → its settings; a ``Sandbox`` → itself."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, Sandbox):
            return value
        if isinstance(value, Mapping):
            return cls.from_mapping(value, where=where)
        raise ValueError(f"{where}: expected true, false or a table of settings, got {value!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str = "sandbox") -> Sandbox:
        """Build from a mapping such as a TOML table; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
        try:
            return cls(**values)  # TOML's lists become tuples in __post_init__
        except ValueError as error:
            raise ValueError(f"{where}.{error}") from None

    def environment(self, caller: Mapping[str, str], home: str) -> dict[str, str]:
        """The child's whole environment: the allow-list, what is passed through, ``env``."""
        scrubbed = {"PATH": caller.get("PATH", _DEFAULT_PATH), "HOME": home}
        for name in ("LANG", *_ALWAYS, *self.pass_env):
            if name in caller:
                scrubbed[name] = caller[name]
        return {**scrubbed, **self.env}
