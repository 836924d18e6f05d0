"""The store's schema, and an execution record's forms mapped into and out of it, in one place.

    Execution ──to_dict()──> dict form ──finished_row()──> row (the ``executions`` table)
                                  ^                            │
                                  └────history_entry()─────────┘  + run_id, task

The dict form is ``Execution.to_dict()``: what ``governor run --json``, ``history --json``,
reports and ``status`` show. ``FIELDS`` says, once, where each of its keys is stored and how it
is encoded; a row read back becomes the same dict. The samples of the timeline live in their
own table. ``MIGRATIONS`` bring a file from any older schema version to this one.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from policies import WAIT_REASON_LIMIT, bounded_reason
from runner import Execution

APPLICATION_ID = 0x47564E52  # "GVNR": tells our files apart from any other SQLite database

# The dict form's keys in ``to_dict`` order, each with how its column is encoded:
# "value" as it is, "seconds" a float (rounded back to the microsecond), "json" a JSON text,
# "time" a UTC ISO-8601 text of fixed width (so text order is time order), "error" the two
# columns error_type and error_message. ``timeline`` is the samples table.
FIELDS: tuple[tuple[str, str], ...] = (
    ("outcome", "value"),
    ("exit_code", "value"),
    ("signal", "value"),
    ("breached_limit", "value"),
    ("error", "error"),
    ("peak_memory_bytes", "value"),
    ("cpu_user_seconds", "seconds"),
    ("cpu_system_seconds", "seconds"),
    ("wall_seconds", "seconds"),
    ("peak_processes", "value"),
    ("oom_kills", "value"),
    ("cpu_throttled_seconds", "seconds"),
    ("memory_high_events", "value"),
    ("stall_seconds", "json"),
    ("memory_overshoot_bound_bytes", "value"),
    ("peak_rss_bytes", "value"),
    ("limits", "json"),
    ("enforcement", "json"),
    ("unenforced", "json"),
    ("started_at", "time"),
    ("ended_at", "time"),
    ("pid", "value"),
    ("attempt", "value"),
    ("queued_at", "time"),
    ("wait_reason", "value"),
    ("sandbox", "json"),
    ("notes", "json"),
    ("timeline", "samples"),
)

# Columns of a finished row, beyond run_id and task: the dict form's, and what only the store
# keeps (the traceback, where the peak came from).
FINISHED_COLUMNS: tuple[str, ...] = (
    "task",
    *(key for key, kind in FIELDS if kind not in ("error", "samples")),
    "error_type",
    "error_message",
    "traceback",
    "memory_source",
)


# -- the schema -------------------------------------------------------------------------------


def _v1(connection: sqlite3.Connection) -> None:
    # ``executescript`` would COMMIT the migration transaction half-way: one statement at a time.
    for statement in (
        """CREATE TABLE tasks (
            name TEXT PRIMARY KEY,
            definition TEXT NOT NULL,         -- JSON
            fingerprint TEXT NOT NULL,
            updated_at TEXT NOT NULL          -- when the definition last changed
        )""",
        """CREATE TABLE executions (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL UNIQUE,      -- the runner's execution id
            task TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            queued_at TEXT,
            started_at TEXT NOT NULL,
            ended_at TEXT,                    -- NULL while in flight
            outcome TEXT,
            exit_code INTEGER,
            signal INTEGER,
            breached_limit TEXT,
            error_type TEXT,
            error_message TEXT,
            traceback TEXT,
            peak_memory_bytes INTEGER,
            cpu_user_seconds REAL,
            cpu_system_seconds REAL,
            wall_seconds REAL,
            peak_processes INTEGER,
            oom_kills INTEGER,
            memory_source TEXT,
            limits TEXT NOT NULL DEFAULT '{}',      -- JSON
            enforcement TEXT NOT NULL DEFAULT '{}', -- JSON
            unenforced TEXT NOT NULL DEFAULT '[]',  -- JSON
            notes TEXT NOT NULL DEFAULT '[]',       -- JSON
            pid INTEGER,
            pid_start_ticks INTEGER,          -- with pid, names the process across pid reuse
            cgroups TEXT NOT NULL DEFAULT '[]',     -- JSON: cgroup dirs to clean up after a crash
            CHECK ((ended_at IS NULL) = (outcome IS NULL))
        )""",
        "CREATE INDEX executions_by_task ON executions (task, started_at)",
        "CREATE INDEX executions_by_start ON executions (started_at)",
        # Recovery asks for the rows still in flight: a partial index holds only those.
        "CREATE INDEX executions_in_flight ON executions (started_at) WHERE ended_at IS NULL",
        """CREATE TABLE samples (
            execution_id INTEGER NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
            seconds REAL NOT NULL,
            memory_bytes INTEGER NOT NULL,
            cpu_seconds REAL NOT NULL,
            processes INTEGER NOT NULL
        )""",
        "CREATE INDEX samples_by_execution ON samples (execution_id)",
    ):
        connection.execute(statement)


def _v2(connection: sqlite3.Connection) -> None:
    # Why admission held an execution back (it waited from queued_at to started_at).
    connection.execute("ALTER TABLE executions ADD COLUMN wait_reason TEXT")


def _v3(connection: sqlite3.Connection) -> None:
    # How long a cpu_rate limit held each execution back.
    connection.execute("ALTER TABLE executions ADD COLUMN cpu_throttled_seconds REAL")
    # Wait reasons written before they named tasks embedded the repr of internal objects,
    # thousands of characters long: rewrite them as a person would read them.
    rows = connection.execute(
        "SELECT id, wait_reason FROM executions WHERE length(wait_reason) > ? OR wait_reason LIKE ?",
        (WAIT_REASON_LIMIT, "%_Request(%"),
    ).fetchall()
    for row_id, reason in rows:
        connection.execute(
            "UPDATE executions SET wait_reason = ? WHERE id = ?", (readable_wait_reason(reason), row_id)
        )


def _v4(connection: sqlite3.Connection) -> None:
    # What executions printed (bounded per stream), kept here rather than in the server's memory.
    connection.execute(
        """CREATE TABLE outputs (
            execution_id INTEGER PRIMARY KEY REFERENCES executions (id) ON DELETE CASCADE,
            stdout TEXT,
            stderr TEXT
        )"""
    )


def _v5(connection: sqlite3.Connection) -> None:
    # Fires accepted but not yet started: a server that dies before it starts them fires them
    # again when it comes back, so an accepted fire is never silently lost.
    connection.execute(
        """CREATE TABLE fires (
            fire_id TEXT PRIMARY KEY,
            task TEXT NOT NULL,
            event TEXT NOT NULL,
            payload TEXT NOT NULL,       -- JSON
            fired_at TEXT NOT NULL
        )"""
    )


def _v6(connection: sqlite3.Connection) -> None:
    # How a sandboxed execution was confined, protection by protection (NULL: not sandboxed).
    connection.execute("ALTER TABLE executions ADD COLUMN sandbox TEXT")


def _v7(connection: sqlite3.Connection) -> None:
    # The soft-limit ladder and per-execution pressure (cgroup v2): times past memory_high, and
    # PSI stall seconds by resource. Older rows read as 0 and {}.
    connection.execute("ALTER TABLE executions ADD COLUMN memory_high_events INTEGER NOT NULL DEFAULT 0")
    connection.execute("ALTER TABLE executions ADD COLUMN stall_seconds TEXT NOT NULL DEFAULT '{}'")


def _v8(connection: sqlite3.Connection) -> None:
    # How far past its memory limit a run could have gone unseen (NULL: no memory limit, or a
    # row from before the watch said), and its largest process's peak RSS beside the cgroup's
    # charge (NULL: unknown).
    connection.execute("ALTER TABLE executions ADD COLUMN memory_overshoot_bound_bytes INTEGER")
    connection.execute("ALTER TABLE executions ADD COLUMN peak_rss_bytes INTEGER")


# Index i brings a database from schema version i to i + 1. Append only; never edit one that shipped.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8)

_HELD_BACK = re.compile(r"held back for _Request\(")
_TASK_NAME = re.compile(r"task=Task\(id=\d+, name=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")
_FUNCTION = re.compile(r"target=<(?:function|built-in function|bound method) ([\w.<>]+)")


def readable_wait_reason(reason: str) -> str:
    """An old wait reason as a person reads it: the queued run it was held back for named by
    its task (or its function), never by the repr of an internal object; at most
    ``WAIT_REASON_LIMIT`` characters."""
    if _HELD_BACK.search(reason):
        name = _TASK_NAME.search(reason)
        function = _FUNCTION.search(reason)
        if name is not None:
            who = name.group(1)[1:-1]
        elif function is not None:
            who = function.group(1)
        else:
            who = "an earlier queued run"
        reason = f"held back for {who}, which needs the resources first"
    return bounded_reason(reason)


# -- one execution in and out -----------------------------------------------------------------


def started_row(**fields: Any) -> dict[str, Any]:
    """The row of an execution that has started (``Store.started``'s arguments, encoded): what
    recovery needs if the supervisor dies."""
    return {
        **fields,
        "queued_at": optional_timestamp(fields["queued_at"], "queued_at"),
        "started_at": timestamp(fields["started_at"], "started_at"),
        "cgroups": json.dumps(list(fields["cgroups"])),
        "limits": json.dumps(fields["limits"]),
    }


def finished_row(run_id: str, task: str, record: Execution) -> dict[str, Any]:
    """The row of an ended execution (without its samples: ``record.usage.timeline``)."""
    form = record.to_dict()
    times = {"started_at": record.started_at, "ended_at": record.ended_at, "queued_at": record.queued_at}
    row: dict[str, Any] = {"run_id": run_id, "task": task}
    for key, kind in FIELDS:
        if kind in ("value", "seconds"):
            row[key] = form[key]
        elif kind == "json":
            row[key] = json.dumps(form[key])
        elif kind == "time":
            row[key] = optional_timestamp(times[key], key)
    error = record.error
    row["error_type"] = error.type if error else None
    row["error_message"] = error.message if error else None
    row["traceback"] = error.traceback if error else None
    row["memory_source"] = record.usage.memory_source
    return row


def history_entry(row: sqlite3.Row) -> dict[str, Any]:
    """A stored execution as ``run_id``, ``task`` and then the dict form (``timeline`` is left
    to the caller: it is another table)."""
    entry: dict[str, Any] = {"run_id": row["run_id"], "task": row["task"]}
    for key, kind in FIELDS:
        if kind == "value":
            entry[key] = row[key]
        elif kind == "seconds":
            entry[key] = None if row[key] is None else round(row[key], 6)
        elif kind == "json":
            entry[key] = json.loads(row[key]) if row[key] is not None else None
        elif kind == "time":
            entry[key] = iso(row[key])
        elif kind == "error":
            entry[key] = (
                None
                if row["error_type"] is None
                else {"type": row["error_type"], "message": row["error_message"]}
            )
    return entry


def in_flight_entry(row: sqlite3.Row) -> dict[str, Any]:
    """An execution with no end recorded, as recovery needs it."""
    return {
        **dict(row),
        "cgroups": json.loads(row["cgroups"]),
        "limits": json.loads(row["limits"]),
        "started_at": iso(row["started_at"]),
    }


# -- timestamps -------------------------------------------------------------------------------


def timestamp(value: datetime, what: str) -> str:
    """A stored timestamp: fixed width (always microseconds, always UTC), so that text order
    is time order in SQL."""
    if value.utcoffset() is None:
        raise ValueError(f"{what}: needs a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def optional_timestamp(value: datetime | None, what: str) -> str | None:
    """``timestamp`` of a value that may be missing."""
    return None if value is None else timestamp(value, what)


def iso(text: str | None) -> str | None:
    """A stored timestamp back in ``datetime.isoformat()``'s own spelling, as ``to_dict`` writes it."""
    return None if text is None else datetime.fromisoformat(text).isoformat()
