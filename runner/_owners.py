"""Who made an execution: a random owner token per supervisor process, and proof of its death.

Every execution id (and so its cgroups' names and its processes' ``GOVERNOR_EXECUTION_ID``
cookie) ends in its supervisor's token: ``<pid>-<serial>-<token>``. A pid proves nothing across
pid namespaces (containers that share a cgroup tree) or after reuse; the token does. Before its
first execution, a supervisor registers the token: it creates ``<registry>/<token>`` and holds an
exclusive ``flock`` on it for its lifetime. The kernel drops that lock when the process dies, by
any means, so::

    registry file present, lock taken by someone   the owner lives: leave its work alone
    registry file present, lock free               the owner died: its leftovers may go
    no registry file here                          not provably ours (another namespace,
                                                   another registry): never touched

The registry is ``/run/governor/owners`` for root, else ``$XDG_RUNTIME_DIR/governor/owners``
(or ``/tmp/governor-<uid>/owners``): a tmpfs, emptied at boot along with every cgroup.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os

_claimed: tuple[int, str, int | None] | None = None  # (pid, token, lock fd) of this process


def registry() -> str:
    """The directory of owner tokens for this user."""
    if os.geteuid() == 0:
        return "/run/governor/owners"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "governor", "owners")
    return f"/tmp/governor-{os.geteuid()}/owners"


def owner_token() -> str:
    """This process's token, registered (and locked) on first use; a forked copy draws its own.

    A registry that cannot be written (read-only, full) costs only the sweep: this process's
    leftovers are then never cleaned by others (its zygote still kills them when it dies)."""
    global _claimed
    if _claimed is not None and _claimed[0] == os.getpid():
        return _claimed[1]
    token = os.urandom(8).hex()  # not secrets: its import (hashlib, random) costs every run 4 ms
    fd: int | None = None
    try:
        os.makedirs(registry(), mode=0o700, exist_ok=True)
        # Locked under a hidden name, then renamed: no sweeper ever sees it unlocked.
        hidden = os.path.join(registry(), f".{token}")
        fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())  # for people reading the registry
        os.rename(hidden, os.path.join(registry(), token))
    except OSError as error:
        import logging  # here: only this rare path needs it, and every run would load it

        logging.getLogger("governor.owners").warning(
            "could not register owner %s in %s: %s", token, registry(), error
        )
        if fd is not None:
            os.close(fd)
            fd = None
    _claimed = (os.getpid(), token, fd)
    atexit.register(_release, os.getpid(), token)
    return token


def token_of(name: str) -> str:
    """The owner token an execution id or cgroup name ends in ("" if it has none)."""
    parts = name.rsplit("-", 2)
    return parts[-1] if len(parts) == 3 else ""


def owner_is_dead(token: str) -> bool:
    """Proved dead: its registry file is here and nobody holds its lock (see the module)."""
    if not token or "/" in token or token.startswith("."):
        return False
    try:
        fd = os.open(os.path.join(registry(), token), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def registered_owners() -> list[str]:
    """Every token in the registry, live owners' and dead ones'."""
    try:
        return [name for name in os.listdir(registry()) if not name.startswith(".")]
    except OSError:
        return []


def forget_owner(token: str) -> None:
    """Remove a dead owner's registry file once its leftovers are gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(registry(), token))


def _release(pid: int, token: str) -> None:
    if os.getpid() != pid or _claimed is None or _claimed[1] != token:
        return  # a forked copy inherits the atexit hook, not the claim
    forget_owner(token)
    if _claimed[2] is not None:
        os.close(_claimed[2])
