"""``governor serve`` as people run it: a real server subprocess, real signals, a real store."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import gone, wait_until
from guards import guard

GOVERNOR = [sys.executable, "-m", "governor"]
GUARD = guard(60)  # seconds: deadlock guards only
HELPERS = str(Path(__file__).resolve().parent)


class Server:
    """A ``governor serve`` subprocess whose log lines are collected as they come."""

    def __init__(self, task_file: Path, db: Path, *extra: str) -> None:
        env = {**os.environ, "PYTHONPATH": HELPERS + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.process = subprocess.Popen(
            [*GOVERNOR, "serve", str(task_file), "--db", str(db), "--grace", "1", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = GUARD) -> str:
        """The first log line (not seen before) containing ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if text in line:
                    self.seen.remove(line)
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no log line with {text!r}; saw: {self.seen}")
            try:
                self.seen.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                continue

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        status = self.process.wait(timeout=GUARD)
        self._reader.join(timeout=GUARD)  # EOF once the server and its children are gone
        assert self.process.stdout is not None
        self.process.stdout.close()
        return status


def governor(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GOVERNOR, *args, "--db", str(db)], capture_output=True, text=True, timeout=GUARD)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "governor.db"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def served(tmp_path: Path, db: Path) -> Iterator[tuple[Server, Path]]:
    log = tmp_path / "out.log"
    task_file = write(
        tmp_path / "tasks.toml",
        f"""
        [[task]]
        name = "on-event"
        function = "task_helpers:append_line"
        args = ["{log}", "ran"]
        event = "poke"
        [task.limits]
        memory = "256MiB"

        [[task]]
        name = "ticker"
        command = ["true"]
        interval = "1h"
        """,
    )
    server = Server(task_file, db)
    try:
        server.wait_for("serving 2 task(s)")
        yield server, task_file
    finally:
        server.stop(signal.SIGKILL)


def test_fire_status_history_and_a_clean_stop(served: tuple[Server, Path], db: Path) -> None:
    server, _ = served
    fired = governor("fire", "poke", "--payload", '{"n": 1}', db=db)
    assert fired.returncode == 0, fired.stderr
    line = server.wait_for("task=on-event")
    assert "outcome=succeeded" in line and "attempt=1" in line
    status = json.loads(governor("status", "--json", db=db).stdout)
    assert {task["name"] for task in status["tasks"]} == {"on-event", "ticker"}
    assert governor("fire", "nobody-listens", db=db).returncode != 0
    assert server.stop(signal.SIGTERM) == 0
    server.wait_for("the store is flushed")
    history = governor("history", "--json", db=db)
    rows = [json.loads(line) for line in history.stdout.splitlines()]
    assert [row["task"] for row in rows] == ["on-event"]
    keys = {"outcome", "exit_code", "signal", "peak_memory_bytes", "cpu_user_seconds", "cpu_system_seconds"}
    keys |= {"wall_seconds", "enforcement", "task", "attempt", "queued_at", "started_at", "ended_at"}
    assert keys <= set(rows[0])
    assert rows[0]["outcome"] == "succeeded"


def test_sighup_reloads_without_dropping_running_work(
    served: tuple[Server, Path], db: Path, tmp_path: Path
) -> None:
    server, task_file = served
    task_file.write_text(
        task_file.read_text() + '\n[[task]]\nname = "added"\ncommand = ["true"]\nevent = "later"\n'
    )
    server.process.send_signal(signal.SIGHUP)
    assert "added added" in server.wait_for("reloaded")
    assert governor("fire", "later", db=db).returncode == 0
    assert "outcome=succeeded" in server.wait_for("task=added")
    task_file.write_text("this is not toml [")
    server.process.send_signal(signal.SIGHUP)
    server.wait_for("reload refused")
    assert governor("fire", "later", db=db).returncode == 0  # the old schedule still runs
    server.wait_for("task=added")


def test_sigkill_then_restart_records_lost_and_leaves_no_orphans(tmp_path: Path, db: Path) -> None:
    ready = tmp_path / "ready"
    pids = tmp_path / "pids"
    script = f"sleep 1000 & echo $! > {pids}; setsid sleep 1000 & echo $! >> {pids}; touch {ready}; wait"
    task_file = write(
        tmp_path / "tasks.toml",
        f"""
        [[task]]
        name = "long"
        command = ["sh", "-c", "{script}"]
        event = "go"

        [[task]]
        name = "quick"
        command = ["true"]
        event = "quick"
        """,
    )
    server = Server(task_file, db)
    try:
        server.wait_for("serving 2 task(s)")
        assert governor("fire", "quick", db=db).returncode == 0
        server.wait_for("task=quick")
        # Committed before the crash (the writer commits within its batch interval).
        wait_until(lambda: '"quick"' in governor("history", "--json", db=db).stdout, GUARD)
        assert governor("fire", "go", db=db).returncode == 0
        wait_until(ready.exists, GUARD)
        # The in-flight row is committed within a batch interval; the crash comes after it.
        wait_until(lambda: '"long"' in governor("history", "--json", db=db).stdout, GUARD)
        server.stop(signal.SIGKILL)
        server = Server(task_file, db)
        line = server.wait_for("recovered: lost task=long")
        assert "WARNING" in line
        server.wait_for("serving 2 task(s)")
        for pid in map(int, pids.read_text().split()):
            wait_until(lambda pid=pid: gone(pid), guard(10))
        assert server.stop() == 0
    finally:
        server.stop(signal.SIGKILL)
    rows = [json.loads(line) for line in governor("history", "--json", db=db).stdout.splitlines()]
    assert [(row["task"], row["outcome"]) for row in rows] == [("quick", "succeeded"), ("long", "lost")]


def test_a_killed_server_takes_every_descendant_with_it_before_any_restart(tmp_path: Path, db: Path) -> None:
    ready = tmp_path / "ready"
    pids = tmp_path / "pids"
    # A TERM-ignoring setsid'd grandchild, a double-forked one, and a plain background child.
    script = write(
        tmp_path / "escape.sh",
        f"""
        setsid sh -c 'trap "" TERM; echo $$ >> {pids}; exec sleep 1000' &
        sh -c 'setsid sleep 1000 & echo $! >> {pids}' &
        sleep 1000 & echo $! >> {pids}
        while [ "$(wc -l < {pids})" -lt 3 ]; do sleep 0.01; done
        touch {ready}
        wait
        """,
    )
    task_file = write(
        tmp_path / "tasks.toml",
        f"""
        [[task]]
        name = "escapes"
        command = ["sh", "{script}"]
        event = "go"
        """,
    )
    server = Server(task_file, db)
    try:
        server.wait_for("serving 1 task(s)")
        assert governor("fire", "go", db=db).returncode == 0
        wait_until(ready.exists, GUARD)
        descendants = [int(pid) for pid in pids.read_text().split()]
        assert len(descendants) == 3 and not any(gone(pid) for pid in descendants)
        cgroups = _execution_cgroups(descendants[0])
        server.process.kill()
        server.process.wait(GUARD)
        # No restart: the zygote, seeing its supervisor gone, kills the trees and their cgroups.
        for pid in descendants:
            wait_until(lambda pid=pid: gone(pid), GUARD)
        wait_until(lambda: not any(os.path.isdir(path) for path in cgroups), GUARD)
    finally:
        server.stop(signal.SIGKILL)


def _execution_cgroups(pid: int) -> list[str]:
    """The governor cgroup directories ``pid`` is in (none in rlimit mode)."""
    found = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "/governor/" not in path:
            continue
        for controller in controllers.split(",") if controllers else [""]:
            base = f"/sys/fs/cgroup/{controller}" if controller else "/sys/fs/cgroup"
            for candidate in (base, "/sys/fs/cgroup/unified"):
                if os.path.isdir(candidate + path):
                    found.append(candidate + path)
                    break
    return found


def test_every_execution_that_ran_is_in_history_once_through_repeated_sigkills(
    tmp_path: Path, db: Path
) -> None:
    ran = tmp_path / "ran"
    ran.touch()
    # Each execution writes its own run id first thing: proof that it really ran.
    task_file = write(
        tmp_path / "tasks.toml",
        f"""
        [[task]]
        name = "often"
        command = ["sh", "-c", "echo $GOVERNOR_EXECUTION_ID >> {ran}; sleep 0.02"]
        interval = "0.03s"
        """,
    )
    for kill in range(6):
        server = Server(task_file, db)
        try:
            server.wait_for("serving 1 task(s)")
            # A later kill each round, so the kills land at different points of the schedule.
            enough = len(ran.read_text().split()) + 2 + kill
            wait_until(lambda enough=enough: len(ran.read_text().split()) >= enough, GUARD)
        finally:
            server.stop(signal.SIGKILL)  # at whatever moment the schedule has reached
    server = Server(task_file, db)
    server.wait_for("serving 1 task(s)")
    assert server.stop(signal.SIGTERM) == 0
    rows = [json.loads(line) for line in governor("history", "--json", db=db).stdout.splitlines()]
    ids = [row["run_id"] for row in rows]
    assert len(ids) == len(set(ids)), "an execution appears twice"
    missing = set(ran.read_text().split()) - set(ids)
    assert not missing, f"ran but not in history: {sorted(missing)}"
    assert not [row for row in rows if row["outcome"] is None], (rows, server.seen)


def test_a_hostile_task_name_cannot_forge_a_log_line(tmp_path: Path, db: Path) -> None:
    task_file = write(
        tmp_path / "tasks.toml",
        r"""
        [[task]]
        name = "a\nb task=evil outcome=succeeded"
        command = ["false"]
        event = "go"
        """,
    )
    server = Server(task_file, db)
    try:
        server.wait_for("serving 1 task(s)")
        assert governor("fire", "go", db=db).returncode == 0
        line = server.wait_for(" ended ")
        assert 'task="a\\nb task=evil outcome=succeeded"' in line and " outcome=failed " in line
        assert server.stop() == 0
    finally:
        server.stop(signal.SIGKILL)
    lines = server.seen + list(server.lines.queue)
    assert not any(line.startswith("b task=evil") for line in lines)
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) "
    assert all(re.match(stamp, line) for line in lines), lines


def test_json_logs_for_log_shippers_one_object_per_line(tmp_path: Path, db: Path) -> None:
    task_file = write(
        tmp_path / "tasks.toml",
        """
        [[task]]
        name = "quick"
        command = ["true"]
        event = "go"
        """,
    )
    server = Server(task_file, db, "--log-format", "json", "--log-level", "warning")
    try:
        wait_until(lambda: governor("fire", "go", db=db).returncode == 0, GUARD)  # once it listens
        wait_until(lambda: '"quick"' in governor("history", "--json", db=db).stdout, GUARD)
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(GUARD)
    finally:
        server.stop(signal.SIGKILL)
    lines = server.seen + list(server.lines.queue)
    # Warning and above only: a clean start, a success and a clean stop say nothing.
    assert lines == [], lines
    server = Server(task_file, db, "--log-format", "json")
    try:
        entry = json.loads(server.wait_for('"serving 1 task(s)'))
        assert entry["level"] == "info" and entry["logger"] == "governor.serve"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
        assert governor("fire", "go", db=db).returncode == 0
        ended = json.loads(server.wait_for('"ended"'))
        assert (ended["task"], ended["outcome"], ended["attempt"]) == ("quick", "succeeded", 1)
    finally:
        server.stop(signal.SIGKILL)


def test_event_payloads_of_any_size_reach_commands_up_to_the_maximum(tmp_path: Path, db: Path) -> None:
    copy, where = tmp_path / "copy.json", tmp_path / "where"
    task_file = write(
        tmp_path / "tasks.toml",
        f"""
        [[task]]
        name = "big"
        command = ["sh", "-c", 'f=$GOVERNOR_EVENT_PAYLOAD_FILE; cp $f {copy}; echo $f > {where}']
        event = "big"
        """,
    )
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"blob": "x" * (1 << 20)}))  # 1 MiB: 8x what the environment takes
    server = Server(task_file, db, "--max-payload", "2MiB")
    try:
        server.wait_for("serving 1 task(s)")
        fired = governor("fire", "big", "--payload-file", str(payload), db=db)
        assert fired.returncode == 0, fired.stderr
        assert "outcome=succeeded" in server.wait_for("task=big")
        assert json.loads(copy.read_text()) == json.loads(payload.read_text())
        wait_until(lambda: not Path(where.read_text().strip()).exists(), GUARD)  # removed as the run ended
        payload.write_text(json.dumps({"blob": "x" * (3 << 20)}))
        refused = governor("fire", "big", "--payload-file", str(payload), db=db)
        assert refused.returncode != 0
        assert "payloads may be at most 2.0 MiB (governor serve --max-payload)" in refused.stderr
        assert server.stop() == 0
    finally:
        server.stop(signal.SIGKILL)
    rows = [json.loads(line) for line in governor("history", "--json", db=db).stdout.splitlines()]
    assert [row["outcome"] for row in rows] == ["succeeded"]


def test_what_executions_print_is_in_the_store_not_in_the_servers_memory(tmp_path: Path, db: Path) -> None:
    task_file = write(
        tmp_path / "tasks.toml",
        """
        [[task]]
        name = "loud"
        command = ["sh", "-c", "echo hello; echo oops >&2; head -c 50000000 /dev/zero"]
        event = "go"
        """,
    )
    server = Server(task_file, db)
    try:
        server.wait_for("serving 1 task(s)")
        assert governor("fire", "go", db=db).returncode == 0
        assert "outcome=succeeded" in server.wait_for("task=loud")
        status = json.loads(governor("status", "--json", db=db).stdout)
        assert status["store"]["degraded"] is None
        assert server.stop() == 0
    finally:
        server.stop(signal.SIGKILL)
    (row,) = [json.loads(line) for line in governor("history", "--json", db=db).stdout.splitlines()]
    shown = governor("output", row["run_id"], db=db)
    assert shown.returncode == 0
    assert shown.stdout.startswith("hello\n") and len(shown.stdout) <= (64 << 10) + 100
    assert shown.stderr == "oops\n"


def test_fires_accepted_but_not_started_run_after_a_crash(tmp_path: Path, db: Path) -> None:
    notes, ready = tmp_path / "notes", tmp_path / "ready"
    task_file = write(
        tmp_path / "tasks.toml",
        f"""
        [[task]]
        name = "hold"
        command = ["sh", "-c", "touch {ready}; exec sleep 1000"]
        event = "hold"

        [[task]]
        name = "note"
        command = ["sh", "-c", 'cat "$GOVERNOR_EVENT_PAYLOAD_FILE" >> {notes}; echo >> {notes}']
        event = "note"
        """,
    )
    server = Server(task_file, db, "--max-running", "1")
    try:
        server.wait_for("serving 2 task(s)")
        assert governor("fire", "hold", db=db).returncode == 0
        wait_until(ready.exists, GUARD)  # the one slot is taken: the notes wait in the queue
        for n in (1, 2, 3):
            assert governor("fire", "note", "--payload", str(n), db=db).returncode == 0
        server.stop(signal.SIGKILL)
        assert not notes.exists()
        server = Server(task_file, db, "--max-running", "1")
        for _ in range(3):
            assert "task=note" in server.wait_for("fired again")
        wait_until(lambda: notes.exists() and notes.read_text().split() == ["1", "2", "3"], GUARD)
        assert server.stop() == 0
    finally:
        server.stop(signal.SIGKILL)
    rows = [json.loads(line) for line in governor("history", "--json", db=db).stdout.splitlines()]
    assert sorted((row["task"], row["outcome"]) for row in rows) == [
        ("hold", "lost"),
        ("note", "succeeded"),
        ("note", "succeeded"),
        ("note", "succeeded"),
    ]


def test_corrupt_database_is_refused_and_left_alone(tmp_path: Path, db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is no database" * 100)
    before = db.read_bytes()
    task_file = write(tmp_path / "tasks.toml", '[[task]]\nname = "t"\ncommand = ["true"]\n')
    done = subprocess.run(
        [*GOVERNOR, "serve", str(task_file), "--db", str(db)], capture_output=True, text=True, timeout=GUARD
    )
    assert done.returncode != 0
    assert "corrupt" in done.stderr or "not a governor database" in done.stderr
    assert db.read_bytes() == before


def test_locked_database_is_a_clear_error(tmp_path: Path, db: Path) -> None:
    task_file = write(tmp_path / "tasks.toml", '[[task]]\nname = "t"\ncommand = ["true"]\n')
    server = Server(task_file, db)  # creates the database
    server.wait_for("serving 1 task(s)")
    assert server.stop() == 0
    holder = sqlite3.connect(db, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        env = {**os.environ}
        done = subprocess.run(
            [*GOVERNOR, "serve", str(task_file), "--db", str(db)],
            capture_output=True,
            text=True,
            timeout=GUARD,
            env=env,
        )
    finally:
        holder.rollback()
        holder.close()
    assert done.returncode != 0
    assert "locked" in done.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[task]]\nname = "t"\ncommand = "ls -l"\n', "command"),
        ('[[task]]\nname = "t"\ncommand = ["true"]\ncron = "61 * * * *"\n', "cron"),
        ('[[task]]\nname = "t"\ncommand = ["true"]\ncrom = "* * * * *"\n', "crom"),
        ('[[task]]\nname = "t"\ncommand = ["true"]\n[task.limits]\nmemory = "12XB"\n', "memory"),
        ("[[task]\n", "tasks.toml"),
    ],
)
def test_bad_task_files_start_nothing(tmp_path: Path, db: Path, text: str, message: str) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(text)
    done = subprocess.run(
        [*GOVERNOR, "serve", str(task_file), "--db", str(db)], capture_output=True, text=True, timeout=GUARD
    )
    assert done.returncode == 2
    assert str(task_file) in done.stderr and message in done.stderr
    assert not db.exists()


def test_reload_never_drops_a_running_execution(tmp_path: Path, db: Path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    ready = tmp_path / "ready"
    body = f"""
        [[task]]
        name = "slow"
        command = ["sh", "-c", "touch {ready}; cat {gate}"]
        event = "go"
        priority = PRIORITY
        """
    task_file = write(tmp_path / "tasks.toml", body.replace("PRIORITY", "1"))
    server = Server(task_file, db)
    try:
        server.wait_for("serving 1 task(s)")
        assert governor("fire", "go", db=db).returncode == 0
        wait_until(ready.exists, GUARD)
        write(task_file, body.replace("PRIORITY", "2"))
        server.process.send_signal(signal.SIGHUP)
        assert "changed slow" in server.wait_for("reloaded")
        with open(gate, "w"):
            pass  # let the running execution finish
        assert "outcome=succeeded" in server.wait_for("task=slow")
        assert server.stop() == 0
    finally:
        server.stop(signal.SIGKILL)


def test_a_bad_budget_is_refused(tmp_path: Path, db: Path) -> None:
    task_file = write(tmp_path / "tasks.toml", '[[task]]\nname = "t"\ncommand = ["true"]\n')
    done = subprocess.run(
        [*GOVERNOR, "serve", str(task_file), "--db", str(db), "--memory-budget", "12XB"],
        capture_output=True, text=True, timeout=GUARD,
    )  # fmt: skip
    assert done.returncode == 2 and "memory_budget" in done.stderr
    assert not db.exists()


def test_history_filters_orders_by_start_and_names_an_unknown_task(tmp_path: Path, db: Path) -> None:
    """Attack: ``governor history nosuchtask`` printed an empty table and exited 0; its rows
    were ordered by start under a column headed "ended"."""
    from test_store import T0, record

    from governor.service._store import Store
    from runner import Outcome

    with Store(db) as store:
        for n, (task, outcome) in enumerate(
            [("backup", "succeeded"), ("report", "failed"), ("backup", "failed")]
        ):
            at = T0 + timedelta(minutes=n)
            store.finished(f"r{n}", task, record(outcome=Outcome(outcome), started_at=at, ended_at=at))
        store.flush(timeout=GUARD)
    table = governor("history", db=db)
    assert table.returncode == 0 and table.stdout.splitlines()[0].startswith("started")
    starts = [line[:19] for line in table.stdout.splitlines()[1:]]
    assert starts == sorted(starts) and len(starts) == 3

    def run_ids(*arguments: str) -> list[str]:
        done = governor("history", "--json", *arguments, db=db)
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["run_id"] for line in done.stdout.splitlines()]

    assert run_ids("--task", "backup") == ["r0", "r2"]
    assert run_ids("--outcome", "failed") == ["r1", "r2"]
    assert run_ids("backup", "--outcome", "failed", "--outcome", "succeeded") == ["r0", "r2"]
    assert run_ids("--since", (T0 + timedelta(minutes=1)).isoformat()) == ["r1", "r2"]
    unknown = governor("history", "nosuchtask", db=db)
    assert (
        unknown.returncode == 2
        and "no task 'nosuchtask'" in unknown.stderr
        and "backup, report" in unknown.stderr
    )
    bad = governor("history", "--outcome", "exploded", db=db)
    assert bad.returncode == 2 and "no outcome 'exploded'" in bad.stderr
