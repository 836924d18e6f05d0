"""The main job, end to end: serve examples/tasks.toml for a while, fire an event, stop, and
show the history the embedded database kept and the report of what each job cost.

Run with ``make demo``. It uses a fresh database in a temporary directory and nothing else:
no server to install, no network. What to look for in the history: the periodic and cron
jobs succeeding; the heavy job killed for memory on attempt 1 and succeeding on attempt 2
with twice the memory; the event job that ran when ``governor fire reindex`` was sent.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOVERNOR = [sys.executable, "-m", "governor"]
SERVE_SECONDS = 20  # at least; longer if needed to see the every-minute cron job fire once


def main() -> int:
    now = time.time()
    serve_for = max(SERVE_SECONDS, 60 - now % 60 + 3)  # past the next minute: the cron job fires
    with tempfile.TemporaryDirectory(prefix="governor-demo-") as state:
        db = Path(state) / "demo.db"
        print(f"$ governor serve examples/tasks.toml --db {db}   # for {serve_for:.0f}s", flush=True)
        server = subprocess.Popen(
            [*GOVERNOR, "serve", str(HERE / "tasks.toml"), "--db", str(db), "--max-running", "2"]
        )
        try:
            started = time.monotonic()
            while subprocess.run([*GOVERNOR, "status", "--db", str(db)], capture_output=True).returncode != 0:
                if server.poll() is not None or time.monotonic() - started > 30:
                    print("the server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            time.sleep(6)
            print('\n$ governor fire reindex --payload \'{"reason": "demo"}\'', flush=True)
            subprocess.run(
                [*GOVERNOR, "fire", "reindex", "--payload", '{"reason": "demo"}', "--db", str(db)], check=True
            )
            time.sleep(3)
            print("\n$ governor status", flush=True)
            subprocess.run([*GOVERNOR, "status", "--db", str(db)], check=True)
            time.sleep(max(0.0, serve_for - (time.monotonic() - started)))
        finally:
            server.send_signal(signal.SIGTERM)
            status = server.wait(timeout=60)
        print(f"\n(server exited with status {status})\n\n$ governor history", flush=True)
        subprocess.run([*GOVERNOR, "history", "--db", str(db)], check=True)
        print("\n$ governor report   # what each job cost, and what the governor learned", flush=True)
        subprocess.run([*GOVERNOR, "report", "--db", str(db)], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
