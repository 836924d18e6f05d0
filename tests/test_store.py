"""The SQLite store: opening (fresh, reopened, migrated, refused), queued writes and their
durability, reads in the JSON shape of ``Execution.to_dict()``, recovery, and failures that
surface instead of vanishing. No executions are run: records are built by hand.
"""

from __future__ import annotations

import gc
import logging
import pickle
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import wait_until
from guards import guard

from governor.service import _schema
from governor.service._store import (
    APPLICATION_ID,
    Store,
    StoreCorrupt,
    StoreError,
    StoreLocked,
    StoreTooNew,
    default_db_path,
)
from policies import Limits
from runner import Execution, Outcome, Sample, TaskError, Usage

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
GUARD = guard(30)  # seconds: a deadlock guard, never a delay


def record(**changes: Any) -> Execution:
    """A finished execution with every field set to something worth round-tripping."""
    base = Execution(
        outcome=Outcome.SUCCEEDED,
        exit_code=0,
        signal=None,
        breached_limit=None,
        error=None,
        usage=Usage(
            peak_memory_bytes=12 << 20,
            cpu_user_seconds=0.123456789,
            cpu_system_seconds=0.01,
            wall_seconds=1.5,
            peak_processes=3,
            timeline=(
                Sample(0.1, 1 << 20, 0.01, 1),
                Sample(0.2, 5 << 20, 0.05, 3),
                Sample(0.3, 4 << 20, 0.1, 2),
            ),
            oom_kills=0,
            memory_source="cgroup",
        ),
        limits=Limits(memory="64M", wall_time=10),
        enforcement={"memory": "cgroup2", "wall_time": "deadline"},
        unenforced=("cpu_rate",),
        started_at=T0,
        ended_at=T0 + timedelta(seconds=1.5),
        pid=4321,
        notes=("memory peak from cgroup",),
        attempt=1,
        queued_at=T0 - timedelta(seconds=2),
    )
    return replace(base, **changes)


def failed(**changes: Any) -> Execution:
    """A record of a task that raised."""
    error = TaskError(type="builtins.ValueError", message="bad input", traceback="Traceback ...\n")
    return record(outcome=Outcome.FAILED, exit_code=1, error=error, **changes)


def start(store: Store, run_id: str, task: str = "backup", *, at: datetime = T0, **changes: Any) -> None:
    """Record ``run_id`` as in flight."""
    arguments: dict[str, Any] = {
        "attempt": 1,
        "queued_at": at - timedelta(seconds=2),
        "started_at": at,
        "pid": 4321,
        "pid_start_ticks": 987654,
        "cgroups": [f"/sys/fs/cgroup/governor/{run_id}"],
        "limits": {"memory": 64 << 20},
    }
    store.started(run_id, task, **{**arguments, **changes})


def raw(path: Path) -> closing[sqlite3.Connection]:
    """A plain connection to the file, as another process would have."""
    return closing(sqlite3.connect(path, isolation_level=None))


def scalar(path: Path, sql: str) -> Any:
    """The single value ``sql`` selects, read through a plain connection."""
    with raw(path) as db:
        return db.execute(sql).fetchone()[0]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A database path whose parent directories do not exist yet."""
    return tmp_path / "state" / "governor" / "governor.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    """An open store, closed (and its failures raised) at teardown."""
    with Store(db_path) as opened:
        yield opened


# ------------------------------------------------------------------------------------- opening


def test_default_db_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GOVERNOR_DB", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert default_db_path() == tmp_path / "home" / ".local" / "state" / "governor" / "governor.db"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert default_db_path() == tmp_path / "home" / ".local" / "state" / "governor" / "governor.db"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "xdg" / "governor" / "governor.db"
    monkeypatch.setenv("GOVERNOR_DB", str(tmp_path / "explicit.db"))
    assert default_db_path() == tmp_path / "explicit.db"


def test_creates_file_and_parents_in_wal_mode_and_reopens(db_path: Path) -> None:
    with Store(db_path) as store:
        start(store, "r1")
    assert db_path.is_file()
    assert scalar(db_path, "PRAGMA journal_mode") == "wal"
    assert scalar(db_path, "PRAGMA application_id") == APPLICATION_ID
    assert scalar(db_path, "PRAGMA user_version") == len(_schema.MIGRATIONS)
    with Store(db_path) as store:
        assert [row["run_id"] for row in store.in_flight()] == ["r1"]


def test_rejects_bad_arguments(db_path: Path) -> None:
    with pytest.raises(ValueError, match="busy_timeout"):
        Store(db_path, busy_timeout=-1)
    with pytest.raises(ValueError, match="batch_interval"):
        Store(db_path, batch_interval=-0.1)


def test_corrupt_file_is_refused_and_left_untouched(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    garbage = bytes(range(256)) * 16
    db_path.write_bytes(garbage)
    with pytest.raises(StoreCorrupt) as caught:
        Store(db_path)
    assert str(caught.value).startswith(f"{db_path} is not a governor database or is corrupt: ")
    assert str(caught.value).endswith("; move it aside to start afresh")
    assert db_path.read_bytes() == garbage
    assert list(db_path.parent.iterdir()) == [db_path]  # no journal or WAL left beside it


def test_foreign_sqlite_database_is_refused_and_left_untouched(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with raw(db_path) as db:
        db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
        db.execute("INSERT INTO photos (path) VALUES ('holiday.jpg')")
    before = db_path.read_bytes()
    with pytest.raises(StoreCorrupt, match="another application"):
        Store(db_path)
    assert db_path.read_bytes() == before
    assert scalar(db_path, "PRAGMA journal_mode") == "delete"  # not switched to WAL


def test_locked_database_raises_store_locked(db_path: Path) -> None:
    Store(db_path).close()
    with raw(db_path) as other:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreLocked) as caught:
            Store(db_path, busy_timeout=0.05)
        assert str(caught.value) == (
            f"{db_path} is locked by another process (is another `governor serve` using it?)"
        )
        other.execute("ROLLBACK")
    Store(db_path).close()


def test_newer_schema_is_refused(db_path: Path) -> None:
    Store(db_path).close()
    known = len(_schema.MIGRATIONS)
    with raw(db_path) as db:
        db.execute(f"PRAGMA user_version = {known + 3}")
    with pytest.raises(StoreTooNew) as caught:
        Store(db_path)
    assert isinstance(caught.value, StoreError)
    assert str(caught.value) == f"{db_path} was written by a newer governor (schema {known + 3} > {known})"
    assert scalar(db_path, "PRAGMA user_version") == known + 3


def test_migrates_from_version_zero(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with raw(db_path) as db:  # marked as ours, but no schema yet
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    with Store(db_path) as store:
        assert store.history() == []
    assert scalar(db_path, "PRAGMA user_version") == len(_schema.MIGRATIONS)


def test_migrates_an_older_schema_keeping_its_data(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store(db_path) as store:  # a database at today's version ...
        store.finished("r1", "backup", record())
    known = len(_schema.MIGRATIONS)

    def add_labels(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE executions ADD COLUMN labels TEXT NOT NULL DEFAULT '[]'")

    # ... opened by a governor that knows one migration more.
    monkeypatch.setattr(_schema, "MIGRATIONS", (*_schema.MIGRATIONS, add_labels))
    with Store(db_path) as store:
        assert [entry["run_id"] for entry in store.history()] == ["r1"]
        assert store.timeline("r1") == [asdict(sample) for sample in record().usage.timeline]
    assert scalar(db_path, "PRAGMA user_version") == known + 1
    assert scalar(db_path, "SELECT labels FROM executions") == "[]"


def test_a_version_1_database_gains_wait_reasons(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:  # written by the governor that knew schema 1 only
        patch.setattr(_schema, "MIGRATIONS", _schema.MIGRATIONS[:1])
        with Store(db_path):
            pass
        with raw(db_path) as db:  # a row as that governor wrote it
            db.execute(
                "INSERT INTO executions (run_id, task, attempt, started_at, ended_at, outcome)"
                " VALUES ('old', 'backup', 1, '2026-01-01T00:00:00.000000+00:00',"
                " '2026-01-01T00:00:01.000000+00:00', 'succeeded')"
            )
    assert scalar(db_path, "PRAGMA user_version") == 1
    with Store(db_path) as store:
        assert [(e["run_id"], e["wait_reason"]) for e in store.history()] == [("old", None)]
        store.finished("new", "backup", replace(record(), wait_reason="no free slot"))
        store.flush()
        reasons = {e["run_id"]: e["wait_reason"] for e in store.history()}
        assert reasons == {"old": None, "new": "no free slot"}
    assert scalar(db_path, "PRAGMA user_version") == len(_schema.MIGRATIONS)


def test_the_schema_knows_every_key_of_the_dict_form() -> None:
    assert [key for key, _kind in _schema.FIELDS] == list(record().to_dict())


def test_version_3_rewrites_wait_reasons_that_embedded_internal_objects(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wait reasons once carried the repr of a queued request, thousands of characters of it."""
    task_request = (
        "held back for _Request(spec=ExecutionSpec(target=['make'], args=(), limits=Limits(memory=1.0 GiB)), "
        "priority=0, attempt=1, task=Task(id=3, name='nightly build', priority=0, triggers=[]), "
        + "x" * 5000
        + "), which needs the resources first"
    )
    call_request = (
        "held back for _Request(spec=ExecutionSpec(target=<function render_page at 0x7f00>, args=(1,)), "
        "priority=0, task=None), which needs the resources first"
    )
    with monkeypatch.context() as patch:  # written by the governor that knew schema 2
        patch.setattr(_schema, "MIGRATIONS", _schema.MIGRATIONS[:2])
        with Store(db_path):
            pass
    with raw(db_path) as db:  # rows as that governor wrote them
        for run_id, reason in (("a", task_request), ("b", call_request), ("c", "no free slot")):
            db.execute(
                "INSERT INTO executions (run_id, task, attempt, started_at, ended_at, outcome, wait_reason)"
                " VALUES (?, 't', 1, '2026-01-01T00:00:00.000000+00:00',"
                " '2026-01-01T00:00:01.000000+00:00', 'succeeded', ?)",
                (run_id, reason),
            )
    with Store(db_path) as store:
        reasons = {entry["run_id"]: entry["wait_reason"] for entry in store.history()}
    assert reasons == {
        "a": "held back for nightly build, which needs the resources first",
        "b": "held back for render_page, which needs the resources first",
        "c": "no free slot",
    }


def test_failed_migration_changes_nothing(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(db_path).close()
    known = len(_schema.MIGRATIONS)

    def half_done(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half (x)")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(_schema, "MIGRATIONS", (*_schema.MIGRATIONS, half_done))
    with pytest.raises(RuntimeError, match="migration bug"):
        Store(db_path)
    assert scalar(db_path, "PRAGMA user_version") == known
    assert scalar(db_path, "SELECT count(*) FROM sqlite_master WHERE name = 'half'") == 0


# -------------------------------------------------------------------------------------- writes


def test_started_row_is_in_flight_after_flush(store: Store) -> None:
    start(store, "r1", cgroups=["/sys/fs/cgroup/a", "/sys/fs/cgroup/b"])
    store.flush(timeout=GUARD)
    assert store.in_flight() == [
        {
            "run_id": "r1",
            "task": "backup",
            "attempt": 1,
            "pid": 4321,
            "pid_start_ticks": 987654,
            "cgroups": ["/sys/fs/cgroup/a", "/sys/fs/cgroup/b"],
            "limits": {"memory": 64 << 20},
            "started_at": T0.isoformat(),
        }
    ]


def test_started_row_is_committed_without_flush(db_path: Path) -> None:
    with Store(db_path) as store:  # the default batch interval: committed promptly, unasked
        start(store, "r1")
        wait_until(lambda: scalar(db_path, "SELECT count(*) FROM executions WHERE run_id = 'r1'"), GUARD)


def test_finished_fills_the_started_row_in_the_shape_of_to_dict(store: Store) -> None:
    start(store, "r1")
    store.flush(timeout=GUARD)
    (in_flight,) = store.history()
    expected_keys = (set(record().to_dict()) - {"timeline"}) | {"run_id", "task"}
    assert set(in_flight) == expected_keys
    assert in_flight["outcome"] is None
    assert in_flight["ended_at"] is None
    assert in_flight["limits"] == {"memory": 64 << 20}

    done = failed(notes=("one", "two"))
    store.finished("r1", "backup", done)
    store.flush(timeout=GUARD)
    (entry,) = store.history()
    assert entry == {"run_id": "r1", "task": "backup"} | {
        key: value for key, value in done.to_dict().items() if key != "timeline"
    }
    assert store.in_flight() == []


def test_finished_keeps_what_only_the_start_knew(db_path: Path, store: Store) -> None:
    start(store, "r1")
    store.finished("r1", "backup", record(queued_at=None, pid=None))
    store.flush(timeout=GUARD)
    (entry,) = store.history()
    assert entry["queued_at"] == (T0 - timedelta(seconds=2)).isoformat()
    assert entry["pid"] == 4321
    with raw(db_path) as db:
        assert db.execute("SELECT pid_start_ticks, cgroups FROM executions").fetchone() == (
            987654,
            '["/sys/fs/cgroup/governor/r1"]',
        )


def test_finished_without_started_inserts_the_row(store: Store) -> None:
    unstarted = Execution.unstarted(Limits(memory="1G"), OSError("fork failed"))
    store.finished("r1", "backup", unstarted)
    store.flush(timeout=GUARD)
    (entry,) = store.history(with_timeline=True)
    assert entry == {"run_id": "r1", "task": "backup"} | unstarted.to_dict()
    assert store.in_flight() == []


def test_samples_round_trip(store: Store) -> None:
    done = record()
    store.finished("r1", "backup", done)
    store.flush(timeout=GUARD)
    assert store.timeline("r1") == [asdict(sample) for sample in done.usage.timeline]
    assert store.timeline("unknown") == []
    (entry,) = store.history(with_timeline=True)
    assert entry == {"run_id": "r1", "task": "backup"} | done.to_dict()


def test_finishing_twice_replaces_the_samples(store: Store) -> None:
    store.finished("r1", "backup", record())
    store.finished("r1", "backup", record(usage=replace(record().usage, timeline=(Sample(9.0, 9, 9.0, 9),))))
    store.flush(timeout=GUARD)
    assert store.timeline("r1") == [{"seconds": 9.0, "memory_bytes": 9, "cpu_seconds": 9.0, "processes": 9}]


def test_many_writes_share_transactions(db_path: Path) -> None:
    # An interval no test outlives: only the first write, and the flush, can cause a commit.
    with Store(db_path, batch_interval=3600) as store:
        for n in range(300):
            start(store, f"r{n}", at=T0 + timedelta(seconds=n))
            store.finished(f"r{n}", "backup", record(started_at=T0 + timedelta(seconds=n)))
        store.flush(timeout=GUARD)
        assert store._writer.batches <= 2
        entries = store.history()
    assert [entry["run_id"] for entry in entries] == [f"r{n}" for n in range(300)]
    assert all(entry["outcome"] == "succeeded" for entry in entries)
    assert scalar(db_path, "SELECT count(*) FROM samples") == 300 * len(record().usage.timeline)


def test_save_tasks(store: Store) -> None:
    store.save_tasks(
        [("backup", {"command": ["tar"], "every": "1h"}, "f1"), ("report", {"cron": "@daily"}, "f2")]
    )
    store.flush(timeout=GUARD)
    first = {task["name"]: task for task in store.tasks()}
    assert list(first) == ["backup", "report"]
    assert first["backup"]["definition"] == {"command": ["tar"], "every": "1h"}
    assert first["backup"]["fingerprint"] == "f1"

    store.save_tasks(
        [("backup", {"command": ["tar"], "every": "1h"}, "f1"), ("report", {"cron": "@hourly"}, "f3")]
    )
    store.flush(timeout=GUARD)
    second = {task["name"]: task for task in store.tasks()}
    assert second["backup"]["updated_at"] == first["backup"]["updated_at"]  # same fingerprint
    assert second["report"]["definition"] == {"cron": "@hourly"}
    assert second["report"]["updated_at"] >= first["report"]["updated_at"]


def test_arguments_are_checked_in_the_callers_thread(store: Store) -> None:
    with pytest.raises(ValueError, match="started_at: needs a timezone-aware datetime"):
        start(store, "r1", started_at=datetime(2024, 5, 1, 12, 0))
    with pytest.raises(TypeError):
        start(store, "r2", limits={"memory": object()})
    with pytest.raises(TypeError):
        store.save_tasks([("backup", {"callable": object()}, "f1")])
    store.flush(timeout=GUARD)
    assert store.history() == []


def test_timestamps_are_stored_in_utc(db_path: Path, store: Store) -> None:
    paris = T0.astimezone(ZoneInfo("Europe/Paris"))
    start(store, "r1", started_at=paris)
    store.flush(timeout=GUARD)
    assert scalar(db_path, "SELECT started_at FROM executions") == "2024-05-01T12:00:00.000000+00:00"
    assert store.in_flight()[0]["started_at"] == T0.isoformat()


# --------------------------------------------------------------------------------------- reads


def test_history_filters(store: Store) -> None:
    for n in range(6):
        task = "backup" if n % 2 == 0 else "report"
        at = T0 + timedelta(minutes=n)
        store.finished(f"r{n}", task, record(started_at=at, ended_at=at + timedelta(seconds=1)))
    start(store, "r6", "backup", at=T0 + timedelta(minutes=6))
    store.flush(timeout=GUARD)

    def ids(entries: list[dict[str, Any]]) -> list[str]:
        return [entry["run_id"] for entry in entries]

    assert ids(store.history()) == ["r0", "r1", "r2", "r3", "r4", "r5", "r6"]
    assert ids(store.history("backup")) == ["r0", "r2", "r4", "r6"]
    assert ids(store.history(limit=2)) == ["r5", "r6"]  # the latest, oldest first
    assert ids(store.history("report", limit=2)) == ["r3", "r5"]
    assert ids(store.history(since=T0 + timedelta(minutes=3))) == ["r3", "r4", "r5", "r6"]
    assert ids(store.history("backup", since=T0 + timedelta(minutes=1), limit=1)) == ["r6"]
    assert store.history(limit=0) == []
    assert store.history("nobody") == []
    assert store.task_names() == ["backup", "report"]
    store.finished("r7", "report", record(outcome=Outcome.FAILED, started_at=T0 + timedelta(minutes=7)))
    store.flush(timeout=GUARD)
    assert ids(store.history(outcomes=["failed"])) == ["r7"]
    assert ids(store.history("backup", outcomes=["succeeded", "failed"])) == ["r0", "r2", "r4"]  # r6 runs
    with pytest.raises(ValueError, match="limit"):
        store.history(limit=-1)


def test_mark_lost(store: Store) -> None:
    start(store, "r1", at=T0)
    start(store, "r2", at=T0 + timedelta(seconds=1))
    start(store, "r3", at=T0 + timedelta(seconds=2))
    store.finished("r3", "backup", record(started_at=T0 + timedelta(seconds=2)))
    # No flush: mark_lost waits for its own write, and for everything queued before it.
    store.mark_lost(["r1", "r3", "unknown"], "the supervisor died while it ran")
    entries = {entry["run_id"]: entry for entry in store.history()}
    assert entries["r1"]["outcome"] == "lost"
    assert entries["r1"]["error"] == {"type": "Lost", "message": "the supervisor died while it ran"}
    assert entries["r1"]["ended_at"] is not None
    assert entries["r1"]["wall_seconds"] is None  # not measured, so not made up
    assert entries["r3"]["outcome"] == "succeeded"  # it had ended: left alone
    assert [row["run_id"] for row in store.in_flight()] == ["r2"]


# ------------------------------------------------------------------------- durability, failure


def test_flushed_writes_are_durable(db_path: Path) -> None:
    store = Store(db_path)
    try:
        store.finished("r1", "backup", record())
        store.flush(timeout=GUARD)
        assert scalar(db_path, "SELECT outcome FROM executions WHERE run_id = 'r1'") == "succeeded"
        with Store(db_path) as second:
            assert [entry["run_id"] for entry in second.history()] == ["r1"]
    finally:
        store.close()


def test_close_commits_the_queue(db_path: Path) -> None:
    with Store(db_path, batch_interval=3600) as store:
        for n in range(10):
            start(store, f"r{n}")
    assert scalar(db_path, "SELECT count(*) FROM executions") == 10


def test_a_forgotten_store_still_commits_its_queue(db_path: Path) -> None:
    store = Store(db_path, batch_interval=3600)
    start(store, "r1")
    del store
    gc.collect()
    assert scalar(db_path, "SELECT count(*) FROM executions") == 1


def test_closed_store_refuses_writes_and_reads(db_path: Path) -> None:
    store = Store(db_path)
    store.close()
    store.close()  # idempotent
    store.flush()
    with pytest.raises(StoreError, match="is closed"):
        start(store, "r1")
    with pytest.raises(StoreError, match="is closed"):
        store.history()


def test_a_failing_write_is_logged_and_raised_from_flush(
    db_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with raw(db_path) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON executions WHEN NEW.task = 'doomed'"
            " BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
        )
    start(store, "good1")
    start(store, "bad", "doomed")
    start(store, "good2")
    with caplog.at_level(logging.ERROR, logger="governor.store"), pytest.raises(StoreError) as caught:
        store.flush(timeout=GUARD)
    assert "started bad" in str(caught.value)
    assert "refused by a test trigger" in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    assert any("started bad" in message for message in caplog.messages)
    # Its batch-mates were committed, and the failure is reported once.
    assert [row["run_id"] for row in store.in_flight()] == ["good1", "good2"]
    store.flush(timeout=GUARD)


def test_a_write_the_full_database_refuses_waits_in_the_spool_for_the_next_open(db_path: Path) -> None:
    store = Store(db_path)
    # The writer's connection may not grow the file: SQLite's own "disk is full".
    store._writer._connection.execute("PRAGMA max_page_count = 1")
    many = tuple(Sample(n / 10, n, n / 100, 1) for n in range(5000))
    store.finished("r1", "backup", record(usage=replace(record().usage, timeline=many)))
    wait_until(lambda: store.health()["degraded"] is not None, GUARD)
    assert "full" in store.health()["degraded"]
    store.close()  # nothing is lost: it waits on disk
    with Store(db_path) as reopened:
        reopened.flush(timeout=GUARD)
        assert [row["run_id"] for row in reopened.history()] == ["r1"]
        assert len(reopened.timeline("r1")) == 5000
        assert reopened.health()["spooled_bytes"] == 0


def test_mark_lost_failure_is_raised_at_once(db_path: Path, store: Store) -> None:
    start(store, "r1")
    store.flush(timeout=GUARD)
    with raw(db_path) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON executions"
            " BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
        )
    with pytest.raises(StoreError, match="could not record lost r1"):
        store.mark_lost(["r1"], "crash")
    store.flush(timeout=GUARD)  # already reported, so not again


def test_a_busy_database_delays_writes_without_losing_them(db_path: Path) -> None:
    with Store(db_path, busy_timeout=GUARD) as store, raw(db_path) as other:
        other.execute("BEGIN EXCLUSIVE")
        start(store, "r1")
        with pytest.raises(TimeoutError):
            store.flush(timeout=0.05)
        other.execute("ROLLBACK")
        store.flush(timeout=GUARD)
        assert [row["run_id"] for row in store.in_flight()] == ["r1"]


@pytest.mark.parametrize(
    "error",
    [
        StoreError("/x.db", "could not open /x.db: disk I/O error"),
        StoreCorrupt("/x.db", "file is not a database"),
        StoreLocked("/x.db"),
        StoreTooNew("/x.db", 3, 1),
    ],
    ids=lambda error: type(error).__name__,
)
def test_errors_pickle(error: StoreError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)
