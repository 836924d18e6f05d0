"""``governor top``: the view rendered from known data, and from a real server and database."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from conftest import wait_until
from test_service import GOVERNOR, GUARD, Server, write

from governor.service._store import Store
from governor.views._top import render, snapshot

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
