"""The zygote: a small, single-threaded process that forks every execution's child.

Why our own fork server: the supervisor has threads and may hold gigabytes, so forking it is
unsafe and slow (31 ms from a 1 GiB process against 0.7 ms from a small one); the stock
``multiprocessing`` forkserver re-runs preparation in every child. This process imports only
the standard library and the modules asked to be preloaded (the command line, small and with
one thread at its start, forks it from itself instead and saves its boot), then loops:

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
and reaped here rather than left as zombies. When the control socket closes (the supervisor is
gone, by exit or by ``kill -9``), it kills every execution's whole tree before it exits: each
execution's cgroups (setsid'd and double-forked members included) and every process reparented
to it, until none is left, then removes those cgroups. Nothing outlives the supervisor, without
waiting for a restart to clean up (its direct children would die anyway: their parent-death
signal is SIGKILL; their descendants would not).
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
from runner._messages import REPLY, REQUEST, STATUS, ChildSpec
from runner._wire import drain

PR_SET_CHILD_SUBREAPER = 36
PRUNE_AT = 64  # reaped children's cgroups kept in mind before those already removed are dropped
MAX_FDS = 8


def main(control_fd: int | None = None) -> None:
    """Entry point: ``python -c 'from runner._zygote import main; main()' CONTROL_FD``, or
    ``main(fd)`` in a fork (``ForkServer.start(fork_here=True)``)."""
    control = socket.socket(fileno=int(sys.argv[1]) if control_fd is None else control_fd)
    settings = pickle.loads(_recv_exact(control, REQUEST.unpack(_recv_exact(control, REQUEST.size))[0]))
    sys.path[:] = settings["sys_path"]
    os.chdir(settings["cwd"])
    _child.preload()
    global _own_pid_namespace
    _own_pid_namespace = _open_own_pid_namespace()
    for module in settings["preload"]:
        __import__(module)
    # Everything loaded so far lives as long as the zygote: keep the collector's hands off it,
    # so that a collection in a child does not write to (and so copy) every inherited page.
    gc.freeze()
    _child.prctl(PR_SET_CHILD_SUBREAPER, 1)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    # What a terminal or a service manager sends the whole process group (^C, a hangup,
    # ^\, systemctl stop) is the supervisor's to handle: killed by it here, this process would
    # leave every tree it forked behind. It ends when the supervisor does, as its socket closes.
    for signum in _child.HELD_ACROSS_FORK:
        signal.signal(signum, signal.SIG_IGN)
    children: dict[int, socket.socket] = {}  # pid -> its reply socket, for its exit status
    statuses: dict[int, int] = {}  # pid -> the read end its init reports the task's status on
    # pid -> its cgroup directories; once reaped (pid 0), until the supervisor removes them:
    # its setsid'd descendants may still be in them.
    cgroups: dict[int, list[str]] = {0: []}
    try:
        control.sendall(b"R")  # ready
    except (BrokenPipeError, ConnectionResetError):
        return  # the supervisor left before we were up (a mistyped option): nothing to serve
    try:
        while True:
            readable, _, _ = select.select([control.fileno(), wake_r], [], [])
            if wake_r in readable:
                drain(wake_r)
                _reap(children, cgroups, statuses)
            if control.fileno() in readable:
                try:
                    data, fds, _flags, _address = socket.recv_fds(control, REQUEST.size, MAX_FDS)
                except ConnectionResetError:  # closed with our "R" unread: gone, as at EOF
                    return
                if not data:
                    return
                if len(data) < REQUEST.size:
                    data += _recv_exact(control, REQUEST.size - len(data))
                size, _count = REQUEST.unpack(data)
                spec = ChildSpec.__new__(ChildSpec)
                spec.__setstate__(pickle.loads(_recv_exact(control, size)))
                pid = _fork(control, spec, fds, children, (wake_r, wake_w), statuses)
                if pid:
                    cgroups[pid] = [os.path.dirname(procs) for procs in spec.cgroup_procs]
    finally:
        signal.set_wakeup_fd(-1)
        kill_everything([path for paths in cgroups.values() for path in paths])


def _fork(
    control: socket.socket,
    spec: object,
    fds: list[int],
    children: dict[int, socket.socket],
    wake: tuple[int, int],
    statuses: dict[int, int],
) -> int:
    """Fork the child for ``spec``; its pid, or 0 if the fork failed (the reply says why).

    A sandboxed child of a root zygote is forked straight into a PID namespace of its own, as
    its PID 1 (its init): one fork fewer than its making the namespace itself. An init cannot
    die of a signal it sends itself, so it reports how its task ended on a pipe instead, and
    that status stands for the child's own."""
    result_w, stdin, stdout, stderr, reply_fd = fds
    reply = socket.socket(fileno=reply_fd)
    status_r = status_w = -1
    try:
        _import(spec.imports)  # type: ignore[attr-defined]
        if _own_pid_namespace >= 0 and spec.sandbox is not None and not spec.sandbox["userns"]:  # type: ignore[attr-defined]
            status_r, status_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            _unshare_pid()
        forked_at = time.monotonic()
        _child.hold_stop_signals()  # _child.HELD_ACROSS_FORK says why
        pid = -1  # if the fork fails
        try:
            pid = os.fork()
        finally:
            if pid:  # this process, forked or not: here they are ignored again (the child unblocks its own)
                _child.release_stop_signals()
                if status_r >= 0:
                    _restore_pid_namespace()
    except OSError as error:
        for fd in (*fds[:-1], status_r, status_w):
            if fd >= 0:
                os.close(fd)
        with contextlib.suppress(OSError), reply:  # a supervisor that gave up reads nothing
            reply.sendall(REPLY.pack(0, error.errno or 0, 0.0))
        return 0
    if pid == 0:
        signal.set_wakeup_fd(-1)
        control.close()
        reply.close()
        for child in children.values():
            child.close()
        for fd in (*wake, *statuses.values(), status_r):
            if fd >= 0:
                os.close(fd)
        zygote = 0 if status_w >= 0 else os.getppid()  # from inside its PID namespace: none
        _child.child_main(spec, result_w, (stdin, stdout, stderr), zygote, status_w)  # type: ignore[arg-type]
        os._exit(0)
    for fd in (result_w, stdin, stdout, stderr, status_w):
        if fd >= 0:
            os.close(fd)
    if status_r >= 0:
        statuses[pid] = status_r
    children[pid] = reply  # the child's exit status follows on it, when it is reaped
    pidfd = os.pidfd_open(pid)
    try:
        # A supervisor that gave up on this child closed its end: the child finds its own
        # pipes closed and ends; the zygote lives on.
        with contextlib.suppress(OSError):
            socket.send_fds(reply, [REPLY.pack(pid, 0, forked_at)], [pidfd])
    finally:
        os.close(pidfd)
    return pid


def _open_own_pid_namespace() -> int:
    """The zygote's own PID namespace, to return to after forking into a new one; -1 where it
    may not make one (not root: a sandboxed child then makes its own, in a user namespace)."""
    if os.geteuid() != 0:
        return -1
    try:
        return os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


_own_pid_namespace = -1  # opened in main()


def _unshare_pid() -> None:
    """The next child forked is the first (PID 1) of a new PID namespace."""
    if hasattr(os, "unshare"):  # 3.12+
        os.unshare(_child.CLONE_NEWPID)
    else:
        _child.call_libc("unshare", _child.CLONE_NEWPID)


def _restore_pid_namespace() -> None:
    """Children forked from now on are in the zygote's own PID namespace again. Were that
    refused, every later child would be forked into a namespace whose init is gone: the
    zygote ends instead (its supervisor starts another)."""
    try:
        if hasattr(os, "setns"):  # 3.12+
            os.setns(_own_pid_namespace, _child.CLONE_NEWPID)
        else:
            _child.call_libc("setns", _own_pid_namespace, _child.CLONE_NEWPID)
    except OSError as error:
        raise SystemExit(f"the zygote could not return to its own PID namespace: {error}") from None


def _import(modules: tuple[str, ...]) -> None:
    """Import what a child's payload needs (cloudpickle, for a function sent by value) once,
    here, so that this child and every later one inherit it instead of importing it each."""
    missing = [name for name in modules if name not in sys.modules]
    for name in missing:
        try:
            __import__(name)
        except Exception:  # the zygote must live on: the child's own import fails the same way
            continue  # and its record says why, as the task's failure
    if "pyseccomp" in modules:
        _child.compile_seccomp()  # once: a sandbox's filter, for every child after
    if missing:
        gc.freeze()  # as at start: keep the collector off what lives as long as the zygote


def _reap(
    children: dict[int, socket.socket], cgroups: dict[int, list[str]], statuses: dict[int, int]
) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        status_r = statuses.pop(pid, -1)
        if status_r >= 0:  # its init: the status it reported is its task's (none: it was killed)
            try:
                reported = os.read(status_r, 4)
            except BlockingIOError:
                reported = b""
            finally:
                os.close(status_r)
            if len(reported) == 4:
                status = int.from_bytes(reported, "little")
        reply = children.pop(pid, None)
        ended = cgroups.pop(pid, None)
        if ended:
            pending = cgroups[0]
            if len(pending) >= PRUNE_AT:  # not a stat per reap: the supervisor removes them soon
                pending[:] = [path for path in pending if os.path.isdir(path)]
            pending.extend(ended)
        if reply is None:  # an orphan adopted as subreaper: reaping it is all we owe it
            continue
        record = STATUS.pack(status, usage.ru_utime, usage.ru_stime, usage.ru_maxrss, time.monotonic())
        # One small message into a socket buffer nobody else writes to: it never blocks. An
        # error means the supervisor gave up on this execution; nobody is left to tell.
        with contextlib.suppress(OSError), reply:
            reply.send(record)


def kill_everything(cgroups: list[str], give_up: float = 10.0) -> None:
    """SIGKILL every process in ``cgroups`` and every descendant of this process, until none
    is left (or ``give_up`` seconds pass: D-state processes), then remove the cgroups.

    A process killed here may leave children; as a subreaper this process adopts them, and the
    next pass kills them, so a tree that forks while it dies still ends. Standard library only:
    this runs in the zygote."""
    me = os.getpid()
    end = time.monotonic() + give_up
    while time.monotonic() < end:
        found = _cgroup_members(cgroups) | _children_of(me)
        found.discard(me)
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        _reap_all()
        if not found:
            break
        time.sleep(0.001)
    for path in sorted(cgroups, key=len, reverse=True):
        for _ in range(100):  # an emptied cgroup can stay busy for a moment
            try:
                os.rmdir(path)
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.002)
                continue
            break


def _cgroup_members(cgroups: list[str]) -> set[int]:
    found: set[int] = set()
    for path in cgroups:
        # cgroup.kill: cgroup v2 on Linux 5.14+ kills every member at once.
        with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.kill"), "w") as kill:
            kill.write("1")
        with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.procs")) as procs:
            found.update(int(line) for line in procs if line.strip())
    return found


def _children_of(parent: int) -> set[int]:
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != b"Z":
            found.add(int(entry))
    return found


def _reap_all() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray()
    while len(buffer) < size:
        chunk = sock.recv(min(size - len(buffer), 1 << 20))
        if not chunk:
            raise SystemExit(0)  # the supervisor closed the control socket
        buffer += chunk
    return bytes(buffer)
