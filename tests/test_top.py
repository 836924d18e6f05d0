"""``governor top``: the view rendered from known data, and from a real server and database."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import wait_until
from rich.console import Console
from test_service import GOVERNOR, GUARD, Server, write

from governor.service._store import Store
from governor.views._top import arrange, render, snapshot
from governor.views._top_live import State, style_for, view_of

NOW = datetime(2026, 11, 28, 12, 0, 10, tzinfo=UTC)


def test_render_shows_usage_against_limits_and_why_work_waits() -> None:
    view = {
        "source": "server",
        "pid": 42,
        "max_running_tasks": 2,
        "budget": {"memory_bytes": 3 << 30, "cpu_cores": 2.0},
        "pressure": {"memory": 0.25, "cpu": 0.0},
        "pressure_readings": {"source": "cgroup2 psi"},
        "running": [
            {
                "task": "backup",
                "attempt": 1,
                "run_id": "r1",
                "pid": 1234,
                "started_at": "2026-11-28T12:00:00+00:00",
                "memory_bytes": 768 << 20,
                "cpu_seconds": 4.0,
                "cpu_rate": 0.5,
                "limits": {"memory": 1 << 30, "cpu_rate": 1.0},
            },
        ],
        "queued": [
            {
                "task": "report",
                "attempt": 2,
                "priority": 5,
                "queued_at": "2026-11-28T12:00:07+00:00",
                "wait_reason": "waits for 2.5 GiB, 0.00 cores; 2.2 GiB, 1.00 cores free",
                "estimate_bytes": 5 << 29,
            },
        ],
    }
    lines = render(view, width=200, now=NOW).splitlines()
    assert "server pid 42" in lines[0]
    assert lines[1] == (
        "running 1 of 2, queued 1; memory 768.0 MiB of 3.0 GiB budget; cpu budget 2 cores;"
        " others' pressure memory 25% cpu 0% (from cgroup2 psi)"
    )
    assert lines[4].split() == [
        "backup",
        "1",
        "1234",
        "10.00s",
        "768.0",
        "MiB",
        "1.0",
        "GiB",
        "75%",
        "0.50",
        "1",
    ]
    assert lines[7].split()[:6] == ["report", "2", "5", "3.00s", "2.5", "GiB"]
    assert lines[7].endswith("waits for 2.5 GiB, 0.00 cores; 2.2 GiB, 1.00 cores free")
    assert "\x1b" not in "\n".join(lines)


def test_top_against_a_server_shows_running_and_queued_work(tmp_path: Path) -> None:
    db = tmp_path / "state" / "governor.db"
    ready = tmp_path / "ready"
    gate = tmp_path / "gate"
    import os

    os.mkfifo(gate)
    task_file = write(
        tmp_path / "tasks.toml",
        f"""
        [[task]]
        name = "holder"
        function = "task_helpers:wait_for_release"
        args = ["{gate}", "{ready}"]
        event = "go"
        [task.limits]
        memory = "256MiB"

        [[task]]
        name = "waiter"
        command = ["true"]
        event = "go"
        """,
    )
    server = Server(task_file, db, "--max-running", "1")
    try:
        server.wait_for("serving 2 task(s)")
        assert subprocess.run([*GOVERNOR, "fire", "go", "--db", str(db)], timeout=GUARD).returncode == 0
        wait_until(ready.exists, GUARD)

        def sampled() -> bool:  # the first sample comes one interval after the start
            status = subprocess.run([*GOVERNOR, "status", "--json", "--db", str(db)],
                                    capture_output=True, text=True, timeout=GUARD)  # fmt: skip
            running = json.loads(status.stdout)["running"] if status.returncode == 0 else []
            return bool(running) and running[0]["memory_bytes"] is not None

        wait_until(sampled, GUARD, interval=0.05)
        done = subprocess.run(
            [*GOVERNOR, "top", "--db", str(db)], capture_output=True, text=True, timeout=GUARD
        )
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in done.stdout  # not a terminal: plain text, printed once
        running = next(line for line in done.stdout.splitlines() if line.startswith("holder"))
        assert "256.0 MiB" in running and "%" in running
        assert any(line.startswith("waiter") and "no free slot" in line for line in done.stdout.splitlines())
        frames = subprocess.run(
            [*GOVERNOR, "top", "--db", str(db), "--json", "--count", "2", "--interval", "0.05"],
            capture_output=True, text=True, timeout=GUARD,
        )  # fmt: skip
        views = [json.loads(line) for line in frames.stdout.splitlines()]
        assert len(views) == 2 and views[1]["running"][0]["task"] == "holder"
        assert views[1]["running"][0]["memory_bytes"] > 0 and "cpu_rate" in views[1]["running"][0]
        with open(gate, "wb"):
            pass
        server.wait_for("task=holder")
    finally:
        assert server.stop(signal.SIGTERM) == 0


def test_without_a_server_top_reads_the_database_and_measures_the_trees(tmp_path: Path) -> None:
    db = tmp_path / "governor.db"
    child = subprocess.Popen(["sleep", "60"])
    try:
        with Store(db) as store:
            store.started(
                "run-1", "sleeper", 1, None, datetime.now(UTC), child.pid, None, [], {"memory": 1 << 30}
            )
            store.flush()
        view = snapshot(db)
        assert view["source"] == "database"
        (run,) = view["running"]
        assert run["task"] == "sleeper" and run["pid"] == child.pid and run["memory_bytes"] > 0
        assert run["limits"] == {"memory": 1 << 30}
        assert "sleeper" in render(view)
    finally:
        child.kill()
        child.wait()


def test_no_server_and_no_database_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [*GOVERNOR, "top", "--db", str(tmp_path / "none.db")], capture_output=True, text=True, timeout=GUARD
    )
    assert done.returncode == 3 and "no server answers" in done.stderr


def test_keys_sort_filter_and_quit() -> None:
    state = State()
    for key, sort, task in (("m", "memory", ""), ("c", "cpu", ""), ("c", None, ""), ("a", "age", "")):
        state.key(key)
        assert (state.sort, state.task) == (sort, task)
    for key in "/hol\x7fld\r":  # typed, one mistake taken back, Enter
        state.key(key)
    assert state.task == "hold" and state.typing is None
    state.key("\x1b")
    assert state.task == "" and not state.done
    state.key("q")
    assert state.done


def test_arrange_sorts_and_filters_the_running() -> None:
    running = [
        {"task": "small", "memory_bytes": 1, "cpu_rate": 0.9, "started_at": "2024-05-01T12:00:02+00:00"},
        {"task": "Big", "memory_bytes": 9, "cpu_rate": 0.1, "started_at": "2024-05-01T12:00:01+00:00"},
        {"task": "mid", "memory_bytes": 5, "cpu_rate": None, "started_at": "2024-05-01T12:00:03+00:00"},
    ]
    assert [run["task"] for run in arrange(running, sort="memory")] == ["Big", "mid", "small"]
    assert [run["task"] for run in arrange(running, sort="cpu")] == ["small", "Big", "mid"]
    assert [run["task"] for run in arrange(running, sort="age")] == ["Big", "small", "mid"]
    assert [run["task"] for run in arrange(running, task="BI")] == ["Big"]
    with pytest.raises(ValueError, match="sort"):
        arrange(running, sort="size")


def test_a_run_near_its_limit_is_coloured() -> None:
    view = {
        "source": "server", "pid": 1,
        "running": [
            {"task": "at-limit", "run_id": "a", "memory_bytes": 97 << 20, "cpu_rate": 0.1,
             "started_at": "2024-05-01T12:00:00+00:00", "limits": {"memory": 100 << 20}},
            {"task": "busy", "run_id": "b", "memory_bytes": 1 << 20, "cpu_rate": 0.85,
             "started_at": "2024-05-01T12:00:00+00:00", "limits": {"cpu_rate": 1.0}},
            {"task": "calm", "run_id": "c", "memory_bytes": 10 << 20, "cpu_rate": 0.1,
             "started_at": "2024-05-01T12:00:00+00:00", "limits": {"memory": 100 << 20}},
        ],
        "queued": [],
    }  # fmt: skip
    assert (style_for(0.97), style_for(0.85), style_for(0.1), style_for(None)) == (
        "bold red",
        "yellow",
        "",
        "",
    )
    console = Console(record=True, width=120, force_terminal=True, color_system="standard")
    console.print(view_of(view, State(), now=NOW))
    lines = {line.split()[0]: line for line in console.export_text(styles=True).splitlines() if line.split()}
    assert "\x1b[1;31m97.0 MiB" in lines["at-limit"] and "\x1b[33m0.85" in lines["busy"]
    assert "\x1b[3" not in lines["calm"].split("calm", 1)[1]  # no colour for a run far from its limits


def test_top_on_a_terminal_takes_keys_and_quits_on_q(tmp_path: Path) -> None:
    """Real: ``governor top`` in a pseudo-terminal, against a database with a run in flight."""
    db = tmp_path / "governor.db"
    child = subprocess.Popen(["sleep", "60"])
    try:
        with Store(db) as store:
            for run_id, task in (("run-1", "sleeper"), ("run-2", "other")):
                store.started(
                    run_id, task, 1, None, datetime.now(UTC), child.pid, None, [], {"memory": 1 << 30}
                )
            store.flush()
        fd, terminal = pty.openpty()
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # 40 rows, 160 columns
        top = subprocess.Popen(
            [*GOVERNOR, "top", "--db", str(db), "--interval", "0.2"],
            stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
            env={**os.environ, "COLUMNS": "160", "LINES": "40"},  # pytest sets 80x24, which rich reads first
        )  # fmt: skip
        os.close(terminal)
        screen = _Screen(fd)
        try:
            screen.wait_for("sleeper")
            os.write(fd, b"/sle\r")  # filter by task
            screen.wait_for("tasks matching 'sle'")
            os.write(fd, b"m")
            screen.wait_for("sorted by memory")
            os.write(fd, b"q")
            assert top.wait(timeout=GUARD) == 0
        finally:
            if top.poll() is None:
                top.kill()
                top.wait()
            os.close(fd)
    finally:
        child.kill()
        child.wait()


class _Screen:
    """What a pseudo-terminal's program has written, read until a text appears."""

    def __init__(self, fd: int) -> None:
        self.fd, self.seen = fd, b""

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + GUARD  # a deadlock guard
        while text.encode() not in re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", self.seen):  # styles apart
            assert time.monotonic() < deadline, self.seen[-2000:]
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                self.seen += os.read(self.fd, 65536)


def test_piped_nothing_is_cut() -> None:
    """Attack: piped, long task names and wait reasons were cut at 24 and 100 columns."""
    name = "a-task-with-a-name-much-longer-than-twenty-four-characters"
    reason = "waits for 1.2 GiB; 800.0 MiB free (expected in 4.0s), " + "and a long explanation " * 4
    view = {
        "source": "server", "pid": 1,
        "running": [{"task": name, "run_id": "r", "started_at": "2026-11-28T12:00:00+00:00", "limits": {}}],
        "queued": [{"task": name, "queued_at": "2026-11-28T12:00:00+00:00", "wait_reason": reason}],
    }  # fmt: skip
    text = render(view, now=NOW)
    assert f"{name} " in text and reason.strip() in text and "…" not in text
