"""``governor report``: per-task figures computed from the stored executions.

Data flow::

    read()  ── the one function that touches the store ──►  ReportInput (history rows, and the
                                                             timelines of the runs to chart)
    build_reports(rows)  ── pure ──►  [TaskReport, ...]  ──►  render_table / render_json /
                                                               render_csv (here),
                                                               render_html (_report_html)

What the figures mean:

- ``runs`` counts every execution (each retry attempt is one); ``in_flight`` those with no end
  recorded. ``success_rate`` is succeeded / executions that ended, whatever their outcome
  (``lost`` and ``evicted`` included): None before any ended.
- Distributions (duration, peak memory, CPU seconds, admission wait) are ``Spread``s: p50, p95
  and max by the **nearest-rank** method, so every figure is a value that was measured, never
  an interpolation. Usage counts only executions that started and ended with a measurement
  (not ``lost`` ones, nor records of executions that could not start).
- ``kills`` counts executions the governor ended, by reason: the outcome for
  ``memory_exceeded``, ``cpu_time_exceeded``, ``timed_out``, ``evicted`` and ``cancelled``,
  and ``<limit>_exceeded`` for a minor limit (``pids``, ``file_size``) that failed a run.
- The admission wait of an execution is ``started_at - queued_at`` (direct runs, with no
  ``queued_at``, did not queue and are left out); ``wait_reasons`` counts the reasons recorded.
- ``estimate`` is what ``policies.UsageEstimator`` learns from the reported executions (the
  same learning the server does at start, see ``governor.service._estimates``), with the task's
  latest limits; None when none of them measured anything.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TextIO

from governor.observe import _facts as facts
from governor.service._estimates import learn_from_history
from governor.service._store import Store
from policies import Estimate, format_duration, format_size, parse_duration

__all__ = [
    "Progress",
    "ReportError",
    "ReportInput",
    "Spread",
    "TaskReport",
    "admission_wait",
    "build_reports",
    "chosen_runs",
    "kill_reason",
    "killed_runs",
    "measured",
    "parse_since",
    "percentile",
    "read",
    "render_csv",
    "render_json",
    "render_table",
    "terminal_progress",
]

Progress = Callable[[str, int, int], None]  # (what is being done, done, total)


class ReportError(Exception):
    """A report cannot be made as asked (e.g. ``--run`` names an execution not reported)."""


# ------------------------------------------------------------------------------------ figures


def percentile(values: Iterable[float], percent: float) -> float | None:
    """The nearest-rank ``percent``-th percentile: the smallest value such that at least
    ``percent``% of ``values`` are at or below it. None for no values.

    ``percentile([1, 2, 3, 4], 50) == 2``; ``percentile([1, 2, 3, 4], 95) == 4``.
    """
    if not 0 < percent <= 100:
        raise ValueError(f"percent: must be in (0, 100], got {percent!r}")
    ordered = sorted(values)
    if not ordered:
        return None
    # Rounded first, so that 95% of 100 values is rank 95 and not 96 (0.95 * 100 = 95.00000000000001).
    rank = max(1, math.ceil(round(percent * len(ordered) / 100, 9)))
    return ordered[rank - 1]


@dataclass(frozen=True, kw_only=True, slots=True)
class Spread:
    """How a measurement spread over executions: nearest-rank p50 and p95, the max, the count."""

    count: int
    p50: float | None
    p95: float | None
    max: float | None

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        """The spread of ``values`` (all None for none)."""
        measured = sorted(values)
        return cls(
            count=len(measured),
            p50=percentile(measured, 50),
            p95=percentile(measured, 95),
            max=measured[-1] if measured else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: ``count``, ``p50``, ``p95``, ``max``."""
        return {"count": self.count, "p50": self.p50, "p95": self.p95, "max": self.max}


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskReport:
    """The figures of one task over the reported executions (see the module docstring)."""

    task: str
    runs: int
    in_flight: int
    outcomes: dict[str, int]  # outcome -> executions, most frequent first
    success_rate: float | None  # succeeded / ended
    duration: Spread  # wall seconds
    peak_memory: Spread  # bytes
    memory_limit: int | None  # of the latest execution
    peak_memory_share: float | None  # the most any execution used of its own memory limit
    cpu_seconds: Spread  # user + system, per execution
    cpu_seconds_total: float
    kills: dict[str, int]  # reason -> executions
    wait: Spread  # admission wait, seconds
    wait_total_seconds: float
    wait_reasons: dict[str, int]
    estimate: Estimate | None = field(default=None)
    # What held its runs back, summed: cpu_throttled (its cpu_rate quota), memory_high (times
    # it went past its soft limit), and stall_<resource> (PSI stall seconds, cgroup v2).
    held_back: dict[str, float] = field(default_factory=dict)

    @property
    def ended(self) -> int:
        """Executions with an outcome."""
        return self.runs - self.in_flight

    @property
    def succeeded(self) -> int:
        """Executions that succeeded."""
        return self.outcomes.get("succeeded", 0)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: plain numbers (bytes, seconds, cores), distributions as dicts."""
        estimate = None
        if self.estimate is not None:
            estimate = {
                "memory_bytes": self.estimate.memory_bytes,
                "cpu_cores": self.estimate.cpu_cores,
                "duration_seconds": self.estimate.duration_seconds,
                "source": self.estimate.source,
            }
        return {
            "task": self.task,
            "runs": self.runs,
            "ended": self.ended,
            "in_flight": self.in_flight,
            "succeeded": self.succeeded,
            "success_rate": self.success_rate,
            "outcomes": dict(self.outcomes),
            "kills": dict(self.kills),
            "duration_seconds": self.duration.to_dict(),
            "peak_memory_bytes": self.peak_memory.to_dict(),
            "memory_limit_bytes": self.memory_limit,
            "peak_memory_share": self.peak_memory_share,
            "cpu_seconds": self.cpu_seconds.to_dict(),
            "cpu_seconds_total": self.cpu_seconds_total,
            "wait_seconds": self.wait.to_dict(),
            "wait_total_seconds": self.wait_total_seconds,
            "wait_reasons": dict(self.wait_reasons),
            "estimate": estimate,
            "held_back": dict(self.held_back),
        }


def build_reports(rows: Iterable[dict[str, Any]]) -> list[TaskReport]:
    """One ``TaskReport`` per task in ``rows`` (``Store.history()`` entries, oldest first),
    by task name."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    return [task_report(task, by_task[task]) for task in sorted(by_task)]


def task_report(task: str, rows: Sequence[dict[str, Any]]) -> TaskReport:
    """The ``TaskReport`` of ``task`` from its ``rows``, oldest first."""
    ended = [row for row in rows if row.get("outcome") is not None]
    usage = [row for row in ended if measured(row)]
    outcomes = Counter(row["outcome"] for row in ended)
    kills = Counter(reason for reason in map(kill_reason, ended) if reason is not None)
    cpu = [_cpu_seconds(row) for row in usage]
    waits = [wait for wait in map(admission_wait, rows) if wait is not None]
    shares = [
        row["peak_memory_bytes"] / limit
        for row in usage
        if (limit := _memory_limit(row)) and row.get("peak_memory_bytes") is not None
    ]
    return TaskReport(
        task=task,
        runs=len(rows),
        in_flight=len(rows) - len(ended),
        outcomes=_ranked(outcomes),
        success_rate=outcomes["succeeded"] / len(ended) if ended else None,
        duration=Spread.of(row["wall_seconds"] for row in usage if row.get("wall_seconds") is not None),
        peak_memory=Spread.of(
            row["peak_memory_bytes"] for row in usage if row.get("peak_memory_bytes") is not None
        ),
        memory_limit=_memory_limit(rows[-1]) if rows else None,
        peak_memory_share=max(shares) if shares else None,
        cpu_seconds=Spread.of(cpu),
        cpu_seconds_total=round(float(sum(cpu)), 6),
        kills=_ranked(kills),
        wait=Spread.of(waits),
        wait_total_seconds=round(float(sum(waits)), 6),
        wait_reasons=_ranked(Counter(row["wait_reason"] for row in rows if row.get("wait_reason"))),
        estimate=_estimate(task, rows),
        held_back=_held_back(usage),
    )


def _held_back(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    totals: dict[str, float] = {"cpu_throttled": 0.0, "memory_high": 0.0}
    for row in rows:
        totals["cpu_throttled"] += row.get("cpu_throttled_seconds") or 0.0
        totals["memory_high"] += row.get("memory_high_events") or 0
        for resource, seconds in (row.get("stall_seconds") or {}).items():
            totals[f"stall_{resource}"] = totals.get(f"stall_{resource}", 0.0) + seconds
    return {name: round(value, 6) for name, value in totals.items() if value}


def admission_wait(row: dict[str, Any]) -> float | None:
    """Seconds ``row`` waited between being queued and starting; None if it never queued."""
    queued, started = row.get("queued_at"), row.get("started_at")
    if not queued or not started:
        return None
    seconds = (datetime.fromisoformat(started) - datetime.fromisoformat(queued)).total_seconds()
    return max(0.0, round(seconds, 6))  # clocks of record may disagree by a hair: never negative


def measured(row: dict[str, Any]) -> bool:
    """Whether ``row`` ended with a measurement of its own usage (``observe._facts.measured``)."""
    return facts.measured(
        row.get("outcome"), row.get("pid"), row.get("peak_memory_bytes"), row.get("wall_seconds")
    )


def kill_reason(row: dict[str, Any]) -> str | None:
    """Why enforcement ended ``row``'s execution, or ``None`` (``observe._facts.kill_reason``)."""
    return facts.kill_reason(row.get("outcome"), row.get("breached_limit"))


def _cpu_seconds(row: dict[str, Any]) -> float:
    return (row.get("cpu_user_seconds") or 0.0) + (row.get("cpu_system_seconds") or 0.0)


def _memory_limit(row: dict[str, Any]) -> int | None:
    limit = (row.get("limits") or {}).get("memory")
    return int(limit) if limit else None


def _ranked(counts: Counter[str]) -> dict[str, int]:
    # Most frequent first; ties by name, so that output is stable.
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _estimate(task: str, rows: Sequence[dict[str, Any]]) -> Estimate | None:
    estimator = learn_from_history(rows)
    if task not in estimator.tasks():
        return None
    limits = rows[-1].get("limits") or {}
    return estimator.estimate(task, memory_limit=limits.get("memory"), cpu_limit=limits.get("cpu_rate"))


# --------------------------------------------------------------------------------------- input


def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: an ISO 8601 date or date-time (naive means local time), or a duration ago
    such as ``7d``, ``12h``, ``1h30m`` (before ``now``). ``ValueError`` names the value."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        pass
    else:
        return when if when.tzinfo is not None else when.astimezone()
    try:
        seconds = parse_duration(text, field="--since")
    except ValueError:
        raise ValueError(
            f"--since: cannot read {text!r} as a date/time (ISO 8601, e.g. 2024-05-01 or "
            "2024-05-01T12:00) or as a duration ago (e.g. 7d, 12h, 30m)"
        ) from None
    return now - timedelta(seconds=seconds)


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportInput:
    """What a report is made of: history rows (oldest first), the timelines of the
    executions to chart, by run id, and which of those were asked for by id."""

    rows: list[dict[str, Any]]
    timelines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requested: tuple[str, ...] = ()


def read(
    store: Store,
    *,
    tasks: Sequence[str] = (),
    since: datetime | None = None,
    chart_runs: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> ReportInput:
    """Read the executions of ``tasks`` (all if empty) started at or after ``since``.

    With ``chart_runs`` (a list, maybe empty), also read the timelines of ``chosen_runs(rows,
    chart_runs)``, reporting ``progress(what, done, total)`` as it goes. ``ReportError`` if a
    requested run is not among the rows read.
    """
    if tasks:
        rows = [row for task in dict.fromkeys(tasks) for row in store.history(task, since=since)]
    else:
        rows = store.history(since=since)
    timelines: dict[str, list[dict[str, Any]]] = {}
    if chart_runs is not None:
        chosen = chosen_runs(rows, chart_runs)
        try:
            for done, run_id in enumerate(chosen):
                if progress is not None:
                    progress("reading timelines", done, len(chosen))
                timelines[run_id] = store.timeline(run_id)
        finally:  # the last call erases the progress line, also before an error is printed
            if progress is not None:
                progress("reading timelines", len(chosen), len(chosen))
    return ReportInput(rows=rows, timelines=timelines, requested=tuple(chart_runs or ()))


KILLED_CHARTED = 5  # per task: its latest runs killed by enforcement, charted beside its largest


def chosen_runs(rows: Sequence[dict[str, Any]], requested: Sequence[str] = ()) -> list[str]:
    """The executions whose timelines a report charts: per task (by name) the measured one
    with the largest peak memory (the latest among equals) and its latest ``KILLED_CHARTED``
    measured runs that enforcement ended (each chart marks where), then ``requested`` ones.

    ``ReportError`` for a requested run id that is not in ``rows``.
    """
    known = {row["run_id"] for row in rows}
    missing = [run_id for run_id in requested if run_id not in known]
    if missing:
        raise ReportError(
            f"--run {missing[0]}: no such execution among those reported (check the TASK names and --since)"
        )
    largest: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not measured(row):
            continue
        best = largest.get(row["task"])
        if best is None or row["peak_memory_bytes"] >= best["peak_memory_bytes"]:
            largest[row["task"]] = row
    killed = killed_runs(rows)
    chosen = []
    for task in sorted(largest):
        chosen.append(largest[task]["run_id"])
        others = [row["run_id"] for row in killed.get(task, []) if row is not largest[task]]
        chosen += others[:KILLED_CHARTED]
    return list(dict.fromkeys([*chosen, *requested]))


def killed_runs(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per task, its measured runs that enforcement ended, the latest first."""
    killed: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if measured(row) and kill_reason(row) is not None:
            killed.setdefault(row["task"], []).append(row)
    for runs in killed.values():
        runs.sort(key=lambda row: row.get("started_at") or "", reverse=True)
    return killed


def terminal_progress(stream: TextIO) -> Progress | None:
    """A ``Progress`` that redraws one line on ``stream`` and erases it when done; None unless
    ``stream`` is a terminal (so that logs and pipes never receive progress lines)."""
    if not stream.isatty():
        return None

    def show(what: str, done: int, total: int) -> None:
        if done >= total:
            stream.write("\r\x1b[K")  # erase the line: the report follows
        else:
            stream.write(f"\rgovernor report: {what} {done}/{total}\x1b[K")
        stream.flush()

    return show


# ----------------------------------------------------------------------------------- renderers


def render_json(reports: Sequence[TaskReport], *, since: datetime | None = None) -> str:
    """``{"since": ISO or null, "tasks": [TaskReport.to_dict(), ...]}``, indented."""
    document = {
        "since": since.isoformat() if since else None,
        "tasks": [report.to_dict() for report in reports],
    }
    return json.dumps(document, indent=2) + "\n"


CSV_COLUMNS = (
    "task",
    "runs",
    "ended",
    "in_flight",
    "succeeded",
    "success_rate",
    "duration_p50_seconds",
    "duration_p95_seconds",
    "duration_max_seconds",
    "peak_memory_p50_bytes",
    "peak_memory_p95_bytes",
    "peak_memory_max_bytes",
    "memory_limit_bytes",
    "peak_memory_share",
    "cpu_seconds_p50",
    "cpu_seconds_p95",
    "cpu_seconds_total",
    "wait_p50_seconds",
    "wait_p95_seconds",
    "wait_max_seconds",
    "wait_total_seconds",
    "wait_reasons",
    "outcomes",
    "kills",
    "estimate_memory_bytes",
    "estimate_cpu_cores",
    "estimate_duration_seconds",
    "estimate_source",
    "held_back",
)


def render_csv(reports: Sequence[TaskReport]) -> str:
    """One row per task, the columns of ``CSV_COLUMNS``: plain numbers (bytes, seconds), an
    empty cell for unknown, counts as ``name=count`` joined by ``;``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for report in reports:
        estimate = report.estimate
        values: dict[str, Any] = {
            "task": report.task,
            "runs": report.runs,
            "ended": report.ended,
            "in_flight": report.in_flight,
            "succeeded": report.succeeded,
            "success_rate": report.success_rate,
            "duration_p50_seconds": report.duration.p50,
            "duration_p95_seconds": report.duration.p95,
            "duration_max_seconds": report.duration.max,
            "peak_memory_p50_bytes": report.peak_memory.p50,
            "peak_memory_p95_bytes": report.peak_memory.p95,
            "peak_memory_max_bytes": report.peak_memory.max,
            "memory_limit_bytes": report.memory_limit,
            "peak_memory_share": report.peak_memory_share,
            "cpu_seconds_p50": report.cpu_seconds.p50,
            "cpu_seconds_p95": report.cpu_seconds.p95,
            "cpu_seconds_total": report.cpu_seconds_total,
            "wait_p50_seconds": report.wait.p50,
            "wait_p95_seconds": report.wait.p95,
            "wait_max_seconds": report.wait.max,
            "wait_total_seconds": report.wait_total_seconds,
            "wait_reasons": counts_text(report.wait_reasons, "=", ";"),
            "outcomes": counts_text(report.outcomes, "=", ";"),
            "kills": counts_text(report.kills, "=", ";"),
            "estimate_memory_bytes": estimate.memory_bytes if estimate else None,
            "estimate_cpu_cores": estimate.cpu_cores if estimate else None,
            "estimate_duration_seconds": estimate.duration_seconds if estimate else None,
            "estimate_source": estimate.source if estimate else None,
            "held_back": ";".join(f"{name}={value:g}" for name, value in report.held_back.items()),
        }
        writer.writerow(["" if values[column] is None else values[column] for column in CSV_COLUMNS])
    return out.getvalue()


def render_table(reports: Sequence[TaskReport], *, since: datetime | None = None) -> str:
    """Aligned text for a terminal: one line of figures per task, then one line per task of
    outcomes, kills, waits and the learned estimate."""
    scope = scope_text(since)
    if not reports:
        return f"no executions recorded{scope}\n"
    headers = (
        "task", "runs", "success", "wall p50", "wall p95", "peak p50", "peak p95", "peak max",
        "of limit", "limit", "cpu total", "waited",
    )  # fmt: skip
    lines = [
        (
            report.task,
            str(report.runs),
            percent(report.success_rate),
            format_duration(report.duration.p50),
            format_duration(report.duration.p95),
            format_size(report.peak_memory.p50),
            format_size(report.peak_memory.p95),
            format_size(report.peak_memory.max),
            percent(report.peak_memory_share),  # each run against its own limit: retries may raise it
            format_size(report.memory_limit),
            f"{report.cpu_seconds_total:.2f}s",
            format_duration(report.wait_total_seconds) if report.wait.count else "-",
        )
        for report in reports
    ]
    text = [f"{len(reports)} task(s), {sum(r.runs for r in reports)} execution(s){scope}", ""]
    text += _aligned(headers, lines, left=(0,))
    text.append("")
    for report in reports:
        text.append(f"{report.task}: {'; '.join(_details(report))}")
    return "\n".join(text) + "\n"


def _details(report: TaskReport) -> list[str]:
    details = [f"outcomes {counts_text(report.outcomes) or '-'}"]
    if report.in_flight:
        details[0] += f", {report.in_flight} in flight"
    details.append(f"kills {counts_text(report.kills) or 'none'}")
    if report.wait.count:
        details.append(f"waited {wait_text(report)}")
    if report.estimate is not None:
        details.append(f"estimate {estimate_text(report.estimate)}")
    if report.held_back:
        details.append(f"held back {held_back_text(report.held_back)}")
    return details


def held_back_text(held_back: dict[str, float]) -> str:
    """``cpu quota 1.2s, past memory_high 3x, stalled on memory 0.4s``."""
    parts = []
    for name, value in held_back.items():
        if name == "cpu_throttled":
            parts.append(f"cpu quota {format_duration(value)}")
        elif name == "memory_high":
            parts.append(f"past memory_high {value:g}x")
        else:
            parts.append(f"stalled on {name.removeprefix('stall_')} {format_duration(value)}")
    return ", ".join(parts)


# -- text shared by the table and the HTML page -------------------------------------------------


def scope_text(since: datetime | None) -> str:
    """`` since <when>`` for a report limited to ``since``, else nothing."""
    return f" since {since.isoformat(timespec='seconds')}" if since else ""


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.1f}%"


def counts_text(counts: dict[str, int], between: str = " ", separator: str = ", ") -> str:
    """``a 2, b 1``: counts by name, in their order."""
    return separator.join(f"{name}{between}{count}" for name, count in counts.items())


def wait_text(report: TaskReport) -> str:
    """How long runs of ``report``'s task waited for admission, and why (it has waits)."""
    text = (
        f"{format_duration(report.wait_total_seconds)} over {report.wait.count} queued"
        f" (p50 {format_duration(report.wait.p50)}, p95 {format_duration(report.wait.p95)})"
    )
    return text + (f" for {counts_text(report.wait_reasons)}" if report.wait_reasons else "")


def estimate_text(estimate: Estimate) -> str:
    cores = f"{estimate.cpu_cores:.2f} cores" if estimate.cpu_cores is not None else "? cores"
    duration = format_duration(estimate.duration_seconds)
    return f"{format_size(estimate.memory_bytes)}, {cores}, {duration} (from {estimate.source})"


def _aligned(headers: Sequence[str], rows: Sequence[Sequence[str]], *, left: Sequence[int]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if index in left else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return [line(headers)] + [line(row) for row in rows]
