"""Who a sandboxed execution runs as: a uid leased for its run, or the one it was given.

By default every sandboxed execution gets a uid of its own from systemd's ``DynamicUser=``
range (61184-65519), with the same number as its gid: no other process on the host has it,
so the task can signal, ptrace or read nothing but its own processes, and owns nothing but
its work directory. A lease is an exclusive ``flock`` on ``<registry>/uids/<uid>``, held by
the supervisor while the execution runs, so governors on one host never hand out the same
uid at once; uids that ``/etc/passwd`` names are skipped.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import random
from dataclasses import dataclass

from runner._owners import registry

FIRST, LAST = 61184, 65519


@dataclass
class Identity:
    """The uid and gid an execution runs as; ``lease`` is the lock fd of a leased uid."""

    uid: int
    gid: int
    leased: bool
    lease: int | None = None

    def release(self) -> None:
        if self.lease is not None:
            os.close(self.lease)
            self.lease = None


def resolve(user: int | str | None) -> Identity:
    """The identity for ``Sandbox.user``: a leased fresh uid (None), or the named user's."""
    if user is None:
        return _lease()
    try:
        entry = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
    except KeyError:
        if isinstance(user, int):
            return Identity(user, user, leased=False)
        raise ValueError(f"sandbox.user: no such user {user!r}") from None
    if entry.pw_uid == 0:
        raise ValueError(f"sandbox.user: {user!r} is root")
    return Identity(entry.pw_uid, entry.pw_gid, leased=False)


def _lease() -> Identity:
    directory = os.path.join(os.path.dirname(registry()), "uids")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    start = random.randrange(FIRST, LAST + 1)
    for offset in range(LAST - FIRST + 1):
        uid = FIRST + (start - FIRST + offset) % (LAST - FIRST + 1)
        if _named(uid):
            continue
        fd = os.open(os.path.join(directory, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return Identity(uid, uid, leased=True, lease=fd)
    raise OSError(f"every uid from {FIRST} to {LAST} is leased to a running sandboxed execution")


def _named(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
