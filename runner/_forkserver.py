"""The supervisor's handle on the zygote (see ``_zygote`` for the process itself)."""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import socket
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from runner._errors import ForkServerError
from runner._messages import REPLY, REQUEST, ChildSpec

if TYPE_CHECKING:
    import subprocess

# The zygote must stay small: importing ``runner`` would run its __init__ and pull in psutil,
# cloudpickle and the rest. A stand-in package object lets it import only the leaf modules it
# needs; the stand-in is dropped again so that a task importing ``runner`` gets the real one.
_BOOT = """
import sys, types
stub = types.ModuleType("runner")
stub.__path__ = [sys.argv[2] + "/runner"]
sys.modules["runner"] = stub
import runner._zygote
del sys.modules["runner"]
runner._zygote.main()
sys.stderr.flush()
import os
os._exit(0)  # its tree is gone: the interpreter's teardown would only delay our exit
"""


class ForkServer:
    """A running zygote. ``submit`` is thread-safe; the zygote restarts if it died.

    ``preload`` names modules the zygote imports once so that children start with them loaded
    (the task's own module, numpy, ...): a child pays nothing for what its zygote imported.
    """

    def __init__(self, preload: Iterable[str] = ()) -> None:
        self.preload = tuple(preload)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | _Forked | None = None
        self._control: socket.socket | None = None
        self._owner = os.getpid()
        self._base: dict[bytes, bytes] = {}  # the environment the zygote started with
        self._changes: tuple[dict[bytes, bytes], dict[bytes, bytes | None]] | None = None
        self._starting: socket.socket | None = None  # spawned, its ready byte not yet read

    @property
    def pid(self) -> int | None:
        """The zygote's pid, or ``None`` before the first spawn and after ``close``."""
        return self._process.pid if self._process is not None else None

    def submit(
        self,
        spec: ChildSpec,
        result_w: int,
        stdio: tuple[int, int, int],
        *,
        env: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> socket.socket:
        """Ask for a child for ``spec`` without waiting for the fork: returns the (non-blocking)
        socket its reply arrives on (``reply`` reads it once readable), and then, once the
        child has been reaped, its exit status (``Exited``). The caller owns the socket
        (closing it gives up on the child, which then finds its pipes closed).

        The child's environment is ``env`` (``None``: this process's, as it is now) plus
        ``extra_env``; it travels as its difference from the zygote's own environment, which
        is usually none at all."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = [result_w, *stdio, theirs.fileno()]
        try:
            with self._lock:
                control = self._ensure_running()
                spec.env = self._environment(env, extra_env or {})
                # Plain builtins only: unpickling a runner class would import the whole
                # package into the zygote (and so into every child).
                payload = pickle.dumps(spec.__getstate__(), protocol=pickle.HIGHEST_PROTOCOL)
                try:
                    header = REQUEST.pack(len(payload), len(fds))
                    sent = socket.send_fds(control, [header, payload], fds)  # one syscall, mostly
                    if sent < len(header) + len(payload):
                        control.sendall((header + payload)[sent:])
                except OSError as error:
                    self._discard()
                    raise ForkServerError(f"the fork server failed during a spawn: {error}") from error
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return ours

    @staticmethod
    def reply(answer: socket.socket) -> tuple[int, int, float] | None:
        """``(pid, pidfd, forked_at)`` once the zygote has forked the child (``forked_at``: the
        monotonic time its life began; the caller owns the pidfd); ``None`` while it has not.
        ``ForkServerError`` if the fork failed or the zygote died first."""
        try:
            data, received, _flags, _addr = socket.recv_fds(answer, REPLY.size, 1)
        except BlockingIOError:
            return None
        except OSError as error:
            raise ForkServerError(f"the fork server did not answer: {error}") from error
        if len(data) < REPLY.size:
            for fd in received:
                os.close(fd)
            raise ForkServerError("the fork server died before it forked the child")
        pid, errno, forked_at = REPLY.unpack(data)
        if pid == 0:
            raise ForkServerError(f"fork failed in the fork server: {os.strerror(errno)}")
        return pid, received[0], forked_at

    def _environment(
        self, env: Mapping[str, str] | None, extra: Mapping[str, str]
    ) -> dict[bytes, bytes | None]:
        """What to change in the zygote's environment (``None``: unset) to make ``env``."""
        if env is None:
            current = os.environ._data  # type: ignore[attr-defined]  # bytes -> bytes, as environb sees it
            if current == self._base:
                changes: dict[bytes, bytes | None] = {}
            elif self._changes is not None and self._changes[0] == current:
                changes = dict(self._changes[1])  # changed since the zygote started, as before
            else:
                changes = _difference(self._base, current)
                self._changes = (dict(current), dict(changes))
        else:
            changes = _difference(self._base, {os.fsencode(k): os.fsencode(v) for k, v in env.items()})
        for key, value in extra.items():
            changes[os.fsencode(key)] = os.fsencode(value)
        return changes

    def close(self) -> None:
        """Stop the zygote (its running children die with it)."""
        with self._lock:
            self._discard()

    def start(self, *, fork_here: bool = False) -> None:
        """Start the zygote without waiting for it to be ready: a caller with imports of its
        own to do (the command line) overlaps them with the zygote's start. The first request
        waits for it.

        ``fork_here`` makes the zygote a fork of this process rather than a fresh interpreter,
        which saves its boot (30 ms of CPU, that a busy host makes the command line wait for).
        Only for a small process with no thread but this one, at its start (the command line
        before it loads the rest): the zygote keeps what this process has loaded. A restart
        after that is a fresh interpreter, as always."""
        with self._lock:
            if not self._running():
                self._spawn(fork_here=fork_here)

    def _running(self) -> bool:
        if self._owner != os.getpid():
            # We are a fork of the process that started the zygote: its control socket is
            # the parent's to use. Drop our copy (the parent's stays open) and start our own.
            if self._control is not None:
                self._control.close()
            self._control, self._process, self._owner, self._starting = None, None, os.getpid(), None
        return self._process is not None and self._process.poll() is None and self._control is not None

    def _ensure_running(self) -> socket.socket:
        if not self._running():
            self._spawn()
        if self._starting is not None:
            self._await_ready()
        assert self._control is not None
        return self._control

    def _spawn(self, fork_here: bool = False) -> None:
        self._discard()
        reserve_standard_descriptors()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._base = dict(os.environ._data)  # type: ignore[attr-defined]  # the zygote's, from now on
        self._changes = None
        try:
            if fork_here:
                self._process = _Forked(self._fork_zygote(theirs.fileno(), keep=ours.fileno()))
            else:
                import subprocess  # here: the command line forks its zygote and need not load it

                root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # not pathlib: 5 ms
                self._process = subprocess.Popen(
                    [sys.executable, "-c", _BOOT, str(theirs.fileno()), root],
                    pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    close_fds=True,
                    # Given outright: the C environment can hold what os.environ never saw
                    # (readline's LINES and COLUMNS), and every child would inherit it.
                    env=os.environ,
                )
        finally:
            theirs.close()
        settings = {"sys_path": list(sys.path), "cwd": os.getcwd(), "preload": list(self.preload)}
        blob = pickle.dumps(settings)
        ours.sendall(REQUEST.pack(len(blob), 0) + blob)
        self._control, self._starting = ours, ours

    def _fork_zygote(self, control: int, keep: int) -> int:
        """Fork this process into a zygote serving ``control``; its pid. The fork keeps stderr,
        takes /dev/null for stdin and stdout, closes every other descriptor (as ``Popen``'s
        ``close_fds``), and never returns: it leaves by ``os._exit``, running none of this
        process's exit handlers, with the status (and the message) it would have had as an
        interpreter of its own."""
        pid = os.fork()
        if pid:
            return pid
        self._lock = threading.Lock()  # held by start() as it forked: a child calling run needs it
        status = 1
        try:
            os.close(keep)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.closerange(3, control)
            # Here, not at the top: the supervisor never loads the child's side (nor ctypes).
            from runner._child import descriptor_ceiling

            os.closerange(control + 1, descriptor_ceiling())
            from runner import _zygote

            _zygote.main(control)
            status = 0
        except SystemExit as leaving:  # the supervisor left mid-message, or a fatal word
            if isinstance(leaving.code, str):
                print(leaving.code, file=sys.stderr)
                status = 1
            else:
                status = leaving.code or 0
        except BaseException:  # said on stderr, and the exit status says it failed
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)

    def _await_ready(self) -> None:
        """The zygote's word that it has loaded and listens (``R``), once after each spawn."""
        ours, self._starting = self._starting, None
        assert ours is not None and self._process is not None
        if ours.recv(1) != b"R":
            code = self._process.wait()
            ours.close()
            self._control, self._process = None, None
            raise ForkServerError(f"the fork server failed to start (exit status {code})")

    def _discard(self) -> None:
        if self._owner != os.getpid():
            return  # inherited across a fork: the zygote is the parent process's to stop
        if self._control is not None:
            self._control.close()  # EOF tells the zygote to exit
            self._control = self._starting = None
        if self._process is not None:
            # Asked first: a zygote already reaped (by poll) has a pid that may be another's now.
            if self._process.poll() is None and not _exits_within(self._process.pid, 5.0):
                self._process.kill()
            self._process.wait()
            self._process = None


def reserve_standard_descriptors() -> None:
    """/dev/null on any of descriptors 0, 1 and 2 this process lacks (a cron job, a daemon's
    child may start so). Else the next socket opened takes that number: the zygote makes its
    stdin and stdout there, and a command given "the supervisor's stdout" would write into the
    zygote's control socket (a pickled request: code run by the zygote, as root)."""
    for fd in (0, 1, 2):
        if not is_open(fd):
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one (those below are open)


def is_open(fd: int) -> bool:
    """Whether descriptor ``fd`` is open in this process."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class _Forked:
    """A zygote forked by ``_fork_zygote``: as much of ``Popen`` as the server uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self._wait(os.WNOHANG)

    def wait(self) -> int:
        code = self._wait(0)
        assert code is not None
        return code

    def _wait(self, flags: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:  # reaped by someone else (as Popen, take it as ended)
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


def _exits_within(pid: int, seconds: float) -> bool:
    """Whether child ``pid`` has ended (or does within ``seconds``), not yet reaped. Watched
    through a pidfd: ``Popen.wait(timeout=)`` polls, and its growing naps added up to 15 ms
    to every exit of the command line."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        watch = select.poll()
        watch.register(pidfd, select.POLLIN)
        return bool(watch.poll(seconds * 1000))
    finally:
        os.close(pidfd)


def _difference(base: Mapping[bytes, bytes], wanted: Mapping[bytes, bytes]) -> dict[bytes, bytes | None]:
    changes: dict[bytes, bytes | None] = {
        key: value for key, value in wanted.items() if base.get(key) != value
    }
    changes.update(dict.fromkeys(base.keys() - wanted.keys()))
    return changes


_default: ForkServer | None = None
_default_lock = threading.Lock()


def default_fork_server() -> ForkServer:
    """The process-wide zygote, started on first use and stopped at interpreter exit."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ForkServer()
            atexit.register(_default.close)
        return _default
