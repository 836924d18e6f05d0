"""The supervisor's side of a sandboxed execution: who it runs as, where, with what, and the
record of how each protection was applied. The child's side is ``_child`` (namespaces, then
the identity, last of all its set-up).

A root supervisor gives the task a uid and gid of its own (leased for the run, or the
configured user) without supplementary groups; any other supervisor keeps its own uid for
the task, inside a user namespace that owns the task's other namespaces. Either way: no
capabilities and no way to gain any; its own PID, IPC, UTS, mount and (unless ``network``)
network namespaces; an environment reduced to an allow-list; a private work directory as
its home and cwd; no inherited descriptors; no core dumps. A host that forbids any of it
fails the start, saying what forbids it; nothing runs unconfined.
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
from runner._owners import registry

PAYLOAD_FILE = "GOVERNOR_EVENT_PAYLOAD_FILE"  # an event payload's file (governor.scheduling._payloads)


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
    user_namespace: bool = False  # a non-root supervisor: the namespaces come with a user namespace
    covered: tuple[str, ...] = ()  # what it may not see (beyond the host's /tmp and /dev/shm)
    carried: tuple[str, ...] = ()  # code under what is covered, carried back in read-only
    refusal_hint: str = ""  # why the kernel may refuse a user namespace, for the child's error

    def child_settings(self) -> dict[str, int | bool | str]:
        """What the child applies (plain values: the zygote unpickles no runner classes)."""
        return {
            "uid": self.identity.uid,
            "gid": self.identity.gid,
            "network": self.sandbox.network,
            "seccomp": self.sandbox.seccomp,
            "workdir": self.workdir,
            "tmp_size": int(self.sandbox.tmp_size),
            "keep": "\0".join(self.carried),
            "writable": "\0".join(self.sandbox.writable),
            "hide": "\0".join(self.covered),
            "userns": self.user_namespace,
            "hint": self.refusal_hint,
        }

    def report(self) -> dict[str, str]:
        """Each protection, and how it was applied: the record's ``sandbox``."""
        identity = self.identity
        if self.user_namespace:
            user = (
                f"uid {identity.uid}, gid {identity.gid} (the supervisor's own, mapped in a user "
                "namespace of its own: a supervisor that is not root cannot lease one); its "
                "supplementary groups stay (an unprivileged user namespace cannot drop them)"
            )
        else:
            who = "leased for this run" if identity.leased else "as configured"
            user = f"uid {identity.uid}, gid {identity.gid} ({who}), no supplementary groups"
        network = "the host's (network=True)" if self.sandbox.network else "own namespace, loopback only"
        workdir = "private, removed after the run" if self.owns_workdir else "given"
        writable = ", ".join((self.workdir, *self.sandbox.writable))
        filesystem = (
            f"own mount namespace: read-only but for {writable} and its /tmp, the cgroup filesystem included"
        )
        if self.covered:
            filesystem += f"; hidden: {', '.join(self.covered)}"
        if self.carried:
            filesystem += f"; code carried in read-only: {', '.join(self.carried)}"
        privileges = "no capabilities (bounding set emptied), no_new_privs"
        return {
            "user": user,
            "privileges": privileges + (" (in its own user namespace)" if self.user_namespace else ""),
            "network": network,
            "pid": "own PID namespace (the task is PID 2 under a minimal init), its own read-only /proc",
            "ipc": "own namespace",
            "uts": "own namespace (hostname sandbox)",
            "environment": f"allow-list: {', '.join(sorted(self.env))}",
            "workdir": f"{self.workdir} ({workdir})",
            "filesystem": filesystem,
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


def prepare(sandbox: Sandbox, caller_env: Mapping[str, str], *, command: bool = False) -> Prepared:
    """Lease the identity, make the work directory, scrub the environment; raises
    ``SandboxUnavailable`` when this host cannot apply the protections.

    A root supervisor gives each run a uid of its own. Any other gets the same namespaces
    through a user namespace, where the task keeps the supervisor's uid: so it also covers
    what that uid may read and a task has no business reading (the home directory, the
    runtime directory), and carries back in, read-only, the code it runs. Its notes say what
    the task will miss (for a ``command``, the standard library's reach does not matter)."""
    user_namespace = os.geteuid() != 0
    hint = ""
    if user_namespace:
        if sandbox.user is not None:
            raise SandboxUnavailable(
                f"sandbox.user: running as another user ({sandbox.user!r}) needs a root supervisor"
            )
        refusal, hint = user_namespace_policy()
        if refusal:
            raise SandboxUnavailable(f"sandbox: this host forbids unprivileged user namespaces: {refusal}")
        identity = Identity(os.getuid(), os.getgid(), leased=False)
    else:
        try:
            identity = resolve(sandbox.user)
        except (OSError, ValueError) as error:
            raise SandboxUnavailable(f"sandbox: {error}") from None
    try:
        for path in sandbox.writable:
            if not os.path.exists(path):
                raise SandboxUnavailable(f"sandbox.writable: no such file or directory {path!r}")
        if sandbox.workdir is not None:
            workdir, owns = sandbox.workdir, False
            if not os.path.isdir(workdir):
                raise SandboxUnavailable(f"sandbox.workdir: no such directory {workdir!r}")
        else:
            root = work_root()
            os.makedirs(root, mode=0o711, exist_ok=True)
            workdir, owns = tempfile.mkdtemp(prefix="sandbox-", dir=root), True
        if not user_namespace:
            os.chown(workdir, identity.uid, identity.gid)
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
            if not user_namespace:
                os.chown(copy, identity.uid, identity.gid)
        except OSError as error:
            identity.release()
            if owns:
                shutil.rmtree(workdir, ignore_errors=True)
            raise SandboxUnavailable(f"sandbox: cannot hand it its event payload: {error}") from None
        env[PAYLOAD_FILE] = copy
    notes = []
    stdlib = os.path.dirname(os.__file__)
    if not command and not user_namespace and not _others_can_read(stdlib):
        notes.append(
            f"the interpreter's standard library ({stdlib}) is not readable by the sandbox's user: "
            "a callable can use what the fork server has loaded, and import nothing else from it"
        )
    covered = _covered(sandbox, user_namespace)
    carried, left_out = code_under(("/tmp", "/dev/shm", *covered))
    notes.extend(
        f"{entry} is on the import path or PATH but the sandbox covers it: nothing there is "
        "carried in, so a module or command there is not found"
        for entry in left_out
    )
    return Prepared(sandbox, identity, workdir, owns, env, notes, user_namespace, covered, carried, hint)


def work_root() -> str:
    """Where private work directories are made: beside the owner registry (root's is
    /run/governor/work: not under /tmp, over which the sandbox mounts a /tmp of its own;
    anyone else's is carried into the sandbox)."""
    return os.path.join(os.path.dirname(registry()), "work")


def _covered(sandbox: Sandbox, user_namespace: bool) -> tuple[str, ...]:
    """What the task may not see: ``hide``, and for a task that keeps the supervisor's uid,
    that uid's home and runtime directories. Its work directory, and its writable paths, are
    carried back in where they lie under one of them."""
    paths = list(sandbox.hide)
    if user_namespace:
        home = os.path.expanduser("~")
        runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        for path in (home, runtime):
            if os.path.isabs(path) and path != "/" and os.path.isdir(path):
                paths.append(os.path.realpath(path))
    return tuple(path for path in dict.fromkeys(paths) if os.path.lexists(path))


@functools.lru_cache(maxsize=1)
def user_namespace_policy() -> tuple[str, str]:
    """Whether this host lets an unprivileged process create a user namespace: the sysctl
    that forbids it (or ""), and a hint naming what may still refuse it at run time."""

    def read(path: str) -> str | None:
        try:
            with open(path) as setting:
                return setting.read().strip()
        except OSError:
            return None

    if read("/proc/sys/user/max_user_namespaces") == "0":
        return "the sysctl user.max_user_namespaces is 0", ""
    if read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return "the sysctl kernel.unprivileged_userns_clone is 0", ""
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return "", (
            "the sysctl kernel.apparmor_restrict_unprivileged_userns is 1: AppArmor denies "
            "capabilities in user namespaces to processes without a profile that allows them"
        )
    return "", "a seccomp policy (a container runtime's) or an LSM may forbid user namespaces"


def code_under(covered: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The directories of this interpreter (its prefixes, its import path) and of ``PATH``
    beneath what the sandbox covers, which are carried into it, read-only, so its code still
    imports and its commands are still found; and those that are a covered directory itself
    (a script run from /tmp), which are not: carrying them would uncover it all."""
    path = (sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path, *os.environ.get("PATH", "").split(":"))
    return _code_under(path, os.getcwd() if "" in sys.path else "", covered)


@functools.lru_cache(maxsize=8)  # the import path rarely changes: no stat per start
def _code_under(
    path: tuple[str, ...], cwd: str, covered: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    roots = tuple(os.path.realpath(root) for root in covered)
    found: list[str] = []
    left_out: list[str] = []
    for entry in sorted({os.path.realpath(item or cwd) for item in path if item or cwd}):
        if entry in roots:
            left_out.append(entry)
        elif (
            any(entry.startswith(root + "/") for root in roots)
            and os.path.isdir(entry)
            and not any(entry.startswith(kept + "/") for kept in found)
        ):
            found.append(entry)
    return tuple(found), tuple(left_out)


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
