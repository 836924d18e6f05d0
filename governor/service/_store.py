"""The embedded SQLite store: task definitions and every execution, with its usage timeline.

Only the supervisor uses it, never a child. Data flow::

    caller threads                         writer thread (owns the write connection)
    ──────────────                         ─────────────────────────────────────────
    started() / finished() / save_tasks()
        build the row (validate, JSON)  ─►  pending list ─► one transaction per batch,
        return at once                      at most one commit per ``batch_interval``,
    flush() / close() ─► Event ──────────── set once everything queued before is committed
    mark_lost() ─► Future ───────────────── resolved when its own write is committed

    history() / timeline() / in_flight() / tasks()
        read connection, under a lock; sees committed data only

Every write goes to the spool beside the database (``_spool``) before it is queued, so a crash
loses none. A batch the database refuses as a whole (locked past the busy timeout, disk full,
read-only) is not dropped: the store is *degraded* (``health()`` says why and how many writes
wait), and the writer retries, with backoff, until it takes them; what is still waiting at
``close()`` stays in the spool and the next open replays it first. A single write the database
refuses on its own (a constraint) is logged (``governor.store``) and re-raised as
``StoreError`` from the next ``flush()`` or ``close()``; each write runs under its own
savepoint, so it does not sink the others in its batch.

Errors::

    StoreError          base: a write failed, the store is closed, or the schema is unknown
    ├── StoreCorrupt    the file is not a governor database, or SQLite says it is corrupt
    ├── StoreLocked     another process holds the write lock past the busy timeout
    └── StoreTooNew     the file was written by a newer governor (schema version above ours)

Schema: ``PRAGMA application_id`` marks the file as ours; ``PRAGMA user_version`` is the number
of ``MIGRATIONS`` (``_schema``) applied. Opening an older file applies the missing ones in one transaction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from governor.service import _schema
from governor.service._schema import (
    APPLICATION_ID,
    FINISHED_COLUMNS,
    finished_row,
    history_entry,
    in_flight_entry,
    iso,
    started_row,
    timestamp,
)
from governor.service._spool import DEFAULT_MAX_BYTES, Spool
from runner import Execution

__all__ = ["Store", "StoreCorrupt", "StoreError", "StoreLocked", "StoreTooNew", "default_db_path"]

log = logging.getLogger("governor.store")

_T = TypeVar("_T")
DEFAULT_MAX_OUTPUT = 64 << 10  # bytes of each stream an execution's row keeps


def default_db_path() -> Path:
    """Where the store lives unless told otherwise.

    ``$GOVERNOR_DB`` if set; else ``$XDG_STATE_HOME/governor/governor.db`` (an absolute
    ``XDG_STATE_HOME`` only, as the XDG spec asks); else ``~/.local/state/governor/governor.db``.
    """
    explicit = os.environ.get("GOVERNOR_DB")
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("XDG_STATE_HOME")
    base = Path(state) if state and os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "governor" / "governor.db"


# --------------------------------------------------------------------------------------- errors


class StoreError(Exception):
    """The store could not do what was asked; ``path`` is the database file."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        super().__init__(message)
        self.path = str(path)
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.message))


class StoreCorrupt(StoreError):
    """The file is not a governor database, or SQLite found it corrupt. It is left untouched."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(
            path, f"{path} is not a governor database or is corrupt: {reason}; move it aside to start afresh"
        )
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.reason))


class StoreLocked(StoreError):
    """Another connection held the database's write lock for longer than the busy timeout."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, f"{path} is locked by another process (is another `governor serve` using it?)")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path,))


class StoreTooNew(StoreError):
    """The file's schema version is newer than this code knows; it is refused, not downgraded."""

    def __init__(self, path: str | os.PathLike[str], schema: int, known: int) -> None:
        super().__init__(path, f"{path} was written by a newer governor (schema {schema} > {known})")
        self.schema = schema
        self.known = known

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.schema, self.known))


# ----------------------------------------------------------------------------------------- store


class Store:
    """The SQLite store of task definitions and executions (WAL; one writer thread).

    Opening creates the file and its parent directories if missing, and upgrades an older
    schema. It raises ``StoreCorrupt`` for a file that is not a governor database (which is
    never reset or overwritten), ``StoreLocked`` when another connection holds the write lock
    past ``busy_timeout`` seconds, and ``StoreTooNew`` for a schema newer than this code.

    Writes (``started``, ``finished``, ``save_tasks``) validate their arguments, queue the row
    and return; a writer thread commits everything queued at most every ``batch_interval``
    seconds, one transaction per batch. ``flush()`` waits for what was queued before it and
    raises ``StoreError`` if any write failed since the last ``flush``/``close``. Reads see
    committed data only: call ``flush()`` first to read your own latest writes. Timestamps
    are stored as ISO-8601 in UTC and returned as ISO-8601 strings (the JSON shape).

    Use as a context manager, or call ``close()``; a store dropped without either still
    commits its queue when garbage-collected or at interpreter exit.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        batch_interval: float = 0.2,
        max_spool_bytes: int = DEFAULT_MAX_BYTES,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        if not (isinstance(busy_timeout, int | float) and busy_timeout >= 0):
            raise ValueError(f"busy_timeout: must be seconds >= 0, got {busy_timeout!r}")
        if not (isinstance(batch_interval, int | float) and batch_interval >= 0):
            raise ValueError(f"batch_interval: must be seconds >= 0, got {batch_interval!r}")
        self.path = Path(path)
        self.max_output = max_output
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(self.path, f"could not create {self.path.parent}: {error.strerror}") from None
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            # SQLite would say only "unable to open database file"; the WAL and the spool
            # live beside the database, so the directory itself must take writes.
            why = (
                "is on a read-only file system"
                if _read_only(self.path.parent)
                else "is not writable by this user"
            )
            raise StoreError(self.path, f"could not open {self.path}: its directory {self.path.parent} {why}")
        if not self.path.exists():
            # Owner-only from the first byte (SQLite gives its -wal and -shm files the same
            # mode): no task, sandboxed as another user, can read or rewrite history.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        writer = _open(self.path, busy_timeout)
        try:
            reader = _connect(self.path, busy_timeout)
            reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as error:
            writer.close()
            raise _open_error(self.path, error) from error
        reader.row_factory = sqlite3.Row
        self._reader: sqlite3.Connection | None = reader
        self._read_lock = threading.Lock()
        self._writer = _Writer(writer, self.path, batch_interval, Spool(self.path, max_spool_bytes))
        # The writer thread holds no reference to the Store, so a forgotten store is collected
        # (or the interpreter exits) and this still commits its queue and closes both connections.
        self._finalizer = weakref.finalize(self, _forget, self._writer, reader)
        if self._writer.replaying:
            # Before anyone reads: recovery must see the executions a crash left in the spool.
            try:
                self._writer.flush(max(REPLAY_GIVE_UP, 2 * busy_timeout))
            except (TimeoutError, StoreError) as error:
                self.close()
                raise StoreError(self.path, f"could not replay {self._writer.spool_path}: {error}") from error

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}{', closed' if self._reader is None else ''})"

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- writes (queued) ------------------------------------------------------------------------

    def fired(self, fire_id: str, task: str, event: str, payload: Any) -> None:
        """Record a fire accepted for ``task`` (spooled before this returns): until an execution
        starts for it (``starting(cause=fire_id)``), ``pending_fires()`` lists it."""
        row = {
            "fire_id": fire_id,
            "task": task,
            "event": event,
            "payload": json.dumps(payload),
            "fired_at": timestamp(datetime.now(UTC), "now"),
        }
        self._writer.submit(_Request(f"fire {fire_id}", "fired", row))

    def forget_fire(self, fire_id: str) -> None:
        """A pending fire that will never start (its task is gone)."""
        self._writer.submit(_Request(f"forget fire {fire_id}", "unfired", {"fire_id": fire_id}))

    def pending_fires(self) -> list[dict[str, Any]]:
        """Fires accepted and never started, oldest first: ``fire_id``, ``task``, ``event``,
        ``payload`` (decoded), ``fired_at``."""
        sql = "SELECT fire_id, task, event, payload, fired_at FROM fires ORDER BY fired_at, rowid"
        return self._read(
            lambda db: [
                {**dict(row), "payload": json.loads(row["payload"]), "fired_at": iso(row["fired_at"])}
                for row in db.execute(sql)
            ]
        )

    def starting(
        self,
        run_id: str,
        task: str,
        attempt: int,
        queued_at: datetime | None,
        started_at: datetime,
        cause: str | None = None,
    ) -> None:
        """Record an execution about to start, before its child can do anything: a crash from
        here on leaves it in history (``lost``, if nothing more is learned). Spooled on disk
        before this returns. ``cause``: the fire it answers, no longer pending."""
        row = started_row(
            run_id=run_id,
            task=task,
            attempt=attempt,
            queued_at=queued_at,
            started_at=started_at,
            pid=None,
            pid_start_ticks=None,
            cgroups=[],
            limits={},
        )
        row["cause"] = cause
        self._writer.submit(_Request(f"starting {run_id}", "starting", row))

    def started(
        self,
        run_id: str,
        task: str,
        attempt: int,
        queued_at: datetime | None,
        started_at: datetime,
        pid: int | None,
        pid_start_ticks: int | None,
        cgroups: Sequence[str],
        limits: dict[str, Any],
    ) -> None:
        """Record an execution as in flight (``ended_at`` NULL) so that recovery can find it.

        Committed within ``batch_interval`` seconds without waiting for ``flush()``.
        """
        row = started_row(
            run_id=run_id,
            task=task,
            attempt=attempt,
            queued_at=queued_at,
            started_at=started_at,
            pid=pid,
            pid_start_ticks=pid_start_ticks,
            cgroups=cgroups,
            limits=limits,
        )
        self._writer.submit(_Request(f"started {run_id}", "started", row))

    def finished(self, run_id: str, task: str, record: Execution) -> None:
        """Record how an execution ended, with its timeline; inserts the row if ``started``
        was never called (an execution that could not start)."""
        row = finished_row(run_id, task, record)
        timeline = [[s.seconds, s.memory_bytes, s.cpu_seconds, s.processes] for s in record.usage.timeline]
        output = {
            stream: _text(captured, self.max_output)
            for stream, captured in (("stdout", record.stdout), ("stderr", record.stderr))
            if captured
        }
        data = {"row": row, "timeline": timeline, "output": output}
        request = _Request(f"finished {run_id}", "finished", data)
        request.lean = {"row": row, "timeline": [], "output": {}}
        self._writer.submit(request)

    def save_tasks(self, definitions: Iterable[tuple[str, dict[str, Any], str]]) -> None:
        """Insert or update task definitions: (name, JSON-able definition, fingerprint).

        ``updated_at`` moves only when the fingerprint changes. Tasks not listed are kept.
        """
        now = timestamp(datetime.now(UTC), "now")
        rows = [
            {"name": name, "definition": json.dumps(definition), "fingerprint": fingerprint, "now": now}
            for name, definition, fingerprint in definitions
        ]
        if rows:
            self._writer.submit(_Request(f"{len(rows)} task definitions", "tasks", {"rows": rows}))

    def mark_lost(self, run_ids: Sequence[str], reason: str) -> None:
        """Mark in-flight executions as ``lost`` (at recovery, after a supervisor crash).

        Synchronous: returns once committed (with every write queued before it), or raises
        ``StoreError``. Sets ``ended_at`` to now and the error to ``Lost: reason``; usage stays
        unknown. Rows that have already ended, and unknown ids, are left alone.
        """
        if not run_ids:
            return
        now = timestamp(datetime.now(UTC), "now")
        rows = [{"run_id": run_id, "ended_at": now, "reason": reason} for run_id in run_ids]
        reply: Future[None] = Future()
        self._writer.submit(_Request(f"lost {', '.join(run_ids)}", "lost", {"rows": rows}, reply))
        reply.result()

    def health(self) -> dict[str, Any]:
        """How the store is doing: ``degraded`` (why writes wait, or None), ``waiting``
        (writes not yet committed), ``spooled_bytes`` and ``memory_only`` (waiting writes that
        could not be spooled: lost if this process dies)."""
        return self._writer.health()

    def flush(self, timeout: float | None = None) -> None:
        """Block until every write queued before this call is committed.

        Raises ``StoreError`` if any write failed since the last ``flush()``/``close()`` (each
        failure is reported once), and ``TimeoutError`` if ``timeout`` seconds pass first.
        """
        self._writer.flush(timeout)

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the connections; idempotent.

        Raises ``StoreError`` if a write failed since the last ``flush()``, or if writes the
        database would not take could not be spooled either (they are lost). Writes that wait
        in the spool are not an error: the next open replays them.
        """
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        self._finalizer.detach()
        self._writer.close()

    # -- reads (committed data) -----------------------------------------------------------------

    def history(
        self,
        task: str | None = None,
        *,
        limit: int | None = None,
        since: datetime | None = None,
        outcomes: Sequence[str] | None = None,
        with_timeline: bool = False,
    ) -> list[dict[str, Any]]:
        """Executions, oldest first: those of ``task`` (all if None), started at or after
        ``since``, that ended in one of ``outcomes`` (any, and those in flight, if None), the
        latest ``limit`` of them.

        Each is a dict with the keys of ``Execution.to_dict()`` (``timeline`` only with
        ``with_timeline=True``) plus ``run_id`` and ``task``. An execution still in flight has
        ``outcome``, ``ended_at`` and the usage numbers None, and empty collections.
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit: must be a whole number >= 0, got {limit!r}")
        clauses: list[str] = []
        params: list[object] = []
        if task is not None:
            clauses.append("task = ?")
            params.append(task)
        if since is not None:
            clauses.append("started_at >= ?")
            params.append(timestamp(since, "since"))
        if outcomes is not None:
            clauses.append(f"outcome IN ({', '.join('?' * len(outcomes))})")
            params.extend(outcomes)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM executions {where} ORDER BY started_at, id"
        if limit is not None:
            sql = (
                f"SELECT * FROM (SELECT * FROM executions {where} ORDER BY started_at DESC, id DESC LIMIT ?)"
                " ORDER BY started_at, id"
            )
            params.append(limit)

        def query(db: sqlite3.Connection) -> list[dict[str, Any]]:
            found = []
            for row in db.execute(sql, params):
                entry = history_entry(row)
                if with_timeline:
                    entry["timeline"] = _samples(db, row["id"])
                found.append(entry)
            return found

        return self._read(query)

    def output(self, run_id: str) -> dict[str, str] | None:
        """What an execution printed, as far as it was kept: ``stdout`` and ``stderr`` (text,
        at most ``max_output`` bytes each); ``None`` for an unknown run."""

        def query(db: sqlite3.Connection) -> dict[str, str] | None:
            sql = (
                "SELECT o.stdout, o.stderr FROM executions e LEFT JOIN outputs o ON o.execution_id = e.id"
                " WHERE e.run_id = ?"
            )
            found = db.execute(sql, (run_id,)).fetchone()
            return None if found is None else {"stdout": found[0] or "", "stderr": found[1] or ""}

        return self._read(query)

    def timeline(self, run_id: str) -> list[dict[str, Any]]:
        """The usage samples of one execution, in order (empty if unknown or none)."""

        def query(db: sqlite3.Connection) -> list[dict[str, Any]]:
            found = db.execute("SELECT id FROM executions WHERE run_id = ?", (run_id,)).fetchone()
            return [] if found is None else _samples(db, found["id"])

        return self._read(query)

    def in_flight(self) -> list[dict[str, Any]]:
        """Executions with no end recorded, oldest first: what a crash may have left running.

        Each has ``run_id``, ``task``, ``attempt``, ``pid``, ``pid_start_ticks``, ``cgroups``
        (a list of cgroup directories), ``limits`` (a dict) and ``started_at``.
        """
        sql = (
            "SELECT run_id, task, attempt, pid, pid_start_ticks, cgroups, limits, started_at FROM executions"
            " WHERE ended_at IS NULL ORDER BY started_at, id"
        )
        return self._read(lambda db: [in_flight_entry(row) for row in db.execute(sql)])

    def task_names(self) -> list[str]:
        """The names of the tasks with executions on record, sorted."""
        sql = "SELECT DISTINCT task FROM executions ORDER BY task"
        return self._read(lambda db: [row["task"] for row in db.execute(sql)])

    def tasks(self) -> list[dict[str, Any]]:
        """Saved task definitions by name: ``name``, ``definition`` (dict), ``fingerprint``,
        ``updated_at``."""
        sql = "SELECT name, definition, fingerprint, updated_at FROM tasks ORDER BY name"
        return self._read(
            lambda db: [
                {
                    "name": row["name"],
                    "definition": json.loads(row["definition"]),
                    "fingerprint": row["fingerprint"],
                    "updated_at": iso(row["updated_at"]),
                }
                for row in db.execute(sql)
            ]
        )

    def _read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._read_lock:
            if self._reader is None:
                raise StoreError(self.path, f"store {self.path} is closed")
            try:
                # One snapshot for all the statements of a read.
                self._reader.execute("BEGIN")
                try:
                    return query(self._reader)
                finally:
                    self._reader.execute("ROLLBACK")
            except sqlite3.Error as error:
                raise StoreError(self.path, f"could not read {self.path}: {error}") from error


# ------------------------------------------------------------------------------- opening the file


def _text(captured: bytes, limit: int) -> str:
    """Captured output as text for the store: its first ``limit`` bytes, and what was cut."""
    kept = captured[:limit].decode("utf-8", "replace")
    cut = len(captured) - limit
    return kept + (f"\n[... {cut} more bytes not kept]\n" if cut > 0 else "")


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _forget(writer: _Writer, reader: sqlite3.Connection) -> None:
    """What a store collected without ``close()`` still does: commit its queue, close up."""
    writer.stop()
    reader.close()


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False: the write
    # connection is opened here and handed to the writer thread; reads are serialised by a lock.
    connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
    return connection


def _open(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """The write connection, on a file verified to be ours and migrated to the current schema."""
    try:
        connection = _connect(path, busy_timeout)
    except sqlite3.Error as error:
        raise StoreError(path, f"could not open {path}: {error}") from error
    try:
        _verify_and_migrate(connection, path)
        # Only now, once the file is known to be ours: switching to WAL rewrites the header.
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            log.warning("%s: SQLite refused WAL mode (kept %s); readers will wait for writers", path, mode)
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as error:
        connection.close()
        raise _open_error(path, error) from error
    except BaseException:
        connection.close()
        raise
    return connection


def _verify_and_migrate(connection: sqlite3.Connection, path: Path) -> None:
    # The write lock, taken up front, makes check-and-migrate atomic against another process
    # opening the same file, and is where a busy database shows itself.
    connection.execute("BEGIN IMMEDIATE")
    try:
        application_id = connection.execute("PRAGMA application_id").fetchone()[0]
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        objects = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        fresh = application_id == 0 and version == 0 and objects == 0
        if application_id != APPLICATION_ID and not fresh:
            raise StoreCorrupt(
                path,
                f"a SQLite database of another application (application_id {application_id:#x}, "
                f"{objects} schema objects)",
            )
        known = len(_schema.MIGRATIONS)
        if version > known:
            raise StoreTooNew(path, version, known)
        if version < known:
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            for migrate in _schema.MIGRATIONS[version:]:
                migrate(connection)
            connection.execute(f"PRAGMA user_version = {known}")
            if version:
                log.info("%s: schema upgraded from version %d to %d", path, version, known)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _open_error(path: Path, error: sqlite3.Error) -> StoreError:
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF  # the primary code, without extension
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreLocked(path)
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return StoreCorrupt(path, str(error))
    return StoreError(path, f"could not open {path}: {error}")


# ---------------------------------------------------------------------------------- writer thread


@dataclass(eq=False)
class _Request:
    """One queued write: what it is (for logs), which statement applies it (``_APPLY``) to
    what data (JSON-able: it is spooled), and who waits for it."""

    what: str
    op: str
    data: dict[str, Any]
    reply: Future[None] | None = field(default=None)
    lean: dict[str, Any] | None = field(default=None)  # a smaller form, if the spool is short of room
    line: bytes | None = field(default=None)  # its line in the spool, once spooled


REPLAY_GIVE_UP = 30.0  # seconds an open waits for the spool's replay before it gives up
RETRY_FIRST = 0.2  # seconds before a refused batch is tried again, doubling to RETRY_MOST
RETRY_MOST = 5.0


class _Writer:
    """The writer thread and its queue: all state under one condition, nothing of the Store."""

    def __init__(self, connection: sqlite3.Connection, path: Path, interval: float, spool: Spool) -> None:
        self._connection = connection
        self._path = path
        self._interval = interval
        self._spool = spool
        self._condition = threading.Condition()
        # What an earlier process left in the spool goes first, in its order.
        self._pending: list[_Request] = [
            _Request(f"spooled {op}", op, data, line=line) for op, data, line in spool.read()
        ]
        self.replaying = bool(self._pending)
        self.spool_path = spool.path
        if self._pending:
            log.warning("%s: replaying %d write(s) left in %s", path, len(self._pending), spool.path)
        self._flushes: list[threading.Event] = []
        self._urgent = False  # a caller is blocked on a queued write: commit without waiting
        self._closing = False
        self._failures: list[tuple[_Request, BaseException]] = []
        self._degraded: str | None = None
        self._lost_at_close = 0
        self.batches = 0  # committed transactions, for tests
        self._thread = threading.Thread(target=self._run, name=f"governor-store {path.name}", daemon=True)
        self._thread.start()

    def submit(self, request: _Request) -> None:
        with self._condition:
            if self._closing:
                raise StoreError(self._path, f"store {self._path} is closed; {request.what} not recorded")
            if request.reply is None:  # a caller that waits for its write needs no spool
                request.line = self._spool.write(request.op, request.data, request.lean)
            self._pending.append(request)
            self._urgent = self._urgent or request.reply is not None
            self._condition.notify()

    def health(self) -> dict[str, Any]:
        with self._condition:
            return {
                "degraded": self._degraded,
                "waiting": len(self._pending),
                "spooled_bytes": self._spool.size,
                "memory_only": sum(1 for r in self._pending if r.line is None and r.reply is None),
                "spool": str(self._spool.path),
            }

    def flush(self, timeout: float | None) -> None:
        done = threading.Event()
        with self._condition:
            closing = self._closing
            if not closing:
                self._flushes.append(done)
                self._condition.notify()
        if closing:
            self._thread.join(timeout)  # close() drains the queue: wait for it to finish
            committed = not self._thread.is_alive()
        else:
            committed = done.wait(timeout)
        if not committed:
            waiting = f" (the store is degraded: {self._degraded})" if self._degraded else ""
            raise TimeoutError(f"store {self._path}: queued writes not committed within {timeout}s{waiting}")
        self._raise_failures()

    def stop(self) -> None:
        """Commit the queue (one last try if degraded: what is left waits in the spool) and end
        the thread; failures are already logged."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._thread.join()
        self._connection.close()
        self._spool.close()

    def close(self) -> None:
        self.stop()
        if self._lost_at_close:
            raise StoreError(
                self._path,
                f"{self._lost_at_close} write(s) to {self._path} could be neither committed nor spooled "
                f"({self._degraded}; {self._spool.problem})",
            )
        self._raise_failures()

    def _raise_failures(self) -> None:
        with self._condition:
            failures, self._failures = self._failures, []
        if failures:
            request, error = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise StoreError(
                self._path, f"{len(failures)} write(s) to {self._path} failed: {request.what}: {error}{more}"
            ) from error

    def _run(self) -> None:
        last_commit = -math.inf
        retry = RETRY_FIRST
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending or self._flushes or self._closing)
                # At most one commit per interval, so bursts share a transaction; but nobody
                # blocked in flush(), mark_lost() or close() waits for the interval. A degraded
                # store waits out its backoff whoever waits (close() excepted: one last try).
                due = last_commit + (retry if self._degraded else self._interval)
                while not (self._closing or ((self._flushes or self._urgent) and not self._degraded)):
                    left = due - time.monotonic()
                    if left <= 0:
                        break
                    self._condition.wait(left)
                batch, self._pending = self._pending, []
                flushes, self._flushes = self._flushes, []
                self._urgent = False
                closing = self._closing
            refused = self._commit(batch) if batch else None
            last_commit = time.monotonic()
            with self._condition:
                if refused is None:
                    if self._degraded is not None:
                        log.warning(
                            "%s takes writes again: %d waiting write(s) committed", self._path, len(batch)
                        )
                    self._degraded = None
                    retry = RETRY_FIRST
                    # Nothing committed stays spooled; writes queued meanwhile keep their lines.
                    self._spool.keep_only([r.line for r in self._pending if r.line is not None])
                else:
                    self._pending[:0] = batch  # first again, in order
                    self._flushes[:0] = flushes
                    flushes = []
                    if self._degraded is None:
                        log.error(
                            "%s is degraded: %s; %d write(s) wait in %s and are retried",
                            self._path,
                            refused,
                            len(self._pending),
                            self._spool.path,
                        )
                    else:
                        retry = min(retry * 2, RETRY_MOST)
                    self._degraded = refused
                    if closing:
                        self._give_up_at_close()
            for done in flushes:
                done.set()
            if closing:
                return

    def _give_up_at_close(self) -> None:
        """Closing while degraded: spooled writes wait for the next open; the others are lost."""
        lost = [r for r in self._pending if r.line is None]
        for request in lost:
            if request.reply is not None:
                request.reply.set_exception(
                    StoreError(self._path, f"could not record {request.what}: {self._degraded}")
                )
        self._lost_at_close = sum(1 for r in lost if r.reply is None)
        kept = len(self._pending) - len(lost)
        if kept:
            log.warning("%s: %d write(s) wait in %s for the next open", self._path, kept, self._spool.path)
        if self._lost_at_close:
            log.error("%s: %d write(s) could not be spooled and are lost", self._path, self._lost_at_close)

    def _commit(self, batch: list[_Request]) -> str | None:
        """Apply ``batch`` in one transaction; ``None`` if committed (single refused writes
        are failures of their own), else why the database refused the whole batch."""
        db = self._connection
        failed: list[_Request] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for request in batch:
                db.execute("SAVEPOINT request")
                try:
                    _APPLY[request.op](db, request.data)
                except Exception as error:  # a bad write must not sink its batch-mates
                    if not db.in_transaction:
                        raise  # SQLite rolled back the whole transaction (disk full, I/O error)
                    db.execute("ROLLBACK TO request")
                    failed.append(request)
                    self._fail(request, error)
                db.execute("RELEASE request")
            db.execute("COMMIT")
        except Exception as error:  # the transaction itself failed: every write in it waits
            self._rollback()
            for request in failed:  # already reported: not retried
                batch.remove(request)
            return f"{type(error).__name__}: {error}"
        self.batches += 1
        for request in batch:
            if request.reply is not None and request not in failed:
                request.reply.set_result(None)
        return None

    def _rollback(self) -> None:
        try:
            if self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
        except sqlite3.Error as error:  # the connection is unusable; the next batch will say so
            log.error("could not roll back a failed batch on %s: %s", self._path, error)

    def _fail(self, request: _Request, error: BaseException) -> None:
        log.error("could not record %s in %s: %s", request.what, self._path, error)
        if request.reply is not None:
            failure = StoreError(self._path, f"could not record {request.what} in {self._path}: {error}")
            failure.__cause__ = error
            request.reply.set_exception(failure)
        else:
            with self._condition:
                self._failures.append((request, error))


# ------------------------------------------------------------------------------------- statements


_INSERT_STARTED = (
    "INSERT INTO executions (run_id, task, attempt, queued_at, started_at, pid, pid_start_ticks,"
    " cgroups, limits) VALUES (:run_id, :task, :attempt, :queued_at, :started_at, :pid,"
    " :pid_start_ticks, :cgroups, :limits)"
)


def _insert_starting(db: sqlite3.Connection, row: dict[str, Any]) -> None:
    db.execute(_INSERT_STARTED + " ON CONFLICT (run_id) DO NOTHING", row)
    if row.get("cause"):
        db.execute("DELETE FROM fires WHERE fire_id = ?", (row["cause"],))


def _insert_fired(db: sqlite3.Connection, row: dict[str, Any]) -> None:
    db.execute(
        "INSERT INTO fires (fire_id, task, event, payload, fired_at)"
        " VALUES (:fire_id, :task, :event, :payload, :fired_at) ON CONFLICT (fire_id) DO NOTHING",
        row,
    )


def _delete_fired(db: sqlite3.Connection, row: dict[str, Any]) -> None:
    db.execute("DELETE FROM fires WHERE fire_id = :fire_id", row)


def _insert_started(db: sqlite3.Connection, row: dict[str, Any]) -> None:
    # Fills in what the start learned (pid, cgroups, limits) on the row ``starting`` made; an
    # ended row (a replay after a crash) keeps its end.
    db.execute(
        _INSERT_STARTED + " ON CONFLICT (run_id) DO UPDATE SET started_at = excluded.started_at,"
        " pid = excluded.pid, pid_start_ticks = excluded.pid_start_ticks, cgroups = excluded.cgroups,"
        " limits = excluded.limits WHERE ended_at IS NULL",
        row,
    )


# The started row's pid_start_ticks and cgroups are kept; a queued_at or pid the record lacks
# does not erase the one recorded at start.
_UPSERT_FINISHED = (
    f"INSERT INTO executions (run_id, {', '.join(FINISHED_COLUMNS)})"
    f" VALUES (:run_id, {', '.join(':' + c for c in FINISHED_COLUMNS)})"
    " ON CONFLICT (run_id) DO UPDATE SET "
    + ", ".join(
        f"{c} = COALESCE(excluded.{c}, {c})" if c in ("queued_at", "pid") else f"{c} = excluded.{c}"
        for c in FINISHED_COLUMNS
    )
)


def _upsert_finished(db: sqlite3.Connection, data: dict[str, Any]) -> None:
    row, timeline = data["row"], data["timeline"]
    db.execute(_UPSERT_FINISHED, row)
    (execution_id,) = db.execute("SELECT id FROM executions WHERE run_id = ?", (row["run_id"],)).fetchone()
    db.execute("DELETE FROM samples WHERE execution_id = ?", (execution_id,))
    db.executemany(
        "INSERT INTO samples (execution_id, seconds, memory_bytes, cpu_seconds, processes)"
        " VALUES (?, ?, ?, ?, ?)",
        [(execution_id, *sample) for sample in timeline],
    )
    output = data.get("output") or {}
    db.execute("DELETE FROM outputs WHERE execution_id = ?", (execution_id,))
    if output:
        db.execute(
            "INSERT INTO outputs (execution_id, stdout, stderr) VALUES (?, ?, ?)",
            (execution_id, output.get("stdout"), output.get("stderr")),
        )


def _upsert_tasks(db: sqlite3.Connection, data: dict[str, Any]) -> None:
    rows = data["rows"]
    db.executemany(
        "INSERT INTO tasks (name, definition, fingerprint, updated_at)"
        " VALUES (:name, :definition, :fingerprint, :now)"
        " ON CONFLICT (name) DO UPDATE SET definition = excluded.definition,"
        " updated_at = CASE WHEN fingerprint = excluded.fingerprint THEN updated_at ELSE :now END,"
        " fingerprint = excluded.fingerprint",
        rows,
    )


def _mark_lost(db: sqlite3.Connection, data: dict[str, Any]) -> None:
    # Usage stays NULL: nothing was measured, and the store records no estimates.
    rows = data["rows"]
    db.executemany(
        "UPDATE executions SET outcome = 'lost', ended_at = :ended_at, error_type = 'Lost',"
        " error_message = :reason WHERE run_id = :run_id AND ended_at IS NULL",
        rows,
    )


_APPLY: dict[str, Callable[[sqlite3.Connection, dict[str, Any]], None]] = {
    "fired": _insert_fired,
    "unfired": _delete_fired,
    "starting": _insert_starting,
    "started": _insert_started,
    "finished": _upsert_finished,
    "tasks": _upsert_tasks,
    "lost": _mark_lost,
}


# ------------------------------------------------------------------------------------------ reads


def _samples(db: sqlite3.Connection, execution_id: int) -> list[dict[str, Any]]:
    sql = (
        "SELECT seconds, memory_bytes, cpu_seconds, processes FROM samples WHERE execution_id = ?"
        " ORDER BY rowid"
    )
    return [dict(row) for row in db.execute(sql, (execution_id,))]
