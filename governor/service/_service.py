"""``governor serve``: a task file's schedule, run in the foreground for months.

start:  load the task file (invalid: fail fast, start nothing) ─> open the store (corrupt
        or locked: fail, never reset) ─> recover: executions the last run left in flight
        are killed (cgroups, pid + start time, cookie) and recorded ``lost`` ─> schedule
run:    one log line per execution; every start and end goes to the store (batched, off
        the loop); a unix socket beside the database answers status and fire requests
SIGHUP: reload the file; unchanged tasks keep running, changed ones are replaced, removed
        ones leave (their running executions finish)
SIGTERM / SIGINT: stop triggering, give running executions ``grace`` seconds, cancel the
        rest, flush the store, exit 0
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import logging
import os
import pwd
import select
import signal
import sys
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from governor.abc import ExecutionListener
from governor.backends.dask import cluster_backend
from governor.observe._telemetry import Telemetry
from governor.scheduling._scheduler import Scheduler
from governor.scheduling._task import Task
from governor.scheduling._triggers import EventTrigger
from governor.service._control import ControlServer
from governor.service._estimates import learn_from_history
from governor.service._log import configure, unconfigure
from governor.service._store import Store, StoreError
from governor.service._taskfile import TaskDefinition, load_task_file
from policies import Sandbox, format_duration, format_size
from runner import Execution, Handle, kill_leftovers, new_execution_id, sweep_orphan_cgroups

log = logging.getLogger("governor.serve")
DEFAULT_MAX_PAYLOAD = 16 << 20  # bytes of one event payload, as JSON


class StoreRecorder(ExecutionListener):
    """The scheduler's listener: every start and end to the store, one log line per end."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def execution_starting(
        self, task: Task | None, attempt: int, run_id: str, queued_at: datetime, cause: str | None
    ) -> None:
        self._store.starting(run_id, task.name if task else "", attempt, queued_at, datetime.now(UTC), cause)

    def execution_started(self, task: Task | None, attempt: int, handle: Handle, queued_at: datetime) -> None:
        self._store.started(
            run_id=handle.id,
            task=task.name if task else "",
            attempt=attempt,
            queued_at=queued_at,
            started_at=handle.started_at,
            pid=handle.pid,
            pid_start_ticks=handle.pid_start_ticks,
            cgroups=handle.cgroups,
            limits=handle.spec.limits.as_dict(),
        )

    def execution_finished(self, task: Task | None, run_id: str | None, record: Execution) -> None:
        name = task.name if task else ""
        self._store.finished(run_id or _unstarted_id(), name, record)
        level = logging.INFO if record.ok else logging.WARNING
        log.log(level, "ended", extra={"fields": execution_fields(name, run_id, record)})


def execution_fields(task: str, run_id: str | None, record: Execution) -> dict[str, Any]:
    """One log record per execution: task, attempt, outcome, why, and what it used."""
    usage = record.usage
    return {
        "task": task,
        "attempt": record.attempt,
        "outcome": str(record.outcome),
        "wall": format_duration(usage.wall_seconds),
        "peak": format_size(usage.peak_memory_bytes),
        "cpu": f"{usage.cpu_seconds:.2f}s",
        "exit": record.exit_code if record.exit_code not in (None, 0) else None,
        "signal": record.signal,
        "error": record.error.message if record.error is not None and not record.ok else None,
        "run": run_id,
    }


_unstarted = iter(range(1, 1 << 62))


def _unstarted_id() -> str:
    return f"{os.getpid()}-unstarted-{next(_unstarted)}"


def recover(store: Store) -> list[str]:
    """Executions the last server left in flight: kill what remains of them, record them
    ``lost``. Runs before the schedule starts; returns their run ids."""
    lost = store.in_flight()
    for row in lost:
        killed = kill_leftovers(
            row["run_id"], row.get("pid"), row.get("pid_start_ticks"), row.get("cgroups") or []
        )
        fields = {"task": row["task"], "attempt": row["attempt"], "run": row["run_id"], "killed": len(killed)}
        log.warning("recovered: lost", extra={"fields": fields})
    if lost:
        store.mark_lost([row["run_id"] for row in lost], "the supervisor died while it ran")
    # Executions that started in the last moments before a crash may not have reached the
    # store; their cgroups still name them (and their dead supervisor): clean those up too.
    for path, killed in sweep_orphan_cgroups().items():
        log.warning(
            "recovered: removed the cgroup of a dead supervisor",
            extra={"fields": {"cgroup": path, "killed": len(killed)}},
        )
    return [row["run_id"] for row in lost]


@dataclass
class _Loaded:
    definition: TaskDefinition
    task: Task
    events: dict[str, EventTrigger] = field(default_factory=dict)


class Service:
    """One ``governor serve``: a scheduler, its task file, its store and its control socket."""

    def __init__(
        self,
        task_file: Path,
        store: Store,
        *,
        max_running: int,
        grace: float,
        db: Path,
        memory_budget: int | str | None = "auto",
        cpu_budget: float | str | None = "auto",
        telemetry: Telemetry | None = None,
        backend: object = "local",
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        socket_mode: int = 0o600,
    ) -> None:
        self.task_file = task_file
        self.max_payload = max_payload
        self.store = store
        self.grace = grace
        self.db = db
        recorder = StoreRecorder(store)
        self.scheduler = Scheduler(
            max_running,
            listener=[recorder, telemetry] if telemetry is not None else recorder,
            memory_budget=memory_budget,
            cpu_budget=cpu_budget,
            backend=backend,
        )
        if telemetry is not None:
            telemetry.bind(self.scheduler)
        self._learn_from_history()
        self._loaded: dict[str, _Loaded] = {}
        self._lock = threading.Lock()
        # Room for the largest payload allowed, and the rest of its request.
        self.control = ControlServer(
            db,
            self.answer,
            max_request=max_payload + (64 << 10),
            too_large=f"; payloads may be at most {format_size(max_payload)} (governor serve --max-payload)",
            mode=socket_mode,
        )

    def _learn_from_history(self) -> None:
        """Seed the estimator with what past runs measured, so estimates survive restarts."""
        learn_from_history(self.store.history(), self.scheduler.estimator)

    # -- tasks ----------------------------------------------------------------------------

    def apply(self, definitions: list[TaskDefinition]) -> dict[str, list[str]]:
        """Make the scheduler's tasks match ``definitions``; unchanged tasks are untouched.
        ``ValueError``, before anything changes, if a sandboxed task could reach the control
        socket through its mode."""
        changes: dict[str, list[str]] = {"added": [], "changed": [], "removed": [], "unchanged": []}
        wanted = {definition.name: definition for definition in definitions}
        for definition in definitions:
            self._check_socket_against(definition)
        with self._lock:
            for name in list(self._loaded):
                if name not in wanted:
                    self._remove(name)
                    changes["removed"].append(name)
            for name, definition in wanted.items():
                current = self._loaded.get(name)
                if current is not None and current.definition.fingerprint == definition.fingerprint:
                    changes["unchanged"].append(name)
                    continue
                if current is not None:
                    self._remove(name)
                    changes["changed"].append(name)
                else:
                    changes["added"].append(name)
                # The store keeps what executions print (bounded): the records in memory need not.
                task = definition.build(
                    keep_output=False, output_cap=self.store.max_output, keep_executions=10
                )
                sandbox = task.spec.sandbox
                if isinstance(sandbox, Sandbox):  # never shown the server's own files
                    hidden = replace(sandbox, hide=(*sandbox.hide, *self.private_paths()))
                    task.spec = replace(task.spec, sandbox=hidden)
                events = {t.name: t for t in task.triggers if isinstance(t, EventTrigger) and t.name}
                self.scheduler.add_task(task)
                self._loaded[name] = _Loaded(definition, task, events)
        self.store.save_tasks([(d.name, d.source, d.fingerprint) for d in definitions])
        return changes

    def private_paths(self) -> tuple[str, ...]:
        """The server's files a sandboxed task is never shown (each covered in its mount
        namespace): the store and its journal, the spool, the locks, the control socket, the
        task file (its settings may carry secrets)."""
        db = str(self.db.absolute())
        files = [
            f"{db}{suffix}" for suffix in ("", "-wal", "-shm", "-journal", ".lock", ".spool", ".spool.lock")
        ]
        return (*files, str(self.control.path.absolute()), str(self.task_file.absolute()))

    def _check_socket_against(self, definition: TaskDefinition) -> None:
        sandbox = Sandbox.coerce(definition.source.get("sandbox"))  # checked when the file was read
        if sandbox is None:
            return
        mode = self.control.mode
        if mode & 0o006:
            raise ValueError(
                f"task {definition.name!r} is sandboxed, and --socket-mode {mode:o} lets every user, "
                "its sandbox's included, control this server; use 600 or 660"
            )
        if mode & 0o060 and sandbox.user is not None and _in_group(sandbox.user, os.getgid()):
            raise ValueError(
                f"task {definition.name!r} runs sandboxed as {sandbox.user!r}, who is in this server's "
                f"group, and --socket-mode {mode:o} lets that group control it; use 600"
            )

    def _remove(self, name: str) -> None:
        loaded = self._loaded.pop(name)
        if loaded.task.id is not None and self.scheduler.get_task(loaded.task.id) is loaded.task:
            self.scheduler.remove_task(loaded.task.id)

    def reload(self) -> None:
        """SIGHUP: read the file again; a broken file changes nothing (and says why)."""
        try:
            definitions = load_task_file(self.task_file)
        except ValueError as error:
            log.error("reload refused, the running schedule is unchanged: %s", error)
            return
        changes = self.apply(definitions)
        summary = ", ".join(
            f"{kind} {', '.join(names)}" for kind, names in changes.items() if names and kind != "unchanged"
        )
        log.info("reloaded %s: %s", self.task_file, summary or "no changes")

    def fire(self, event: str, payload: Any = None) -> int:
        """Fire every task listening to ``event``; returns how many. Each fire is on record
        (spooled) before it is queued: if this server dies before the run starts, the next
        one fires it again (``refire_pending``)."""
        with self._lock:
            listening = [
                (name, loaded.events[event])
                for name, loaded in self._loaded.items()
                if event in loaded.events
            ]
        for name, trigger in listening:
            cause = f"fire-{new_execution_id()}"
            self.store.fired(cause, name, event, payload)
            trigger.fire(payload, cause=cause)
        return len(listening)

    def refire_pending(self) -> None:
        """Fires an earlier server accepted and never started: fired again, once each."""
        for fire in self.store.pending_fires():
            loaded = self._loaded.get(fire["task"])
            trigger = loaded.events.get(fire["event"]) if loaded is not None else None
            fields = {"task": fire["task"], "event": fire["event"], "fired_at": fire["fired_at"]}
            if trigger is None:
                log.warning("dropped a fire its task no longer listens to", extra={"fields": fields})
                self.store.forget_fire(fire["fire_id"])
                continue
            log.warning(
                "fired again: accepted before the last server died, never started", extra={"fields": fields}
            )
            trigger.fire(fire["payload"], cause=fire["fire_id"])

    # -- control requests -----------------------------------------------------------------

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply to one control-socket request (``status`` or ``fire``)."""
        operation = request.get("op")
        if operation == "status":
            return {
                "ok": True,
                "pid": os.getpid(),
                "db": str(self.db),
                "task_file": str(self.task_file),
                "store": self.store.health(),
                **self.scheduler.snapshot(),
            }
        if operation == "fire":
            event = request.get("event")
            if not isinstance(event, str):
                return {"ok": False, "error": "fire: give an event name"}
            payload = request.get("payload")
            size = len(json.dumps(payload))
            if size > self.max_payload:
                return {
                    "ok": False,
                    "error": f"payload: {format_size(size)}, more than the {format_size(self.max_payload)} "
                    "this server accepts (governor serve --max-payload); nothing was fired",
                }
            fired = self.fire(event, payload)
            if not fired:
                known = sorted({name for loaded in self._loaded.values() for name in loaded.events})
                return {
                    "ok": False,
                    "error": f"no task listens to event {event!r} (known: {', '.join(known) or 'none'})",
                }
            return {"ok": True, "fired": fired}
        return {"ok": False, "error": f"unknown request {operation!r}"}

    # -- running --------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; reload on SIGHUP. Returns the exit status."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        received: list[int] = []

        def on_signal(signum: int, frame: Any) -> None:
            received.append(signum)

        previous_fd = signal.set_wakeup_fd(wake_w)
        handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        path = self.control.open()
        self.scheduler.start()
        where = f"store {self.db}; control {path}; pid {os.getpid()}"
        log.info("serving %d task(s) from %s; %s", len(self._loaded), self.task_file, where)
        try:
            while True:
                select.select([wake_r], [], [])
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
                while received:
                    signum = received.pop(0)
                    if signum == signal.SIGHUP:
                        self.reload()
                    else:
                        return self._shutdown(signal.Signals(signum).name)
        finally:
            signal.set_wakeup_fd(previous_fd)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            os.close(wake_r)
            os.close(wake_w)

    def _shutdown(self, why: str) -> int:
        log.info("%s: stopping; running executions get %gs before they are cancelled", why, self.grace)
        self.control.close()
        self.scheduler.stop(timeout=self.grace)
        self.store.close()
        log.info("stopped; the store is flushed")
        return 0


def _in_group(user: int | str, gid: int) -> bool:
    """Whether ``user`` has ``gid`` as its primary or a supplementary group."""
    try:
        entry = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
    except KeyError:
        return False
    try:
        members = grp.getgrgid(gid).gr_mem
    except KeyError:
        members = []
    return entry.pw_gid == gid or entry.pw_name in members


def _claim(db: Path) -> int:
    """Hold an exclusive lock beside the database for the server's lifetime: recovery marks
    whatever is in flight as lost, which is right only if no other server is running it."""
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(db) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:  # a read-only or foreign directory: say so, not a traceback
        raise StoreError(db, f"could not open {db}: {error.strerror} ({error.filename})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"another governor serve is using {db}") from None
    return fd


def serve(
    task_file: Path,
    db: Path,
    *,
    max_running: int,
    grace: float,
    log_stream: TextIO = sys.stderr,
    log_level: str = "info",
    log_format: str = "text",
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    memory_budget: int | str | None = "auto",
    cpu_budget: float | str | None = "auto",
    dask: str | None = None,
    socket_mode: int = 0o600,
) -> int:
    """Load, open, recover, serve. Errors here (bad file, bad store, bad ``OTEL_*``
    variables) propagate to the CLI. Telemetry, when the environment asks for it, is flushed
    and shut down on the way out. With ``dask`` (a scheduler address) executions run on that
    Dask cluster, connected before the store is touched."""
    handler = configure(log_stream, log_level, log_format)
    try:
        return _serve(
            task_file, db, max_running, grace, memory_budget, cpu_budget, dask, max_payload, socket_mode
        )
    finally:
        unconfigure(handler)


def _serve(
    task_file: Path,
    db: Path,
    max_running: int,
    grace: float,
    memory_budget: int | str | None,
    cpu_budget: float | str | None,
    dask: str | None,
    max_payload: int,
    socket_mode: int,
) -> int:
    definitions = load_task_file(task_file)
    telemetry = Telemetry.from_environment()  # before the store: a typo must not touch it
    telemetry_scope = telemetry if telemetry is not None else contextlib.nullcontext()
    with telemetry_scope, cluster_backend(dask) as backend:
        lock = _claim(db)
        try:
            store = Store(db)
        except BaseException:
            os.close(lock)
            raise
        try:
            recover(store)
            if telemetry is not None:
                log.info("telemetry: %r", telemetry)
            service = Service(
                task_file,
                store,
                max_running=max_running,
                grace=grace,
                db=db,
                memory_budget=memory_budget,
                cpu_budget=cpu_budget,
                telemetry=telemetry,
                backend=backend,
                max_payload=max_payload,
                socket_mode=socket_mode,
            )
            service.apply(definitions)
            service.refire_pending()
            return service.run()
        finally:
            store.close()
            os.close(lock)
