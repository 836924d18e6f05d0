"""Length-prefixed frames over pipes and sockets, readable without ever blocking the reader.

A frame is an 8-byte little-endian length followed by that many bytes. The supervisor side
reads with ``FrameReader`` from non-blocking fds, so a child that writes half a frame and
stalls can never wedge the loop; the child side writes with plain blocking ``os.write``.
"""

from __future__ import annotations

import os
import struct

_HEADER = struct.Struct("<Q")
HEADER_SIZE = _HEADER.size


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    return _HEADER.pack(len(payload)) + payload


def write_frame(fd: int, payload: bytes) -> None:
    """Write one frame to a blocking fd, looping over short writes."""
    view = memoryview(_HEADER.pack(len(payload)))
    for chunk in (view, memoryview(payload)):
        while chunk:
            written = os.write(fd, chunk)
            chunk = chunk[written:]


def read_exact(fd: int, size: int) -> bytes:
    """Read exactly ``size`` bytes from a blocking fd; ``EOFError`` if it closes first."""
    parts = []
    remaining = size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError(f"stream closed with {remaining} of {size} bytes unread")
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


class FrameReader:
    """Accumulates bytes read from a non-blocking fd and yields complete frames."""

    __slots__ = ("_buffer", "_expected", "eof")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._expected: int | None = None
        self.eof = False

    def read_from(self, fd: int, budget: int = 1 << 22) -> list[bytes]:
        """Read what is available (up to ``budget`` bytes) and return finished frames.

        Sets ``eof`` when the writer side is closed.
        """
        got = 0
        while got < budget:
            try:
                chunk = os.read(fd, 1 << 18)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
                break
            self._buffer += chunk
            got += len(chunk)
        return self._frames()

    def _frames(self) -> list[bytes]:
        frames: list[bytes] = []
        while True:
            if self._expected is None:
                if len(self._buffer) < HEADER_SIZE:
                    return frames
                (self._expected,) = _HEADER.unpack_from(self._buffer)
                del self._buffer[:HEADER_SIZE]
            if len(self._buffer) < self._expected:
                return frames
            frames.append(bytes(self._buffer[: self._expected]))
            del self._buffer[: self._expected]
            self._expected = None

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame still buffered (non-zero at EOF means truncation)."""
        return len(self._buffer) + (HEADER_SIZE if self._expected is not None else 0)


def drain(fd: int) -> None:
    """Read a non-blocking wake-up pipe ``fd`` empty (its bytes only say "look again")."""
    try:
        while os.read(fd, 4096):
            continue
    except BlockingIOError:
        return


class Wakeup:
    """A pipe one thread blocks on (``fileno`` in its poll) and any thread wakes (CPython's
    ``_ThreadWakeup`` is the model). ``wakeup()`` from anywhere, never blocking; ``clear()``
    only by the thread that waits on it, after it woke; ``close()`` once nobody waits."""

    __slots__ = ("_read", "_write")

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        """The end to wait on for reading."""
        return self._read

    def wakeup(self) -> None:
        """Make the waiter's poll return (harmless if it is awake or gone)."""
        try:
            os.write(self._write, b"!")
        except BlockingIOError:
            return  # the pipe is full: the waiter is bound to wake
        except OSError:
            return  # closed: nobody waits any more

    def clear(self) -> None:
        """Empty the pipe (its bytes only say "look again")."""
        drain(self._read)

    def close(self) -> None:
        """Close both ends; later wake-ups do nothing."""
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                continue
        self._read = self._write = -1
