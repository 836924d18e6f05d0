"""The control socket of ``governor serve``: a unix socket beside the database, owner-only.

One request per connection, one JSON object per line each way::

    client ──{"op": "status"} / {"op": "fire", "event": ..., "payload": ...,
              "deadline": <unix time the client stops waiting>}──────────────────> server
    client <──{"ok": true, ...} / {"ok": false, "error": "why"}───────────────── server

Each connection is served on its own thread, so one client that never finishes its request
jams nobody else; it is cut off at ``REQUEST_DEADLINE`` seconds, or at ``max_request`` bytes.
Only the server's own user (or root) is answered: the peer's uid comes from the kernel
(``SO_PEERCRED``), not from anything the peer says.

A reply tells the truth: a request whose client will have stopped waiting before it could be
answered (its ``deadline`` is near or past) is refused before anything is done, and the client
waits ``REPLY_GRACE`` seconds past the deadline it sent, so any reply sent in time arrives.
``governor fire`` therefore never reports a failure for an event that then ran.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SOCKET_SUFFIX = ".sock"
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes
REQUEST_DEADLINE = 5.0  # seconds a client has to send its whole request
MAX_CONNECTIONS = 32  # served at once; more are told the server is busy
DEFAULT_MAX_REQUEST = 1 << 20  # bytes of one request line (the service raises it for payloads)
REPLY_GRACE = 2.0  # seconds a client waits past the deadline it sent
_TOO_LATE = 0.5  # seconds: a request with less time left than this is refused, not acted on
_UCRED = struct.Struct("3i")  # pid, uid, gid

log = logging.getLogger("governor.control")


def socket_path(db: Path) -> Path:
    """Where the control socket of the server using ``db`` lives: beside the database, or
    under /tmp (named after the database's path) when that path is too long for a socket."""
    beside = Path(str(db) + SOCKET_SUFFIX)
    if len(str(beside)) <= _MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha1(str(db.resolve()).encode()).hexdigest()[:16]
    return Path(f"/tmp/governor-{digest}.sock")


class RequestRefused(ValueError):
    """A request the server will not act on; its message is the reply's error."""

    complete = True  # the request's whole line has been read


def check_socket_mode(mode: int) -> int:
    """The control socket's permission bits: 0600 (the default), or also the group's or
    everyone's (read and write go together: connecting needs write); nothing else."""
    if isinstance(mode, bool) or not isinstance(mode, int) or mode & ~0o666 or mode & 0o600 != 0o600:
        raise ValueError(f"socket_mode: expected 600, 660 or 666 (octal), got {mode!r}")
    if (mode & 0o060) not in (0, 0o060) or (mode & 0o006) not in (0, 0o006):
        raise ValueError(f"socket_mode: read and write go together, got {mode:o}")
    return mode


class ControlServer:
    """Answers requests on the control socket of the server using ``db`` (see the module
    docstring). A request that fails gets its reason back; the server lives on."""

    def __init__(
        self,
        db: Path,
        answer: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        max_request: int = DEFAULT_MAX_REQUEST,
        deadline: float = REQUEST_DEADLINE,
        too_large: str = "",
        mode: int = 0o600,
    ) -> None:
        self.db = db
        self.mode = check_socket_mode(mode)
        self.path = socket_path(db)
        self.max_request = max_request
        self.too_large = too_large  # what to add when a request is refused for its size
        self.deadline = deadline
        self._answer = answer
        self._server: socket.socket | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._serving: set[threading.Thread] = set()
        self._serving_lock = threading.Lock()
        self._allowed = {0, os.getuid()}

    def open(self) -> Path:
        """Listen (owner-only) in a daemon thread; ``RuntimeError`` if another server answers."""
        path = self.path
        with contextlib.suppress(FileNotFoundError):
            if _server_answers(path):
                raise RuntimeError(f"another governor serve is using {self.db} (socket {path})")
            path.unlink()  # a stale socket from a server that died
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # the socket is created owner-only: no window for others
        try:
            server.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, self.mode)
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), name="governor-control", daemon=True).start()
        return path

    def _may_control(self, uid: int, gid: int) -> bool:
        """Root, the server's own user, and whom ``mode`` lets in: the server's group (by
        the peer's primary gid, which is what the kernel tells), or anyone."""
        if uid in self._allowed or self.mode & 0o006:
            return True
        return bool(self.mode & 0o060) and gid == os.getgid()

    def close(self, timeout: float = 2.0) -> None:
        """Stop listening, remove the socket file, and give requests being answered
        ``timeout`` seconds to finish."""
        if self._server is not None:
            path = self._server.getsockname()
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
            with contextlib.suppress(OSError):
                os.unlink(path)
        with self._serving_lock:
            serving = list(self._serving)
        end = time.monotonic() + timeout
        for thread in serving:
            thread.join(max(0.0, end - time.monotonic()))

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return  # closed: the service is stopping
            if not self._slots.acquire(blocking=False):
                with connection:
                    _send(connection, {"ok": False, "error": "the server is busy: too many open requests"})
                continue
            thread = threading.Thread(
                target=self._serve, args=(connection,), name="governor-control-request", daemon=True
            )
            with self._serving_lock:
                self._serving.add(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            with connection:
                _send(connection, self._reply(connection))
        finally:
            self._slots.release()
            with self._serving_lock:
                self._serving.discard(threading.current_thread())

    def _reply(self, connection: socket.socket) -> dict[str, Any]:
        try:
            _pid, uid, gid = _UCRED.unpack(
                connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
            if not self._may_control(uid, gid):
                log.warning("refused a control request from uid %d", uid)
                return {"ok": False, "error": f"uid {uid} may not control this server"}
            try:
                line = read_line(connection, self.max_request, time.monotonic() + self.deadline)
            except RequestRefused as refusal:
                if not refusal.complete:
                    _drain(connection, time.monotonic() + self.deadline)  # so the client reads the reply
                raise RequestRefused(f"{refusal}{self.too_large}") from None
            request = json.loads(line)
            if not isinstance(request, dict):
                raise RequestRefused(f"a request is a JSON object, got {type(request).__name__}")
            deadline = request.get("deadline")
            if isinstance(deadline, int | float) and deadline - time.time() < _TOO_LATE:
                raise RequestRefused("the client stopped waiting before an answer; nothing was done")
            return self._answer(request)
        except RequestRefused as refusal:
            return {"ok": False, "error": str(refusal)}
        except TimeoutError:
            return {"ok": False, "error": f"the request was not complete within {self.deadline:g}s"}
        except Exception as error:  # a bad request gets its reason back, the server lives on
            return {"ok": False, "error": f"{type(error).__name__}: {error}"}


def ask(path: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to a running server's control socket and return its reply.

    The server is told when this client stops waiting (``timeout`` from now) and acts only if
    it can answer before then; this client waits ``REPLY_GRACE`` seconds longer for that reply.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        end = time.monotonic() + timeout + REPLY_GRACE
        client.settimeout(timeout + REPLY_GRACE)
        client.connect(str(path))
        # Refused before it was all sent (too large), the request's reply still says why.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            client.sendall(json.dumps({**request, "deadline": time.time() + timeout}).encode() + b"\n")
        reply = json.loads(read_line(client, 1 << 30, end))
    if not isinstance(reply, dict):
        raise OSError(f"unexpected reply from {path}: {reply!r}")
    return reply


def read_line(connection: socket.socket, limit: int, end: float) -> bytes:
    """One newline-terminated message of at most ``limit`` bytes, by monotonic time ``end``."""
    data = bytearray()
    while not data.endswith(b"\n"):
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the message was not complete in time")
        connection.settimeout(left)
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            continue  # the loop's check says why
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            refusal = RequestRefused(f"the message is larger than {limit} bytes")
            refusal.complete = b"\n" in data  # the whole line was read already: nothing to drain
            raise refusal
    return bytes(data)


def _drain(connection: socket.socket, end: float) -> None:
    """Read and drop the rest of the client's request line (until its newline, its EOF or
    ``end``): a client refused unread still gets to read why (closing on unread data resets
    the connection)."""
    with contextlib.suppress(OSError):
        while (left := end - time.monotonic()) > 0:
            connection.settimeout(left)
            chunk = connection.recv(1 << 16)
            if not chunk or chunk.endswith(b"\n"):
                return


def _send(connection: socket.socket, reply: dict[str, Any]) -> None:
    connection.settimeout(REQUEST_DEADLINE)
    try:
        connection.sendall(json.dumps(reply, default=str).encode() + b"\n")
    except OSError as error:  # the client went away: it chose not to hear the answer
        log.info("could not send a control reply: %s", error)


def _server_answers(path: Path) -> bool:
    try:
        ask(path, {"op": "status"}, timeout=2.0)
    except OSError:
        return False
    return True
