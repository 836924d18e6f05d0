"""How long a killed server's executions outlive it: ``kill -9`` of ``governor serve``, then
the time until every descendant of its executions (setsid'd, double-forked, TERM-ignoring)
is gone, with no restart.

    python bench/crash_cleanup.py [--rounds 20]

Each round starts a server, fires a task that leaves three escapees (a TERM-ignoring setsid'd
shell, a double-forked setsid'd sleep, a plain background sleep) and waits until they exist,
then SIGKILLs the server and polls their pids every millisecond. Prints each round's time and
the median and maximum. (Before the zygote killed trees on its supervisor's death, 15 of 20
rounds still had descendants alive 2.5 s later.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from governor.service._control import ask, socket_path

ROOT = Path(__file__).resolve().parent.parent

ESCAPE = """
setsid sh -c 'trap "" TERM; echo $$ >> {pids}; exec sleep 1000' &
sh -c 'setsid sleep 1000 & echo $! >> {pids}' &
sleep 1000 & echo $! >> {pids}
while [ "$(wc -l < {pids})" -lt 3 ]; do sleep 0.01; done
touch {ready}
wait
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def one_round(directory: Path) -> float:
    pids, ready = directory / "pids", directory / "ready"
    for path in (pids, ready):
        path.unlink(missing_ok=True)
    pids.touch()
    script = directory / "escape.sh"
    script.write_text(ESCAPE.format(pids=pids, ready=ready))
    task_file = directory / "tasks.toml"
    task_file.write_text(f'[[task]]\nname = "escapes"\ncommand = ["sh", "{script}"]\nevent = "go"\n')
    db = directory / "crash.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "governor", "serve", str(task_file), "--db", str(db), "--log-level", "error"],
        env=env,
    )
    path = socket_path(db)
    while True:
        try:
            if ask(path, {"op": "fire", "event": "go"}, timeout=5)["ok"]:
                break
        except OSError:
            time.sleep(0.02)
    while not ready.exists():
        time.sleep(0.005)
    descendants = [int(pid) for pid in pids.read_text().split()]
    server.kill()
    killed = time.monotonic()
    server.wait()
    while any(alive(pid) for pid in descendants):
        if time.monotonic() - killed > 30:
            raise RuntimeError(f"descendants {descendants} still alive 30 s after the kill")
        time.sleep(0.001)
    return time.monotonic() - killed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    rounds = parser.parse_args().rounds
    times = []
    with tempfile.TemporaryDirectory(prefix="governor-crash-") as directory:
        for number in range(1, rounds + 1):
            seconds = one_round(Path(directory))
            times.append(seconds)
            print(
                f"round {number:>2}: every descendant gone {seconds * 1000:.1f} ms after the kill", flush=True
            )
    print(
        f"\n{rounds} rounds: median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
