"""The service's commands: ``governor serve``, ``status``, ``history``, ``output``, ``report``
and ``fire``.

``serve`` runs in the foreground; ``status`` and ``fire`` talk to it over its control socket
(a unix socket beside the database, owner-only); ``history`` and ``report`` read the database
itself, so they work whether or not a server is running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from governor.service import FORMATS, LEVELS

if TYPE_CHECKING:
    from governor.service._store import Store

# The store, the service and what they import load only in the subcommands that use them:
# registering these subcommands must cost ``governor run`` nothing.
from policies import format_duration, format_size, parse_size

EXIT_BAD_TASK_FILE = 2
EXIT_STORE = 1
EXIT_NO_SERVER = 3
EXIT_MISSING_DEPENDENCY = 4  # an optional extra (e.g. plotly for ``report --format html``) is not installed

REPORT_HTML_DEFAULT = "governor-report.html"


T = TypeVar("T")


def add_commands(commands: Any) -> None:
    """Register the service's subcommands on the ``governor`` parser."""
    db_help = "the database (default: $GOVERNOR_DB, else $XDG_STATE_HOME/governor/governor.db)"

    serve_parser = commands.add_parser("serve", help="run a task file's schedule in the foreground")
    serve_parser.add_argument("task_file", metavar="TASKS.toml", type=Path)
    serve_parser.add_argument("--db", type=Path, help=db_help)
    serve_parser.add_argument("--max-running", type=int, default=os.cpu_count() or 1, metavar="N")
    serve_parser.add_argument(
        "--grace", type=float, default=10.0, metavar="S", help="seconds running executions get at shutdown"
    )
    serve_parser.add_argument(
        "--memory-budget",
        metavar="SIZE|auto|off",
        default="auto",
        help="admission control: memory the running executions may share"
        " (default auto: 80%% of the host's, or of the governor's own cgroup's, memory)",
    )
    serve_parser.add_argument(
        "--cpu-budget",
        metavar="CORES|auto|off",
        default="auto",
        help="admission control: cores they may share (default auto: the CPUs it may use)",
    )
    serve_parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the executions on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786)",
    )
    serve_parser.add_argument(
        "--log-level", choices=LEVELS, default="info", help="the least severe records logged (default: info)"
    )
    serve_parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text (one escaped line per record) or json (one object per line, for log shippers)",
    )
    serve_parser.add_argument(
        "--max-payload",
        default="16MiB",
        metavar="SIZE",
        help="the largest event payload fire accepts, as JSON (default: 16MiB)",
    )
    serve_parser.add_argument(
        "--socket-mode",
        default="600",
        metavar="MODE",
        help="the control socket's mode, octal: 600 (the default: this user and root), 660 (also"
        " this user's group) or 666 (anyone); refused with sandboxed tasks where they could use it",
    )
    serve_parser.set_defaults(handler=_serve)

    status = commands.add_parser("status", help="what a running server is running and queuing")
    status.add_argument("--db", type=Path, help=db_help)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)

    history = commands.add_parser(
        "history", help="past executions, from the database", description="Past executions, oldest first."
    )
    history.add_argument("task", nargs="?", metavar="TASK", help="only this task's executions")
    history.add_argument("--task", dest="task_option", metavar="TASK", help="the same as TASK")
    history.add_argument(
        "--since", metavar="WHEN", help="only those started since WHEN: 7d, 12h, or an ISO 8601 date"
    )
    history.add_argument(
        "--outcome",
        action="append",
        metavar="OUTCOME",
        help="only those that ended so (succeeded, failed, memory_exceeded, ...); repeat for several",
    )
    history.add_argument("--db", type=Path, help=db_help)
    history.add_argument("--json", action="store_true", help="JSON Lines, one execution per line")
    history.add_argument("--limit", type=int, metavar="N", help="only the last N executions")
    history.set_defaults(handler=_history)

    output = commands.add_parser("output", help="what one execution printed, as the store kept it")
    output.add_argument("run_id", metavar="RUN_ID", help="its run id (governor history --json shows them)")
    output.add_argument("--stream", choices=("stdout", "stderr", "both"), default="both")
    output.add_argument("--db", type=Path, help=db_help)
    output.set_defaults(handler=_output)

    report = commands.add_parser("report", help="per-task figures from the database (table, JSON, CSV, HTML)")
    report.add_argument("tasks", nargs="*", metavar="TASK", help="only these tasks (default: every task)")
    report.add_argument(
        "--since",
        metavar="WHEN",
        help="executions started since an ISO date/time or a duration ago (7d, 12h)",
    )
    report.add_argument("--format", choices=("table", "json", "csv", "html"), default="table")
    report.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help=f"write to FILE (html: ./{REPORT_HTML_DEFAULT})"
    )
    report.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="RUN_ID",
        help="html: also chart this execution's timelines (repeatable; default: each task's largest peak)",
    )
    report.add_argument("--db", type=Path, help=db_help)
    report.set_defaults(handler=_report)

    fire = commands.add_parser("fire", help="fire an event on a running server")
    fire.add_argument("event", metavar="EVENT")
    given = fire.add_mutually_exclusive_group()
    given.add_argument("--payload", metavar="JSON", help="a JSON value handed to the task")
    given.add_argument(
        "--payload-file",
        metavar="FILE",
        help="read the JSON payload from FILE ('-': standard input), any size",
    )
    fire.add_argument("--db", type=Path, help=db_help)
    fire.set_defaults(handler=_fire)


def _db(arguments: argparse.Namespace) -> Path:
    from governor.service._store import default_db_path

    return Path(arguments.db) if arguments.db else default_db_path()


def _serve(arguments: argparse.Namespace) -> int:
    from governor.service._service import serve
    from governor.service._store import StoreError
    from governor.service._taskfile import TaskFileError

    if arguments.max_running < 1:
        print(f"governor: --max-running: must be at least 1, got {arguments.max_running}", file=sys.stderr)
        return EXIT_BAD_TASK_FILE
    try:
        # Budgets are checked before anything is opened: a typo must not touch the store.
        memory_budget = _budget_option(arguments.memory_budget, "memory_budget", parse_size)
        cpu_budget = _budget_option(arguments.cpu_budget, "cpu_budget", _cores)
        max_payload = parse_size(arguments.max_payload, field="max_payload")
        socket_mode = _socket_mode(arguments.socket_mode)
        return serve(
            arguments.task_file,
            _db(arguments),
            max_running=arguments.max_running,
            grace=arguments.grace,
            memory_budget=memory_budget,
            cpu_budget=cpu_budget,
            dask=arguments.dask,
            log_level=arguments.log_level,
            log_format=arguments.log_format,
            max_payload=max_payload,
            socket_mode=socket_mode,
        )
    except (TaskFileError, ValueError) as error:  # a bad file, or a bad budget
        print(f"governor: {error}", file=sys.stderr)
        return EXIT_BAD_TASK_FILE
    except (StoreError, RuntimeError) as error:  # a bad store, or another server on it
        print(f"governor: {error}", file=sys.stderr)
        return EXIT_STORE


def _socket_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise ValueError(f"socket_mode: expected an octal mode such as 600, got {text!r}") from None
    from governor.service._control import check_socket_mode

    return check_socket_mode(mode)


def _budget_option(text: str, name: str, parse: Any) -> Any:
    """``auto`` (the default), ``off`` (no admission control on that resource), or a value."""
    if text in ("auto", "off"):
        return None if text == "off" else text
    return parse(text, field=name)


def _cores(text: str, field: str) -> float:
    try:
        cores = float(text)
    except ValueError:
        raise ValueError(f"{field}: expected a number of cores, 'auto' or 'off', got {text!r}") from None
    if not cores > 0:
        raise ValueError(f"{field}: must be a positive number of cores, got {text!r}")
    return cores


def _request(arguments: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any] | None:
    from governor.service._control import ask, socket_path

    path = socket_path(_db(arguments))
    try:
        return ask(path, request)
    except (OSError, ValueError) as error:
        print(f"governor: no governor serve answers for {_db(arguments)} ({path}: {error})", file=sys.stderr)
        return None


def _status(arguments: argparse.Namespace) -> int:
    reply = _request(arguments, {"op": "status"})
    if reply is None:
        return EXIT_NO_SERVER
    if arguments.json:
        print(json.dumps(reply))
        return 0
    print(f"server pid {reply['pid']}, task file {reply['task_file']}, store {reply['db']}")
    store = reply.get("store") or {}
    if store.get("degraded"):
        print(
            f"store DEGRADED: {store['degraded']}; {store['waiting']} record(s) wait "
            f"({store['spooled_bytes']} bytes in {store['spool']}, {store['memory_only']} in memory only)"
        )
    print(f"running {len(reply['running'])} of at most {reply['max_running_tasks']}:")
    for run in reply["running"]:
        memory = format_size(run["memory_bytes"]) if run["memory_bytes"] is not None else "-"
        limit = run["limits"].get("memory")
        print(f"  {run['task']:<24} attempt {run['attempt']}  pid {run['pid']}  memory {memory}"
              + (f" of {format_size(limit)}" if limit else ""))  # fmt: skip
    total = reply.get("queued_total", len(reply["queued"]))
    shown = f" (the first {len(reply['queued'])} shown)" if total > len(reply["queued"]) else ""
    print(f"queued {total}{shown}:")
    for queued in reply["queued"]:
        why = f"  ({queued['wait_reason']})" if queued.get("wait_reason") else ""
        print(f"  {queued['task']:<24} attempt {queued['attempt']}  priority {queued['priority']}{why}")
    if reply.get("loop_errors"):
        print(f"scheduler loop errors: {reply['loop_errors']} (a bug the loop carried on from; see the log)")
    print("tasks:")
    for task in reply["tasks"]:
        state = "paused" if task["paused"] else "active"
        last = task["last_outcome"] or "-"
        triggers = ", ".join(task["triggers"]) or "fired by hand"
        print(f"  {task['name']:<24} {state:<7} runs {task['runs']:<5} last {last:<18} {triggers}")
    return 0


def _fire(arguments: argparse.Namespace) -> int:
    payload = None
    option, text = "--payload", arguments.payload
    if arguments.payload_file is not None:
        option = "--payload-file"
        try:
            if arguments.payload_file == "-":
                text = sys.stdin.read()
            else:
                text = Path(arguments.payload_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            print(f"governor: --payload-file: cannot read {arguments.payload_file}: {error}", file=sys.stderr)
            return EXIT_BAD_TASK_FILE
    if text is not None:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            print(f"governor: {option}: not valid JSON: {error}", file=sys.stderr)
            return EXIT_BAD_TASK_FILE
    reply = _request(arguments, {"op": "fire", "event": arguments.event, "payload": payload})
    if reply is None:
        return EXIT_NO_SERVER
    if not reply.get("ok"):
        print(f"governor: {reply.get('error')}", file=sys.stderr)
        return EXIT_STORE
    print(f"fired {arguments.event!r} for {reply['fired']} task(s)")
    return 0


def _existing_db(arguments: argparse.Namespace) -> Path | None:
    """The database to read, or ``None`` (and why, on stderr) when there is none yet."""
    db = _db(arguments)
    if db.exists():
        return db
    print(f"governor: no database at {db} (nothing has run yet?)", file=sys.stderr)
    return None


def _read_store(arguments: argparse.Namespace, read: Callable[[Store], T]) -> tuple[Path, T] | None:
    """What ``read`` finds in the database (it must exist); None, and why on stderr, if not."""
    from governor.service._store import Store, StoreError

    db = _existing_db(arguments)
    if db is None:
        return None
    try:
        with Store(db) as store:
            return db, read(store)
    except StoreError as error:
        print(f"governor: {error}", file=sys.stderr)
        return None


def _history(arguments: argparse.Namespace) -> int:
    from governor.views._report import parse_since
    from runner._records import Outcome

    if arguments.task and arguments.task_option and arguments.task != arguments.task_option:
        print(
            f"governor: history: two tasks given ({arguments.task!r}, {arguments.task_option!r})",
            file=sys.stderr,
        )
        return EXIT_BAD_TASK_FILE
    task = arguments.task or arguments.task_option
    known = [outcome.value for outcome in Outcome]
    for outcome in arguments.outcome or ():
        if outcome not in known:
            print(f"governor: --outcome: no outcome {outcome!r} (one of {', '.join(known)})", file=sys.stderr)
            return EXIT_BAD_TASK_FILE
    try:
        since = parse_since(arguments.since, datetime.now(UTC)) if arguments.since else None
    except ValueError as error:
        print(f"governor: {error}", file=sys.stderr)
        return EXIT_BAD_TASK_FILE

    def read(store: Store) -> tuple[list[dict[str, Any]], list[str]]:
        rows = store.history(task, limit=arguments.limit, since=since, outcomes=arguments.outcome)
        return rows, store.task_names() if task is not None and not rows else []

    found = _read_store(arguments, read)
    if found is None:
        return EXIT_STORE
    db, (rows, names) = found
    if task is not None and not rows and task not in names:
        there = f"; tasks on record: {', '.join(names)}" if names else "; it has no executions yet"
        print(f"governor: no task {task!r} in {db}{there}", file=sys.stderr)
        return EXIT_BAD_TASK_FILE
    if arguments.json:
        for row in rows:
            print(json.dumps(row, default=str))
        return 0
    # Oldest first by start, as the first column says; a run in flight has no end yet.
    print(
        f"{'started':<20} {'task':<20} {'try':>3} {'outcome':<18} {'wall':>8} {'peak memory':>12} {'cpu':>8}"
    )
    for row in rows:
        started = (row.get("started_at") or "-")[:19].replace("T", " ")
        wall = format_duration(row["wall_seconds"]) if row.get("wall_seconds") is not None else "-"
        peak = format_size(row["peak_memory_bytes"]) if row.get("peak_memory_bytes") is not None else "-"
        user, system = row.get("cpu_user_seconds"), row.get("cpu_system_seconds")
        cpu = f"{(user or 0) + (system or 0):.2f}s" if user is not None else "-"
        outcome = row.get("outcome") or "running"
        print(
            f"{started:<20} {row['task']:<20} {row['attempt']:>3} {outcome:<18} {wall:>8} {peak:>12} {cpu:>8}"
        )
    return 0


def _output(arguments: argparse.Namespace) -> int:
    found = _read_store(arguments, lambda store: store.output(arguments.run_id))
    if found is None:
        return EXIT_STORE
    db, kept = found
    if kept is None:
        print(f"governor: no execution {arguments.run_id!r} in {db}", file=sys.stderr)
        return EXIT_STORE
    for stream in ("stdout", "stderr"):
        if arguments.stream in (stream, "both") and kept[stream]:
            target = sys.stdout if stream == "stdout" else sys.stderr
            target.write(kept[stream])
            target.flush()
    return 0


def _report(arguments: argparse.Namespace) -> int:
    from governor.service._store import Store, StoreError
    from governor.views import _report as report  # loaded only for this command
    from governor.views import _report_html as report_html

    html = arguments.format == "html"
    try:
        since = report.parse_since(arguments.since, datetime.now(UTC)) if arguments.since else None
        if arguments.run and not html:
            raise ValueError("--run: only the html format charts timelines")
        if html:
            report_html.require_plotly()  # before a long read, not after it
    except report_html.MissingDependency as error:
        print(f"governor: {error}", file=sys.stderr)
        return EXIT_MISSING_DEPENDENCY
    except ValueError as error:
        print(f"governor: {error}", file=sys.stderr)
        return EXIT_BAD_TASK_FILE
    db = _existing_db(arguments)
    if db is None:
        return EXIT_STORE
    progress = report.terminal_progress(sys.stderr)
    try:
        with Store(db) as store:
            charted = arguments.run if html else None
            data = report.read(
                store, tasks=arguments.tasks, since=since, chart_runs=charted, progress=progress
            )
    except report.ReportError as error:
        print(f"governor: {error}", file=sys.stderr)
        return EXIT_BAD_TASK_FILE
    except StoreError as error:
        print(f"governor: {error}", file=sys.stderr)
        return EXIT_STORE
    reports = report.build_reports(data.rows)
    scope = report.scope_text(since)
    for task in sorted(set(arguments.tasks) - {r.task for r in reports}):
        print(f"governor: no executions of {task!r}{scope}", file=sys.stderr)
    if arguments.format == "json":
        text = report.render_json(reports, since=since)
    elif arguments.format == "csv":
        text = report.render_csv(reports)
    elif html:
        generated_at = datetime.now().astimezone()
        text = report_html.render_html(
            reports, data, generated_at=generated_at, since=since, source=str(db), progress=progress
        )
    else:
        text = report.render_table(reports, since=since)
    output = arguments.output or (Path(REPORT_HTML_DEFAULT) if html else None)
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        print(f"governor: cannot write the report to {output}: {error}", file=sys.stderr)
        return EXIT_STORE
    print(output.resolve())
    return 0
