"""The zygote: a small, single-threaded process that forks every execution's child.

Why our own fork server: the supervisor has threads and may hold gigabytes, so forking it is
unsafe and slow (31 ms from a 1 GiB process against 0.7 ms from a small one); the stock
``multiprocessing`` forkserver re-runs preparation in every child. This process imports only
the standard library and the modules asked to be preloaded, then loops:

    supervisor ──Request (header + fds via SCM_RIGHTS, then a pickled ChildSpec)──> zygote
    zygote ──imports what the child's payload needs and it lacks (once: later forks inherit it)
    zygote ──fork──> child (runs ``_child.child_main``; talks to the supervisor over its own pipe)
    zygote ──Reply (pid, errno, when it forked) + a pidfd, on the request's own reply socket──>
                                                                                    supervisor
    zygote ──on SIGCHLD: wait4 ──> Exited (status, rusage, when) on that same reply socket

(the wire formats are in ``_messages``). Each request carries its own reply socket, so the
supervisor never waits for a fork: it may send the next request at once and take each reply
when it is readable. The fork and reap times bound the child's life, so its wall time covers
the same span as the CPU time wait4 reports.

The zygote is a child subreaper, so descendants orphaned by a dying child are reparented to it
and reaped here rather than left as zombies. It exits when the control socket closes (the
supervisor is gone); its children then die too (their parent-death signal is SIGKILL).
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import select
import signal
import socket
import sys
import time

# Imported at module level, while the boot stub stands in for the ``runner`` package: an
# import from ``runner`` later would load the real package, psutil and all, into the zygote.
from runner import _child
from runner._messages import REPLY, REQUEST, STATUS
from runner._wire import drain

PR_SET_CHILD_SUBREAPER = 36
MAX_FDS = 8


def main() -> None:
    """Entry point: ``python -c 'from runner._zygote import main; main()' CONTROL_FD``."""
    control = socket.socket(fileno=int(sys.argv[1]))
    settings = pickle.loads(_recv_exact(control, REQUEST.unpack(_recv_exact(control, REQUEST.size))[0]))
    sys.path[:] = settings["sys_path"]
    os.chdir(settings["cwd"])
    _child.preload()
    for module in settings["preload"]:
        __import__(module)
    # Everything loaded so far lives as long as the zygote: keep the collector's hands off it,
    # so that a collection in a child does not write to (and so copy) every inherited page.
    gc.freeze()
    _child.prctl(PR_SET_CHILD_SUBREAPER, 1)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal ^C is the supervisor's to handle
    children: dict[int, socket.socket] = {}  # pid -> its reply socket, for its exit status
    control.sendall(b"R")  # ready
    while True:
        readable, _, _ = select.select([control.fileno(), wake_r], [], [])
        if wake_r in readable:
            drain(wake_r)
            _reap(children)
        if control.fileno() in readable:
            header = socket.recv_fds(control, REQUEST.size, MAX_FDS)
            data, fds = header[0], header[1]
            if not data:
                return
            if len(data) < REQUEST.size:
                data += _recv_exact(control, REQUEST.size - len(data))
            size, _count = REQUEST.unpack(data)
            spec = _child.ChildSpec.__new__(_child.ChildSpec)
            spec.__setstate__(pickle.loads(_recv_exact(control, size)))
            _fork(control, spec, fds, children, (wake_r, wake_w))


def _fork(
    control: socket.socket,
    spec: object,
    fds: list[int],
    children: dict[int, socket.socket],
    wake: tuple[int, int],
) -> None:
    result_w, stdin, stdout, stderr, reply_fd = fds
    reply = socket.socket(fileno=reply_fd)
    try:
        _import(spec.imports)  # type: ignore[attr-defined]
        forked_at = time.monotonic()
        pid = os.fork()
    except OSError as error:
        for fd in fds[:-1]:
            os.close(fd)
        with contextlib.suppress(OSError), reply:  # a supervisor that gave up reads nothing
            reply.sendall(REPLY.pack(0, error.errno or 0, 0.0))
        return
    if pid == 0:
        signal.set_wakeup_fd(-1)
        control.close()
        reply.close()
        for child in children.values():
            child.close()
        for fd in wake:
            os.close(fd)
        _child.child_main(spec, result_w, (stdin, stdout, stderr), os.getppid())  # type: ignore[arg-type]
        os._exit(0)
    for fd in (result_w, stdin, stdout, stderr):
        os.close(fd)
    children[pid] = reply  # the child's exit status follows on it, when it is reaped
    pidfd = os.pidfd_open(pid)
    try:
        # A supervisor that gave up on this child closed its end: the child finds its own
        # pipes closed and ends; the zygote lives on.
        with contextlib.suppress(OSError):
            socket.send_fds(reply, [REPLY.pack(pid, 0, forked_at)], [pidfd])
    finally:
        os.close(pidfd)


def _import(modules: tuple[str, ...]) -> None:
    """Import what a child's payload needs (cloudpickle, for a function sent by value) once,
    here, so that this child and every later one inherit it instead of importing it each."""
    missing = [name for name in modules if name not in sys.modules]
    if not missing:
        return
    for name in missing:
        try:
            __import__(name)
        except Exception:  # the zygote must live on: the child's own import fails the same way
            continue  # and its record says why, as the task's failure
    gc.freeze()  # as at start: keep the collector off what lives as long as the zygote


def _reap(children: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply = children.pop(pid, None)
        if reply is None:  # an orphan adopted as subreaper: reaping it is all we owe it
            continue
        record = STATUS.pack(status, usage.ru_utime, usage.ru_stime, usage.ru_maxrss, time.monotonic())
        # One small message into a socket buffer nobody else writes to: it never blocks. An
        # error means the supervisor gave up on this execution; nobody is left to tell.
        with contextlib.suppress(OSError), reply:
            reply.send(record)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray()
    while len(buffer) < size:
        chunk = sock.recv(min(size - len(buffer), 1 << 20))
        if not chunk:
            raise SystemExit(0)  # the supervisor closed the control socket
        buffer += chunk
    return bytes(buffer)
