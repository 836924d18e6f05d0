"""The supervisor's side of a sandboxed execution: who it runs as, where, with what, and the
record of how each protection was applied. The child's side is ``_child`` (namespaces, then
the identity, last of all its set-up).

Applied today, from a root supervisor: its own uid and gid (leased for the run, or the
configured user) without supplementary groups, capabilities or a way to gain any; its own
IPC, UTS and (unless ``network``) network namespaces; an environment reduced to an allow-list;
a private work directory as its home and cwd; no inherited descriptors; no core dumps.
A supervisor that cannot apply them (not root) fails the start, never runs it unconfined.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from policies import Sandbox, format_size
from runner._child import DENIED_SYSCALLS
from runner._errors import RunnerError
from runner._identity import Identity, resolve

PAYLOAD_FILE = "GOVERNOR_EVENT_PAYLOAD_FILE"  # an event payload's file (governor.scheduling._payloads)
WORK_ROOT = "/run/governor/work"  # private work directories (root supervisors only)


class SandboxUnavailable(RunnerError):
    """A protection that was asked for cannot be applied on this host: nothing was started."""


@dataclass
class Prepared:
    """One execution's sandbox, made ready in the supervisor before the fork."""

    sandbox: Sandbox
    identity: Identity
    workdir: str
    owns_workdir: bool
    env: dict[str, str]
    notes: list[str]

    def child_settings(self) -> dict[str, int | bool | str]:
        """What the child applies (plain values: the zygote unpickles no runner classes)."""
        return {
            "uid": self.identity.uid,
            "gid": self.identity.gid,
            "network": self.sandbox.network,
            "seccomp": self.sandbox.seccomp,
            "workdir": self.workdir,
            "tmp_size": int(self.sandbox.tmp_size),
            "keep": "\0".join(code_under_tmp()),
        }

    def report(self) -> dict[str, str]:
        """Each protection, and how it was applied: the record's ``sandbox``."""
        identity = self.identity
        who = "leased for this run" if identity.leased else "as configured"
        network = "the host's (network=True)" if self.sandbox.network else "own namespace, loopback only"
        workdir = "private, removed after the run" if self.owns_workdir else "given"
        return {
            "user": f"uid {identity.uid}, gid {identity.gid} ({who}), no supplementary groups",
            "privileges": "no capabilities (bounding set emptied), no_new_privs",
            "network": network,
            "ipc": "own namespace",
            "uts": "own namespace (hostname sandbox)",
            "environment": f"allow-list: {', '.join(sorted(self.env))}",
            "workdir": f"{self.workdir} ({workdir}; the only place it may write, but for /tmp)",
            "filesystem": "own mount namespace: read-only but for its work directory, the cgroup "
            "filesystem included",
            "tmp": f"private /tmp and /dev/shm of {format_size(int(self.sandbox.tmp_size))} each",
            "descriptors": "none inherited beyond stdin, stdout, stderr and the result pipe",
            "core_dumps": "off",
            "seccomp": (
                f"refuses {len(DENIED_SYSCALLS)} system calls with EPERM: {', '.join(DENIED_SYSCALLS)}"
                if self.sandbox.seccomp
                else "off (seccomp=False)"
            ),
        }

    def release(self) -> None:
        """The run is over (its tree is gone): return the uid, remove a private work directory."""
        self.identity.release()
        payload = self.env.get(PAYLOAD_FILE)
        if payload and not self.owns_workdir:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(payload)
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.owns_workdir = False


def prepare(sandbox: Sandbox, caller_env: Mapping[str, str]) -> Prepared:
    """Lease the identity, make the work directory, scrub the environment; raises
    ``SandboxUnavailable`` when this host cannot apply the protections."""
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "sandbox: this supervisor is not root, and running sandboxes through a user "
            "namespace is not built yet; run the supervisor as root"
        )
    try:
        identity = resolve(sandbox.user)
    except (OSError, ValueError) as error:
        raise SandboxUnavailable(f"sandbox: {error}") from None
    try:
        if sandbox.workdir is not None:
            workdir, owns = sandbox.workdir, False
            if not os.path.isdir(workdir):
                raise SandboxUnavailable(f"sandbox.workdir: no such directory {workdir!r}")
        else:
            # Not under /tmp: the sandbox mounts a /tmp of its own over it.
            os.makedirs(WORK_ROOT, mode=0o711, exist_ok=True)
            workdir, owns = tempfile.mkdtemp(prefix="sandbox-", dir=WORK_ROOT), True
        os.chown(workdir, identity.uid, identity.gid)
        if owns:
            os.chmod(workdir, 0o700)
    except OSError as error:
        identity.release()
        raise SandboxUnavailable(f"sandbox: cannot prepare its work directory: {error}") from None
    except SandboxUnavailable:
        identity.release()
        raise
    env = sandbox.environment(caller_env, home=workdir)
    payload = env.get(PAYLOAD_FILE)
    if payload:  # the supervisor's copy is owner-only: the task gets its own, in its workdir
        copy = os.path.join(workdir, ".governor-event-payload.json")
        try:
            shutil.copyfile(payload, copy)
            os.chown(copy, identity.uid, identity.gid)
        except OSError as error:
            identity.release()
            if owns:
                shutil.rmtree(workdir, ignore_errors=True)
            raise SandboxUnavailable(f"sandbox: cannot hand it its event payload: {error}") from None
        env[PAYLOAD_FILE] = copy
    notes = []
    stdlib = os.path.dirname(os.__file__)
    if not _others_can_read(stdlib):
        notes.append(
            f"the interpreter's standard library ({stdlib}) is not readable by the sandbox's user: "
            "a callable can use what the fork server has loaded, and import nothing else from it"
        )
    return Prepared(sandbox, identity, workdir, owns, env, notes)


def code_under_tmp() -> tuple[str, ...]:
    """The directories of this interpreter's import path under /tmp or /dev/shm, which the
    sandbox replaces: they are carried into its own, read-only, so its code still imports."""
    return _code_under_tmp(tuple(sys.path), os.getcwd() if "" in sys.path else "")


@functools.lru_cache(maxsize=8)  # the import path rarely changes: no stat per start
def _code_under_tmp(path: tuple[str, ...], cwd: str) -> tuple[str, ...]:
    found: list[str] = []
    for entry in sorted({os.path.realpath(item or cwd) for item in path}):
        under = any(entry == root or entry.startswith(root + "/") for root in ("/tmp", "/dev/shm"))
        if under and os.path.isdir(entry) and not any(entry.startswith(kept + "/") for kept in found):
            found.append(entry)
    return tuple(found)


@functools.lru_cache(maxsize=8)  # the interpreter's files do not move: once per process
def _others_can_read(directory: str) -> bool:
    """Whether a user with no relation to the files may list ``directory`` (every directory
    above it searchable by others, and itself readable)."""
    path = os.path.abspath(directory)
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
        while path != "/":
            if not os.stat(path).st_mode & stat.S_IXOTH:
                return False
            path = os.path.dirname(path)
    except OSError:
        return False
    return True
