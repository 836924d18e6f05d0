"""Event payloads for commands: a file per started run, named in its environment.

A command gets its payload as JSON in the file ``$GOVERNOR_EVENT_PAYLOAD_FILE`` (any size: the
environment and argv together are bounded by the kernel, about 128 KiB per string), and also
inline in ``$GOVERNOR_EVENT_PAYLOAD`` while it is small enough to travel there. The file is
written when the run starts and removed when it ends: a retry writes its own, a run that never
starts writes none. Files live in one private directory per scheduler, removed as it stops.
The file is local: a Dask worker on another host finds only the inline form.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from runner._sandboxing import PAYLOAD_FILE

PAYLOAD_VARIABLE = "GOVERNOR_EVENT_PAYLOAD"
PAYLOAD_FILE_VARIABLE = PAYLOAD_FILE  # the sandbox copies the file it names for its task
INLINE_MAX = 64 << 10  # bytes: well under the kernel's 128 KiB per environment string


class PayloadFiles:
    """The payload files of one scheduler's running commands (loop thread only)."""

    def __init__(self) -> None:
        self._directory: str | None = None
        self._files: dict[str, str] = {}  # run id -> its file

    def environment(self, run_id: str, text: str) -> dict[str, str]:
        """Write ``run_id``'s payload; the variables that name it (and carry it, if small)."""
        if self._directory is None:
            self._directory = tempfile.mkdtemp(prefix="governor-payloads-")
        path = os.path.join(self._directory, f"{run_id}.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        self._files[run_id] = path
        variables = {PAYLOAD_FILE_VARIABLE: path}
        if len(text) <= INLINE_MAX:
            variables[PAYLOAD_VARIABLE] = text
        return variables

    def remove(self, run_id: str | None) -> None:
        """The run has ended: its file goes."""
        path = self._files.pop(run_id, None) if run_id is not None else None
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def close(self) -> None:
        """The scheduler stops: every file goes, and the directory."""
        self._files.clear()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
