"""Attacks of a hostile task, as callables for tests/test_sandbox.py: each returns what it
got, or the error that stopped it.

This module imports only what every child already has (the zygote loaded it): a sandboxed
child runs as a user who may not be able to read the interpreter's files (this machine's
Python lives under a 0700 /root), so it can import nothing new.
"""

from __future__ import annotations

import ctypes
import os
import socket


def read_secret() -> str | None:
    return os.environ.get("FAKE_SECRET")


def read_path(path: str) -> str:
    """A file's text, or a directory's entries joined by commas."""
    try:
        if os.path.isdir(path):
            return ",".join(sorted(os.listdir(path)))
        with open(path) as file:
            return file.read()
    except OSError as error:
        return error.strerror or "refused"


def connect_to(port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        try:
            client.connect(("127.0.0.1", port))  # an address: no name lookup, no new import
        except OSError as error:
            return f"refused: {error.strerror}"
    return "connected"


def signal_trace_and_read(supervisor: int) -> dict[str, str]:
    found = {}
    try:
        os.kill(supervisor, 0)  # as SIGSTOP would, without stopping the test run
        found["signal"] = "allowed"
    except OSError as error:
        found["signal"] = error.strerror or "refused"
    libc = ctypes.CDLL(None, use_errno=True)
    ptrace_seize = 0x4206
    if libc.ptrace(ptrace_seize, supervisor, 0, 0) == 0:
        found["ptrace"] = "seized"
        libc.ptrace(17, supervisor, 0, 0)  # PTRACE_DETACH
    else:
        found["ptrace"] = os.strerror(ctypes.get_errno())
    try:
        with open(f"/proc/{supervisor}/environ", "rb") as environ:
            found["environ"] = "read" if environ.read(1) is not None else "empty"
    except OSError as error:
        found["environ"] = error.strerror or "refused"
    return found


def open_for_writing(path: str) -> str:
    try:
        with open(path, "a"):
            return "opened"
    except OSError as error:
        return error.strerror or "refused"


def open_store_and_socket(db: str, control: str) -> dict[str, str]:
    found = {"store": open_for_writing(db)}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        try:
            client.connect(control)
            found["socket"] = "connected"
        except OSError as error:
            found["socket"] = error.strerror or "refused"
    return found


def allocate(size: int) -> int:
    held = bytearray(size)
    held[::4096] = b"x" * len(held[::4096])
    return len(held)


def make_user_namespace() -> str:
    """A fresh user namespace: the door to root-in-a-namespace kernel attack surface."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) == 0:  # CLONE_NEWUSER
        return "created"
    return os.strerror(ctypes.get_errno())


def fill(path: str, megabytes: int) -> str:
    """Write ``megabytes`` MiB into ``path``; how far it got. The file is removed after."""
    written = 0
    try:
        with open(path, "wb") as out:
            for _ in range(megabytes):
                out.write(b"x" * (1 << 20))
                out.flush()
                written += 1
        return f"wrote {written} MiB"
    except OSError as error:
        return f"stopped at {written} MiB: {error.strerror}"
    finally:
        if os.path.exists(path):
            os.unlink(path)
