"""No record lost through store trouble: a database locked past the busy timeout, a full disk
(a real 1 MiB tmpfs), a read-only one, and a writer killed with SIGKILL mid-stream."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import wait_until
from guards import guard
from test_store import record

from governor.service._store import Store, StoreError

GUARD = guard(30)


@contextlib.contextmanager
def tmpfs(where: Path, size: str, *options: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` at ``where`` (root only)."""
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(where)]
    mounted = subprocess.run(mount, capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_database_locked_past_the_busy_timeout_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    with Store(db, busy_timeout=0.05, batch_interval=0.01) as store:
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            for n in range(6):
                store.finished(f"r{n}", "backup", record())
            wait_until(lambda: store.health()["degraded"] is not None, GUARD)
            health = store.health()
            assert "locked" in health["degraded"] and health["waiting"] >= 1
            assert health["spooled_bytes"] > 0 and health["memory_only"] == 0
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        store.flush(timeout=GUARD)
        assert [row["run_id"] for row in store.history()] == [f"r{n}" for n in range(6)]
        assert store.health() == {**store.health(), "degraded": None, "waiting": 0, "spooled_bytes": 0}


def test_a_full_disk_loses_nothing_once_space_comes_back(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "1M") as small:
        db = small / "g.db"
        with Store(db, batch_interval=0.01) as store:
            filler = small / "filler"
            with contextlib.suppress(OSError), filler.open("wb") as out:
                while True:
                    out.write(b"x" * 4096)
                    out.flush()
            for n in range(40):
                store.finished(f"r{n}", "backup", record())
            wait_until(lambda: store.health()["degraded"] is not None, GUARD)
            assert store.health()["waiting"] >= 1
            filler.unlink()  # the operator makes room
            store.flush(timeout=GUARD)
            assert len(store.history()) == 40
            assert store.health()["degraded"] is None


def test_a_read_only_disk_is_a_clear_error_at_open(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "1M", "ro") as disk:
        with pytest.raises(StoreError) as caught:
            Store(disk / "state" / "g.db")
        assert str(caught.value) == f"could not create {disk / 'state'}: Read-only file system"
        with pytest.raises(StoreError) as caught:
            Store(disk / "g.db")
        assert (
            str(caught.value)
            == f"could not open {disk / 'g.db'}: its directory {disk} is on a read-only file system"
        )


WRITER = """
import os, sys
sys.path[:0] = [{tests!r}]
from test_store import record
from governor.service._store import Store, StoreError
from datetime import UTC, datetime
store = Store({db!r}, batch_interval=3600)  # nothing is committed before the kill
for n in range(50):
    store.starting(f"s{{n}}", "backup", 1, None, datetime.now(UTC))
    if n % 2:
        store.finished(f"s{{n}}", "backup", record())
os.write(1, b"written\\n")
os.read(0, 1)  # killed here
"""


def test_a_writer_killed_before_any_commit_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    tests = str(Path(__file__).parent)
    script = textwrap.dedent(WRITER).format(tests=tests, db=str(db))
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as writer:
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"written\n"
        writer.send_signal(signal.SIGKILL)
        writer.wait(GUARD)
    with Store(db) as reopened:
        reopened.flush(timeout=GUARD)
        rows = {row["run_id"]: row for row in reopened.history()}
        assert sorted(rows) == sorted(f"s{n}" for n in range(50))
        assert {rows[f"s{n}"]["outcome"] for n in range(1, 50, 2)} == {"succeeded"}
        assert len(reopened.in_flight()) == 25  # recovery marks these lost
    assert not os.path.exists(str(db) + ".spool")  # replayed, then emptied and removed at close


def test_a_second_store_on_the_database_leaves_the_owners_spool_alone(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    with Store(db, busy_timeout=0.05, batch_interval=0.01) as owner:
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            owner.finished("waiting", "backup", record())
            wait_until(lambda: owner.health()["degraded"] is not None, GUARD)
            spooled = Path(str(db) + ".spool").read_bytes()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        with Store(db) as reader:  # governor history, while the server runs
            assert reader.health()["spooled_bytes"] == 0
        assert Path(str(db) + ".spool").read_bytes() in (spooled, b"")  # the owner's, or committed
        owner.flush(timeout=GUARD)
        assert [row["run_id"] for row in owner.history()] == ["waiting"]


def test_what_an_execution_printed_is_kept_in_the_store_bounded(tmp_path: Path) -> None:
    with Store(tmp_path / "g.db", max_output=10) as store:
        store.finished("r1", "backup", replace(record(), stdout=b"0123456789abcdef", stderr=b"oops\n"))
        store.finished("r2", "backup", record())
        store.flush(timeout=GUARD)
        assert store.output("r1") == {
            "stdout": "0123456789\n[... 6 more bytes not kept]\n",
            "stderr": "oops\n",
        }
        assert store.output("r2") == {"stdout": "", "stderr": ""}
        assert store.output("nobody") is None


def test_a_spool_cut_short_by_a_crash_replays_every_whole_line(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    with Store(db) as store:  # a database of ours, then a spool as a crash mid-write leaves it
        store.flush(timeout=GUARD)
    whole = '{"op":"starting","data":{"run_id":"r1","task":"t","attempt":1,"queued_at":null,'
    whole += '"started_at":"2026-12-01T00:00:00.000000+00:00","pid":null,"pid_start_ticks":null,'
    whole += '"cgroups":"[]","limits":"{}","cause":null}}\n'
    Path(str(db) + ".spool").write_text(whole + whole.replace('"r1"', '"r2"')[:40])
    with Store(db) as reopened:
        assert [row["run_id"] for row in reopened.in_flight()] == ["r1"]
    assert not Path(str(db) + ".spool").exists()
