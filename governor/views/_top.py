"""``governor top``: what runs and what waits, with memory and CPU against their limits.

The view comes from a running ``governor serve`` (its control socket: live readings, queue,
budget and wait reasons), or, with no server answering, from the database: executions it
records in flight, measured here through their process trees. On a terminal it is the
interactive view (``_top_live``: keys sort and filter, colour marks a run near its limit);
otherwise it is printed as plain text, every value whole, ``--count`` times (default once),
so that it can be logged or piped.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import psutil

from governor.service._control import ask, socket_path
from governor.service._store import Store, StoreError
from policies import format_duration, format_size

EXIT_NO_SOURCE = 3
# How to order the running executions: by what they hold now, or by how long they have run.
SORTS = ("memory", "cpu", "age")
WARN_AT, ALARM_AT = 0.8, 0.95  # shares of a limit: a run nearing it, and one at it


def watch(
    source: Callable[[], dict[str, Any]],
    out: TextIO,
    *,
    interval: float,
    count: int | None,
    live: bool,
    as_json: bool = False,
) -> int:
    """Show ``source()`` ``count`` times (``None``: until interrupted), ``interval`` apart; on
    a terminal (``live``), the interactive view, until ``q``."""
    if live and not as_json:
        from governor.views._top_live import interactive

        return interactive(source, interval=interval, count=count)
    previous: dict[str, tuple[float, float]] = {}  # run id -> (monotonic, cpu seconds): CPU rates
    shown = 0
    try:
        while count is None or shown < count:
            if shown:
                time.sleep(interval)
            try:
                view = source()
            except LookupError as error:
                print(f"governor: {error}", file=sys.stderr)
                return EXIT_NO_SOURCE
            add_cpu_rates(view, previous, time.monotonic())
            if as_json:
                out.write(json.dumps(view) + "\n")
            else:  # piped or logged: plain text, every value whole
                out.write(render(view) + ("\n" if count != 1 else ""))
            out.flush()
            shown += 1
    except KeyboardInterrupt:
        return 0
    return 0


def snapshot(db: Path) -> dict[str, Any]:
    """The view from the server using ``db``, else from ``db`` itself (``LookupError`` if neither)."""
    path = socket_path(db)
    if path.exists():
        try:
            reply = ask(path, {"op": "status"}, timeout=5.0)
        except OSError:
            reply = None  # a socket left by a server that died: fall back to the database
        if reply is not None and reply.get("ok"):
            return {"source": "server", **reply}
    if not db.exists():
        raise LookupError(f"no server answers for {db}, and there is no database there")
    try:
        with Store(db) as store:
            in_flight = store.in_flight()
    except StoreError as error:
        raise LookupError(str(error)) from error
    running = []
    for row in in_flight:
        memory, cpu = _measure_tree(row.get("pid"))
        running.append({
            "task": row["task"],
            "attempt": row["attempt"],
            "run_id": row["run_id"],
            "pid": row.get("pid"),
            "started_at": row["started_at"],
            "memory_bytes": memory,
            "cpu_seconds": cpu,
            "limits": row["limits"],
        })  # fmt: skip
    return {"source": "database", "db": str(db), "running": running, "queued": []}


def _measure_tree(pid: int | None) -> tuple[int | None, float | None]:
    """Resident memory and CPU seconds of ``pid`` and its descendants, read here (no server)."""
    if pid is None:
        return None, None
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None, None  # gone, or not ours to see: it ended since the store was read
    memory, cpu = 0, 0.0
    for process in processes:
        try:
            memory += process.memory_info().rss
            times = process.cpu_times()
            cpu += times.user + times.system
        except psutil.Error:
            continue  # ended between listing and reading
    return memory, cpu


def add_cpu_rates(view: dict[str, Any], previous: dict[str, tuple[float, float]], now: float) -> None:
    """Each running execution's CPU rate (cores) since the previous refresh, where known."""
    seen: dict[str, tuple[float, float]] = {}
    for run in view.get("running", []):
        cpu = run.get("cpu_seconds")
        if cpu is None:
            continue
        before = previous.get(run["run_id"])
        if before is not None and now > before[0]:
            run["cpu_rate"] = max(cpu - before[1], 0.0) / (now - before[0])
        seen[run["run_id"]] = (now, cpu)
    previous.clear()
    previous.update(seen)


def arrange(
    running: list[dict[str, Any]], *, sort: str | None = None, task: str = ""
) -> list[dict[str, Any]]:
    """The running executions whose task name contains ``task`` (any case), largest first by
    ``sort`` (``SORTS``; ``age``: the longest running first; ``None``: as they started)."""
    shown = matching(running, task)
    if sort == "memory":
        shown.sort(key=lambda run: run.get("memory_bytes") or 0, reverse=True)
    elif sort == "cpu":
        shown.sort(key=lambda run: run.get("cpu_rate") or 0.0, reverse=True)
    elif sort == "age":
        shown.sort(key=lambda run: run.get("started_at") or "")
    elif sort is not None:
        raise ValueError(f"sort: one of {', '.join(SORTS)}, got {sort!r}")
    return shown


def limit_shares(run: dict[str, Any]) -> tuple[float | None, float | None]:
    """How much of its memory and its CPU limit a run uses now (``None``: no limit, or not
    measured yet)."""
    limits = run.get("limits") or {}
    memory, memory_limit = run.get("memory_bytes"), limits.get("memory")
    rate, cpu_limit = run.get("cpu_rate"), limits.get("cpu_rate")
    return (
        memory / memory_limit if memory is not None and memory_limit else None,
        rate / cpu_limit if rate is not None and cpu_limit else None,
    )


def matching(entries: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """The entries whose task name contains ``task``, in any case."""
    return [entry for entry in entries if task.lower() in name_of(entry).lower()]


def header_text(view: dict[str, Any], now: datetime) -> str:
    """The view's first line: when, and where it comes from."""
    source = f"server pid {view['pid']}" if view.get("source") == "server" else f"database {view.get('db')}"
    return f"governor top — {now.astimezone().strftime('%H:%M:%S')} — {source}"


def summary_text(view: dict[str, Any]) -> str:
    """What runs and waits, the memory held against the budget, and others' pressure."""
    running = view.get("running", [])
    slots = f" of {view['max_running_tasks']}" if "max_running_tasks" in view else ""
    summary = f"running {len(running)}{slots}, queued {view.get('queued_total', len(view.get('queued', [])))}"
    budget = view.get("budget") or {}
    held = sum(run.get("memory_bytes") or 0 for run in running)
    if budget.get("memory_bytes"):
        summary += f"; memory {format_size(held)} of {format_size(budget['memory_bytes'])} budget"
    if budget.get("cpu_cores"):
        summary += f"; cpu budget {budget['cpu_cores']:g} cores"
    pressure = view.get("pressure") or {}
    if pressure.get("memory") or pressure.get("cpu"):
        read_from = (view.get("pressure_readings") or {}).get("source")
        memory, cpu = pressure.get("memory", 0), pressure.get("cpu", 0)
        summary += f"; others' pressure memory {memory:.0%} cpu {cpu:.0%}"
        summary += f" (from {read_from})" if read_from else ""
    return summary


def render(view: dict[str, Any], *, width: int | None = None, now: datetime | None = None) -> str:
    """The view as plain text (no escape codes); lines cut at ``width`` only if one is given."""
    now = now or datetime.now(UTC)
    running, queued = view.get("running", []), view.get("queued", [])
    # Cut to fit a terminal's width; piped or logged, every name whole.
    name_width = 24 if width is not None else max([24, *(len(name_of(item)) for item in [*running, *queued])])
    lines = [header_text(view, now)[:width]]  # a slice to None keeps it whole
    summary = summary_text(view)
    lines.append(summary[:width])
    lines.append("")
    lines.append(f"{'TASK':<{name_width}} {'TRY':>3} {'PID':>7} {'ELAPSED':>8} {'MEMORY':>10} {'LIMIT':>10} "
                 f"{'%LIM':>5} {'CPU':>6} {'CPU LIM':>7}")  # fmt: skip
    for run in running:
        limits = run.get("limits") or {}
        memory, limit = run.get("memory_bytes"), limits.get("memory")
        memory_share = limit_shares(run)[0]
        share = "-" if memory_share is None else f"{memory_share:.0%}"
        rate = run.get("cpu_rate")
        cpu_limit = limits.get("cpu_rate")
        elapsed = (now - datetime.fromisoformat(run["started_at"])).total_seconds()
        flag = " evicting" if run.get("evicting") else ""
        cells = (
            _cut(name_of(run), name_width), run.get("attempt", 1), run.get("pid") or "-",
            format_duration(max(elapsed, 0.0)), size_text(memory), size_text(limit), share,
            "-" if rate is None else f"{rate:.2f}", "-" if cpu_limit is None else f"{cpu_limit:g}",
        )  # fmt: skip
        row = "{:<{w}} {:>3} {:>7} {:>8} {:>10} {:>10} {:>5} {:>6} {:>7}".format(*cells, w=name_width)
        lines.append(row + flag)
    if queued:
        lines.append("")
        lines.append(f"{'QUEUED':<{name_width}} {'TRY':>3} {'PRIO':>5} {'WAITING':>8} {'NEEDS':>10}  WHY")
        for item in queued:
            waited = (now - datetime.fromisoformat(item["queued_at"])).total_seconds()
            reason = item.get("wait_reason") or "next in line"
            queued_cells = (
                _cut(name_of(item), name_width), item.get("attempt", 1), item.get("priority", 0),
                format_duration(max(waited, 0.0)), size_text(item.get("estimate_bytes")), reason,
            )  # fmt: skip
            lines.append("{:<{w}} {:>3} {:>5} {:>8} {:>10}  {}".format(*queued_cells, w=name_width)[:width])
    return "\n".join(lines) + "\n"


def name_of(entry: dict[str, Any]) -> str:
    """A running or queued entry's task name (an executor call's function name)."""
    return str(entry.get("task") or entry.get("name") or "-")


def size_text(value: int | None) -> str:
    return "-" if value is None else format_size(value)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
