"""The control socket of ``governor serve``: a unix socket beside the database, owner-only.

One request per connection, one JSON object per line each way::

    client ──{"op": "status"} / {"op": "fire", "event": ..., "payload": ...}──> server
    client <──{"ok": true, ...} / {"ok": false, "error": "why"}───────────────── server

``ControlServer`` listens in a daemon thread and hands each request to the service's
``answer``; ``ask`` is the client side (``governor status``, ``fire``, ``top``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

SOCKET_SUFFIX = ".sock"
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


def socket_path(db: Path) -> Path:
    """Where the control socket of the server using ``db`` lives: beside the database, or
    under /tmp (named after the database's path) when that path is too long for a socket."""
    beside = Path(str(db) + SOCKET_SUFFIX)
    if len(str(beside)) <= _MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha1(str(db.resolve()).encode()).hexdigest()[:16]
    return Path(f"/tmp/governor-{digest}.sock")


class ControlServer:
    """Answers requests on the control socket of the server using ``db`` (see the module
    docstring). A request that fails gets its reason back; the server lives on."""

    def __init__(self, db: Path, answer: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.db = db
        self.path = socket_path(db)
        self._answer = answer
        self._server: socket.socket | None = None

    def open(self) -> Path:
        """Listen (owner-only) in a daemon thread; ``RuntimeError`` if another server answers."""
        path = self.path
        with contextlib.suppress(FileNotFoundError):
            if _server_answers(path):
                raise RuntimeError(f"another governor serve is using {self.db} (socket {path})")
            path.unlink()  # a stale socket from a server that died
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is created owner-only: no window for others
        try:
            server.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        server.listen(16)
        self._server = server
        threading.Thread(target=self._serve, args=(server,), name="governor-control", daemon=True).start()
        return path

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self._server is not None:
            path = self._server.getsockname()
            self._server.close()
            self._server = None
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _serve(self, server: socket.socket) -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return  # closed: the service is stopping
            with connection:
                try:
                    request = json.loads(_read_line(connection))
                    reply = self._answer(request)
                except Exception as error:  # a bad request gets its reason back, the server lives on
                    reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
                with contextlib.suppress(OSError):
                    connection.sendall(json.dumps(reply, default=str).encode() + b"\n")


def ask(path: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to a running server's control socket and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(str(path))
        client.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(_read_line(client))
    if not isinstance(reply, dict):
        raise OSError(f"unexpected reply from {path}: {reply!r}")
    return reply


def _read_line(connection: socket.socket, limit: int = 1 << 20) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _server_answers(path: Path) -> bool:
    try:
        ask(path, {"op": "status"}, timeout=2.0)
    except OSError:
        return False
    return True
