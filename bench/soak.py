"""Soak: 10,000 executions through ``governor serve`` with faults, crashes and a locked store.

    python bench/soak.py              # 10,000 executions (about 5 minutes on 2 cores)
    python bench/soak.py --total 2000 # shorter

A random mix of tasks (success, raise, segfault, exit without a result, memory hog, CPU hog,
timeout, TERM-ignoring setsid'd grandchildren, a fork bomb under ``pids``, 50 MB of output) is
fired at one server, as its queue allows. Along the way the server is SIGKILLed three times
(and restarted), and another process holds the database's write lock for 10 s. Every
execution writes its run id to a ledger first thing, so an execution that ran and is not in
history is counted as lost. The table shows the server's RSS, open descriptors and threads,
live descendants and execution cgroups at start, middle and end, then the verdict.

The kills come in the first 10% of the run, so that one server lives from execution
``total/10`` to the end: its RSS then and at the end are the flat-memory comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil

from governor.service._control import ask, socket_path

ROOT = Path(__file__).resolve().parent.parent

TASKS = """
import os, signal, time

def _ledger():
    with open(os.environ["SOAK_LEDGER"], "a") as ledger:
        ledger.write(os.environ["GOVERNOR_EXECUTION_ID"] + "\\n")

def succeed():
    _ledger()
    return 42

def raise_():
    _ledger()
    raise ValueError("soak: raised on purpose")

def segfault():
    _ledger()
    os.kill(os.getpid(), signal.SIGSEGV)

def exit_early():
    _ledger()
    os._exit(3)

def memory_hog():
    _ledger()
    hoard = []
    while True:
        hoard.append(bytearray(8 << 20))

def cpu_hog():
    _ledger()
    while True:
        pass

def sleeper():
    _ledger()
    time.sleep(60)

def fork_bomb():
    _ledger()
    children = 0
    while True:
        try:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
        except OSError:
            raise RuntimeError(f"soak: stopped at {children} children")
        children += 1
"""

ESCAPE = """
echo "$GOVERNOR_EXECUTION_ID" >> "$SOAK_LEDGER"
setsid sh -c 'trap "" TERM; exec sleep 60' &
sh -c 'setsid sleep 60 &' &
exit 0
"""

LOUD = """
echo "$GOVERNOR_EXECUTION_ID" >> "$SOAK_LEDGER"
head -c 50000000 /dev/zero
"""

# kind -> (share of the mix, the task's TOML body)
KINDS: dict[str, tuple[float, str]] = {
    "success": (0.40, 'function = "soak_tasks:succeed"'),
    "raise": (0.10, 'function = "soak_tasks:raise_"'),
    "segfault": (0.08, 'function = "soak_tasks:segfault"'),
    "exit": (0.08, 'function = "soak_tasks:exit_early"'),
    "memory": (0.06, 'function = "soak_tasks:memory_hog"\n[task.limits]\nmemory = "64MiB"'),
    "cpu": (0.06, 'function = "soak_tasks:cpu_hog"\n[task.limits]\ncpu_time = "0.2s"'),
    "timeout": (0.06, 'function = "soak_tasks:sleeper"\n[task.limits]\ntimeout = "0.2s"'),
    "escape": (0.06, 'command = ["sh", "{dir}/escape.sh"]'),
    "fork_bomb": (0.04, 'function = "soak_tasks:fork_bomb"\n[task.limits]\npids = 16'),
    "loud": (0.06, 'command = ["sh", "{dir}/loud.sh"]'),
}


def write_files(directory: Path) -> Path:
    (directory / "soak_tasks.py").write_text(textwrap.dedent(TASKS))
    (directory / "escape.sh").write_text(ESCAPE)
    (directory / "loud.sh").write_text(LOUD)
    tables = []
    for kind, (_, body) in KINDS.items():
        body = body.format(dir=directory)
        head, _, limits = body.partition("\n")
        table = f'[[task]]\nname = "{kind}"\n{head}\nevent = "{kind}"\n'
        tables.append(table + (limits + "\n" if limits else ""))
    task_file = directory / "tasks.toml"
    task_file.write_text("\n".join(tables))
    return task_file


class Server:
    """A ``governor serve`` subprocess."""

    def __init__(self, task_file: Path, db: Path, log: Path, ledger: Path) -> None:
        env = {**os.environ, "SOAK_LEDGER": str(ledger), "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "governor", "serve", str(task_file), "--db", str(db)]
        command += ["--grace", "1", "--log-level", "warning"]
        with log.open("a") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=out, env=env)
        self.path = socket_path(db)
        deadline = time.monotonic() + 60
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {log}")
            time.sleep(0.05)

    def answers(self) -> bool:
        try:
            ask(self.path, {"op": "status"}, timeout=5)
        except OSError:
            return False
        return True

    def status(self) -> dict[str, Any]:
        return ask(self.path, {"op": "status"}, timeout=30)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)


def descendants_alive() -> int:
    """Processes carrying an execution cookie: children of executions, wherever they went."""
    count = 0
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if "GOVERNOR_EXECUTION_ID" in process.environ() and "SOAK_LEDGER" in process.environ():
                count += 1
    return count


def execution_cgroups() -> int:
    found = 0
    for parent, _dirs, _files in os.walk("/sys/fs/cgroup"):
        if os.path.basename(parent) == "governor":
            found += sum(1 for name in os.listdir(parent) if os.path.isdir(os.path.join(parent, name)))
    return found


def measure(server: Server | None, executions: int, when: str) -> dict[str, Any]:
    row: dict[str, Any] = {"when": when, "executions": executions}
    if server is not None:
        process = psutil.Process(server.process.pid)
        row |= {"rss_mib": process.memory_info().rss / (1 << 20), "fds": process.num_fds()}
        row["threads"] = process.num_threads()
    row |= {"descendants": descendants_alive(), "cgroups": execution_cgroups()}
    return row


def ledger_count(ledger: Path) -> int:
    with ledger.open("rb") as data:
        return data.read().count(b"\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--total", type=int, default=10_000, help="executions to fire (default 10,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lock-seconds", type=float, default=10.0)
    arguments = parser.parse_args()
    total = arguments.total
    rng = random.Random(arguments.seed)
    kinds = list(KINDS)
    weights = [KINDS[kind][0] for kind in kinds]
    directory = Path(tempfile.mkdtemp(prefix="governor-soak-"))
    db, log, ledger = directory / "soak.db", directory / "serve.log", directory / "ledger"
    ledger.touch()
    task_file = write_files(directory)
    kills = sorted(rng.sample(range(total // 40, total // 10), 3))
    lock_at = total // 2
    rows = [measure(None, 0, "before")]
    server = Server(task_file, db, log, ledger)
    fired = 0
    started = time.monotonic()
    measured_flat = False
    locked_for = 0.0
    while fired < total:
        status = server.status()
        room = 8 - status.get("queued_total", 0)
        for _ in range(max(0, room)):
            kind = rng.choices(kinds, weights)[0]
            reply = ask(server.path, {"op": "fire", "event": kind}, timeout=30)
            if not reply.get("ok"):
                raise RuntimeError(f"fire {kind}: {reply}")
            fired += 1
            if fired in kills:
                server.kill()
                server = Server(task_file, db, log, ledger)
            if fired == total // 10 and not measured_flat:
                measured_flat = True
                time.sleep(1)
                rows.append(measure(server, fired, "one server from here"))
            if fired == lock_at:
                rows.append(measure(server, fired, "middle"))
                locked_for = hold_the_lock(db, server, arguments.lock_seconds)
            if fired >= total:
                break
        time.sleep(0.01)
    while server.status().get("running") or server.status().get("queued_total"):
        time.sleep(0.1)
    rows.append(measure(server, fired, "end"))
    server.stop()
    rows.append(measure(None, fired, "after stop"))
    elapsed = time.monotonic() - started
    return report(rows, db, ledger, fired, elapsed, kills, locked_for, directory)


def hold_the_lock(db: Path, server: Server, seconds: float) -> float:
    """Another process holds the write lock; the server keeps running (and spooling)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(float(sys.argv[2]))",
            str(db),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    holder.stdout.readline()
    began = time.monotonic()
    degraded = False
    while holder.poll() is None:
        degraded = degraded or bool((server.status().get("store") or {}).get("degraded"))
        time.sleep(0.5)
    print(f"store locked for {time.monotonic() - began:.1f}s; status said degraded: {degraded}", flush=True)
    return time.monotonic() - began


def report(
    rows: list[dict[str, Any]],
    db: Path,
    ledger: Path,
    fired: int,
    elapsed: float,
    kills: list[int],
    locked_for: float,
    directory: Path,
) -> int:
    with sqlite3.connect(db) as connection:
        history = [row[0] for row in connection.execute("SELECT run_id FROM executions")]
        outcomes = dict(
            connection.execute("SELECT coalesce(outcome, 'in flight'), count(*) FROM executions GROUP BY 1")
        )
    ran = set(ledger.read_text().split())
    lost = ran - set(history)
    duplicates = len(history) - len(set(history))
    print()
    header = f"{'when':<22} {'executions':>10} {'RSS MiB':>8} {'fds':>5} {'threads':>7}"
    print(f"{header} {'descendants':>11} {'cgroups':>7}")
    for row in rows:
        rss = f"{row['rss_mib']:.1f}" if "rss_mib" in row else "-"
        fds = str(row.get("fds", "-"))
        threads = str(row.get("threads", "-"))
        print(
            f"{row['when']:<22} {row['executions']:>10} {rss:>8} {fds:>5} {threads:>7} "
            f"{row['descendants']:>11} {row['cgroups']:>7}"
        )
    flat = [row for row in rows if row["when"] in ("one server from here", "end")]
    growth = (flat[1]["rss_mib"] / flat[0]["rss_mib"] - 1) * 100 if len(flat) == 2 else float("nan")
    print()
    print(f"fired {fired} in {elapsed:.0f}s; server SIGKILLed after fires {kills}; ", end="")
    print(f"store locked {locked_for:.1f}s")
    print(f"history: {len(history)} executions; outcomes: {json.dumps(outcomes, sort_keys=True)}")
    print(f"ran (ledger): {len(ran)}; ran but not in history (lost): {len(lost)}; duplicates: {duplicates}")
    # Every accepted fire is one execution in history: run, or recorded lost by a crash, or
    # (accepted but not started when the server died) fired again by the next server.
    print(f"fires accepted: {fired}; executions in history: {len(history)}")
    print(f"server RSS from execution {flat[0]['executions'] if flat else '?'} to the end: {growth:+.1f}%")
    print(f"files kept in {directory}")
    ok = not lost and not duplicates and rows[-1]["descendants"] == 0 and rows[-1]["cgroups"] == 0
    ok = ok and len(history) == fired
    print("PASS" if ok and abs(growth) <= 10 else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
