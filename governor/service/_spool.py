"""The spool beside the database: every write, on disk, before the database has it.

``<db>.spool`` is an append-only file of JSON lines, one per queued write (``{"op": ...,
"data": ...}``), written by ``write()`` in the caller's thread before the write is queued. A
process killed at any moment leaves in it every write the database had not yet committed (the
kernel keeps what ``write()`` was given; only a power cut can take the last moments); a store
that cannot take writes (locked, full, read-only) leaves them waiting in it. The next store to
open the database replays them, in order, before anything else. Replaying is idempotent: the
writes are upserts keyed by the run id, so a write that was both committed and still spooled
(a crash between the two) lands once.

One store owns a spool at a time (an exclusive ``flock`` on ``<db>.spool.lock``, held while the
store is open):
a second store opened on the same database while the server runs (``governor history``) neither
replays nor truncates the server's spool, and spools nothing of its own.

Bounded: past ``max_bytes`` a finished execution is spooled without its usage timeline, and
beyond that a write is kept in memory only (and said so). A line cut short by a crash is
skipped when read back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("governor.store")

SPOOL_SUFFIX = ".spool"
DEFAULT_MAX_BYTES = 256 << 20


class Spool:
    """The spool file of one database; all calls come under the store writer's lock."""

    def __init__(self, db: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(str(db) + SPOOL_SUFFIX)
        self.max_bytes = max_bytes
        self.size = 0
        self.problem: str | None = None  # why the last write could not be spooled
        self._fd: int | None = None
        self._lock: int | None = None
        self.owned = self._claim()

    def _claim(self) -> bool:
        try:
            lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            self._trouble(f"the spool {self.path} cannot be locked: {error}")
            return False
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            self.problem = "another store on this database owns the spool"
            return False
        self._lock = lock
        return True

    def read(self) -> list[tuple[str, dict[str, Any], bytes]]:
        """What an earlier process left: (op, data, line) of each whole line, in order."""
        if not self.owned:
            return []
        try:
            content = self.path.read_bytes()
        except FileNotFoundError:
            return []
        entries = []
        for number, line in enumerate(content.splitlines(keepends=True), 1):
            try:
                entry = json.loads(line)
                entries.append((str(entry["op"]), dict(entry["data"]), line))
            except (ValueError, KeyError, TypeError):
                # A crash mid-write cuts only the last line; anything else is not ours to guess at.
                log.warning("%s: line %d is not a whole spooled write; skipped", self.path, number)
        self.size = len(content)
        return entries

    def write(self, op: str, data: dict[str, Any], lean: dict[str, Any] | None = None) -> bytes | None:
        """Append one write; its line, or ``None`` if it could not be spooled (full, or the
        file cannot be written). ``lean``: a smaller form to spool when the full one would
        pass ``max_bytes``."""
        if not self.owned:
            return None
        line = _line(op, data)
        if self.size + len(line) > self.max_bytes and lean is not None:
            line = _line(op, lean)
        if self.size + len(line) > self.max_bytes:
            self._trouble(f"the spool is full ({self.size} of {self.max_bytes} bytes)")
            return None
        try:
            fd = self._open()
            written = os.write(fd, line)
            if written != len(line):  # a short write: the disk filled mid-line
                raise OSError(f"wrote {written} of {len(line)} bytes")
        except OSError as error:
            self._trouble(f"the spool {self.path} cannot be written: {error}")
            self._close()
            return None
        self.size += len(line)
        self.problem = None
        return line

    def keep_only(self, lines: list[bytes]) -> None:
        """Everything else is committed: the spool becomes just ``lines`` (usually none)."""
        if not self.owned:
            return
        if not lines:
            if self.size:
                try:
                    os.ftruncate(self._open(), 0)
                except OSError as error:  # replaying committed writes again is harmless
                    log.warning("%s: could not empty the spool: %s", self.path, error)
                    return
            self.size = 0
            return
        temporary = self.path.with_name(self.path.name + ".new")
        try:
            temporary.write_bytes(b"".join(lines))
            os.replace(temporary, self.path)  # atomic: the old file, or just the waiting lines
        except OSError as error:  # the old file still holds these lines, and more: harmless
            log.warning("%s: could not rewrite the spool: %s", self.path, error)
            with contextlib.suppress(OSError):
                temporary.unlink()
            return
        self._close()
        self.size = sum(len(line) for line in lines)

    def close(self) -> None:
        """Close the file; an empty spool is removed."""
        if self.owned and self.size == 0:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self._close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _trouble(self, problem: str) -> None:
        if self.problem != problem:
            log.error("%s; writes wait in memory only until the store takes them", problem)
        self.problem = problem


def _line(op: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"op": op, "data": data}, separators=(",", ":")).encode() + b"\n"
