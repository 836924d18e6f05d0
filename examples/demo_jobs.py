"""Jobs for the demo schedule in tasks.toml (found because the server puts this directory on
sys.path). Each one is small and honest about what it does."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path


def checksum_batch(megabytes: int = 8) -> str:
    """A periodic job: hash a freshly generated buffer, as a backup verifier would."""
    digest = hashlib.sha256(os.urandom(megabytes << 20)).hexdigest()
    print(f"checksum of {megabytes} MiB: {digest[:16]}")
    return digest


def write_report() -> str:
    """A cron job: write a small status report."""
    path = Path(tempfile.gettempdir()) / "governor-demo-report.txt"
    path.write_text(f"report written at {datetime.now(UTC).isoformat()}\n")
    return str(path)


def build_index(megabytes: int = 150) -> int:
    """A heavy job: holds ``megabytes`` of index in memory for a moment."""
    index = bytearray(megabytes << 20)
    time.sleep(0.5)
    return len(index)


def reindex(payload: object = None) -> str:
    """An event job: runs when someone sends ``governor fire reindex``."""
    print(f"reindexing because of {payload!r}")
    return "reindexed"
