"""The HTML ``governor report``: one self-contained file that opens offline.

Charts are drawn by plotly (the optional ``report`` extra), its JavaScript inlined once in the
page and never fetched from a CDN. The page holds the summary table; per task, the spread of
peak memory (with each task's memory limit marked) and of duration; and for the charted
executions (``_report.chosen_runs``) their memory and CPU-rate timelines, the limits drawn as
horizontal lines. Every text that comes from the store is HTML-escaped.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from governor.views._report import (
    Progress,
    ReportError,
    ReportInput,
    TaskReport,
    counts_text,
    estimate_text,
    kill_reason,
    killed_runs,
    measured,
    percent,
    scope_text,
    wait_text,
)
from policies import format_duration, format_size

__all__ = ["PLOTLY_MISSING", "MissingDependency", "render_html", "require_plotly"]

PLOTLY_MISSING = (
    "the html format needs plotly, which is not installed: pip install 'resource-governor[report]'"
)

_MIB = 1024 * 1024
_ERRORS_SHOWN = 200
# One colour per outcome, the same in every chart.
_OUTCOME_COLOURS = {
    "succeeded": "#2ca02c",
    "failed": "#d62728",
    "memory_exceeded": "#9467bd",
    "cpu_time_exceeded": "#8c564b",
    "timed_out": "#ff7f0e",
    "crashed": "#e377c2",
    "cancelled": "#7f7f7f",
    "lost": "#17becf",
    "evicted": "#bcbd22",
    "running": "#1f77b4",
}
_ALL_POINTS_UP_TO = 500  # beyond this many executions per task, a box shows only its outliers

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.meta { color: #555; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; vertical-align: top; }
th { background: #f2f2f2; text-align: left; }
td.n { text-align: right; white-space: nowrap; }
.chart { margin: 0.5em 0 1.5em; }
"""


class MissingDependency(ReportError):
    """The HTML report needs plotly, and it is not installed."""


def require_plotly() -> None:
    """Raise ``MissingDependency`` (naming the extra to install) unless plotly can be imported."""
    try:
        import plotly.io  # noqa: F401
    except ImportError:
        raise MissingDependency(PLOTLY_MISSING) from None


def render_html(
    reports: Sequence[TaskReport],
    data: ReportInput,
    *,
    generated_at: datetime,
    since: datetime | None = None,
    source: str = "",
    progress: Progress | None = None,
) -> str:
    """The whole report page; ``source`` names the database. ``MissingDependency`` without
    plotly; ``progress(what, done, total)`` is told of each chart drawn."""
    require_plotly()
    import plotly.io as pio

    by_task: dict[str, list[dict[str, Any]]] = {}
    charted: dict[str, dict[str, Any]] = {}
    for row in data.rows:  # one pass: the measured runs of each task, and the charted ones
        if measured(row):
            by_task.setdefault(row["task"], []).append(row)
        if row["run_id"] in data.timelines:
            charted[row["run_id"]] = row
    # No empty charts: each is drawn only when there is something to draw in it.
    figures = []
    if by_task:
        figures += [
            _distribution(reports, by_task, "peak_memory_bytes"),
            _distribution(reports, by_task, "wall_seconds"),
        ]
    distributions = len(figures)
    spans = [row for row in data.rows if row.get("started_at")]
    if spans:
        figures.append(_all_runs(spans, generated_at))
    overview = len(figures)
    notes = []
    for run_id, samples in data.timelines.items():
        if samples:
            figures.append(_timeline(charted[run_id], samples))
        elif run_id in data.requested:  # one chosen for the reader has nothing to draw: left out
            notes.append(f"{charted[run_id]['task']} {run_id}: no usage samples were recorded")
    for task, runs in sorted(killed_runs(data.rows).items()):
        left = sum(row["run_id"] not in data.timelines for row in runs)
        if left:
            notes.append(f"{task}: {left} earlier run(s) that enforcement ended are not charted "
                         "(governor report --run RUN_ID charts one)")  # fmt: skip

    charts = []
    for index, figure in enumerate(figures):
        if progress is not None:
            progress("drawing charts", index, len(figures))
        charts.append(
            pio.to_html(
                figure,
                include_plotlyjs=index == 0,  # the library once, inlined: the page needs no network
                full_html=False,
                config={"displaylogo": False, "responsive": True},
                div_id=f"chart-{index}",
            )
        )
    if progress is not None:
        progress("drawing charts", len(figures), len(figures))
    scope = scope_text(since)
    generated = generated_at.isoformat(timespec="seconds")
    executions = sum(report.runs for report in reports)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>governor report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>governor report</h1>",
        f'<p class="meta">{len(reports)} task(s), {executions} execution(s){_e(scope)}'
        f"{' from ' + _e(source) if source else ''}; generated {_e(generated)}."
        " Percentiles are nearest-rank.</p>",
        "<h2>Summary</h2>",
        _summary_table(reports),
        *(["<h2>Peak memory and duration per task</h2>"] if distributions else []),
        *(f'<div class="chart">{chart}</div>' for chart in charts[:distributions]),
        *(["<h2>All runs</h2>"] if overview > distributions else []),
        *(f'<div class="chart">{chart}</div>' for chart in charts[distributions:overview]),
        "<h2>What did not succeed</h2>",
        _error_table(data.rows),
        *(["<h2>Timelines</h2>"] if notes or len(charts) > overview else []),
        *(f"<p>{_e(note)}</p>" for note in notes),
        *(f'<div class="chart">{chart}</div>' for chart in charts[overview:]),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# -------------------------------------------------------------------------------------- charts


def _distribution(reports: Sequence[TaskReport], by_task: dict[str, list[dict[str, Any]]], key: str) -> Any:
    """One box per task of ``key`` over its measured runs (``by_task``)."""
    import plotly.graph_objects as go

    memory = key == "peak_memory_bytes"
    scale = _MIB if memory else 1.0
    figure = go.Figure()
    # Memory: one box per task. Duration: one per task and outcome, side by side (a run killed
    # at its limit and one that finished tell different stories about how long a task takes).
    groups: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        for row in by_task.get(report.task, ()):
            if row.get(key) is not None:
                groups.setdefault("all" if memory else str(row.get("outcome")), []).append(row)
    for group, rows in groups.items():
        figure.add_trace(
            go.Box(
                x=[row["task"] for row in rows],
                y=[row[key] / scale for row in rows],
                name="runs" if memory else group,
                marker={"color": _OUTCOME_COLOURS.get(group, "#1f77b4")},
                text=[f"{row['run_id']} ({row['outcome']})" for row in rows],
                boxpoints="all" if len(rows) <= _ALL_POINTS_UP_TO else "outliers",
                jitter=0.4,
                pointpos=0,
                hovertemplate="%{text}<br>%{y:.3~f}" + (" MiB" if memory else " s") + "<extra></extra>",
            )
        )
    limits = [(report.task, report.memory_limit) for report in reports if report.memory_limit]
    if memory and limits:
        figure.add_trace(
            go.Scatter(
                x=[task for task, _ in limits],
                y=[limit / _MIB for _, limit in limits],
                mode="markers",
                name="memory limit",
                marker={"symbol": "line-ew-open", "size": 40, "color": "crimson", "line": {"width": 3}},
                hovertemplate="limit %{y:.1f} MiB<extra>%{x}</extra>",
            )
        )
    figure.update_layout(
        title="Peak memory per execution" if memory else "Duration per execution (wall time)",
        yaxis_title="MiB" if memory else "seconds",
        showlegend=bool(limits) if memory else True,
        boxmode="group",
        height=440,
        margin={"t": 60, "b": 40},
    )
    figure.update_yaxes(rangemode="tozero")
    return figure


def _timeline(row: dict[str, Any], samples: Sequence[dict[str, Any]]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    seconds = [sample["seconds"] for sample in samples]
    rate_at, rate = _cpu_rate(samples)
    limits = row.get("limits") or {}
    figure = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1, subplot_titles=("memory", "CPU rate")
    )
    figure.add_trace(
        go.Scatter(
            x=seconds,
            y=[sample["memory_bytes"] / _MIB for sample in samples],
            mode="lines",
            name="memory (MiB)",
            hovertemplate="%{x:.2f}s: %{y:.1f} MiB<extra></extra>",
        ),
        row=1,
        col=1,
    )
    figure.add_trace(
        go.Scatter(
            x=rate_at,
            y=rate,
            mode="lines",
            line_shape="hv",  # each rate holds over the interval it was measured on
            name="CPU (cores)",
            hovertemplate="%{x:.2f}s: %{y:.2f} cores<extra></extra>",
        ),
        row=2,
        col=1,
    )
    if limits.get("memory"):
        figure.add_hline(
            y=limits["memory"] / _MIB,
            line={"dash": "dash", "color": "crimson"},
            annotation_text=f"limit {format_size(limits['memory'])}",
            annotation_position="top left",
            row=1,
            col=1,
        )
    reason = kill_reason(row)
    if reason is not None:  # where enforcement ended it: at the memory limit it hit, or its last sample
        at_limit = bool(limits.get("memory")) and row.get("breached_limit") == "memory"
        figure.add_trace(
            go.Scatter(
                x=[seconds[-1]],
                y=[(limits["memory"] if at_limit else samples[-1]["memory_bytes"]) / _MIB],
                mode="markers+text",
                marker={"symbol": "x", "size": 14, "color": "crimson"},
                text=["killed at its limit" if at_limit else f"ended: {reason}"],
                textposition="top left",
                name="killed",
                hovertemplate=(
                    "killed at %{x:.2f}s, at its limit %{y:.1f} MiB<extra></extra>"
                    if at_limit
                    else f"{reason} at %{{x:.2f}}s, using %{{y:.1f}} MiB<extra></extra>"
                ),
            ),
            row=1,
            col=1,
        )
    if limits.get("cpu_rate"):
        figure.add_hline(
            y=limits["cpu_rate"],
            line={"dash": "dash", "color": "crimson"},
            annotation_text=f"limit {limits['cpu_rate']:g} cores",
            annotation_position="top left",
            row=2,
            col=1,
        )
    peak = format_size(row.get("peak_memory_bytes"))
    figure.update_layout(
        title=f"{row['task']} · {row['run_id']} · {row.get('outcome') or 'running'} · peak {peak}",
        height=520,
        showlegend=False,
        margin={"t": 80, "b": 40},
    )
    figure.update_yaxes(title_text="MiB", rangemode="tozero", row=1, col=1)
    figure.update_yaxes(title_text="cores", rangemode="tozero", row=2, col=1)
    figure.update_xaxes(title_text="seconds since start", row=2, col=1)
    return figure


def _all_runs(rows: Sequence[dict[str, Any]], now: datetime) -> Any:
    """Every execution as a bar from its start to its end, coloured by outcome, each retry
    tied to the attempt before it by a dotted line; beneath, how many ran at once."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(
        rows=2, cols=1, shared_xaxes=True, row_heights=[0.75, 0.25], vertical_spacing=0.06,
        subplot_titles=("executions", "running at once"),
    )  # fmt: skip
    # A run in flight reaches to the latest moment the data knows of (not to now: a database
    # read long after would squeeze every other bar to nothing). A lost run's end is when
    # recovery found it, which may be days later: it is drawn as long as its measured wall
    # time, if it has one.
    known = [_when(row[key]) for row in rows for key in ("started_at", "ended_at")
             if row.get(key) and row.get("outcome") != "lost"]  # fmt: skip
    latest = max(known) if known else now
    spans = []
    for row in rows:
        start = _when(row["started_at"])
        if row.get("ended_at") and row.get("outcome") != "lost":
            end = _when(row["ended_at"])
        elif row.get("outcome") is None:
            end = latest
        else:
            end = start + timedelta(seconds=row.get("wall_seconds") or 0.0)
        spans.append((row, start, max(end, start)))  # a clock stepped back must not end it first
    by_outcome: dict[str, list[tuple[dict[str, Any], datetime, datetime]]] = {}
    for span in spans:
        by_outcome.setdefault(str(span[0].get("outcome") or "running"), []).append(span)
    for outcome, group in by_outcome.items():
        figure.add_trace(
            go.Bar(
                y=[row["task"] for row, _, _ in group],
                x=[max((end - start).total_seconds(), 0.001) * 1000 for _, start, end in group],
                base=[start.isoformat() for _, start, _ in group],
                orientation="h",
                name=outcome,
                marker={"color": _OUTCOME_COLOURS.get(outcome, "#7f7f7f")},
                customdata=[
                    [row["run_id"], row.get("attempt", 1), format_duration((end - start).total_seconds())]
                    for row, start, end in group
                ],
                hovertemplate="%{y} · %{customdata[0]} · attempt %{customdata[1]}<br>%{base|%H:%M:%S}, "
                "%{customdata[2]}<extra>" + outcome + "</extra>",
            ),
            row=1,
            col=1,
        )
    # A retry (attempt n) follows the latest earlier attempt n-1 of the same task.
    links_x: list[str | None] = []
    links_y: list[str | None] = []
    ended: dict[tuple[str, int], datetime] = {}  # (task, attempt) -> end of the latest started so far
    for row, start, end in sorted(spans, key=lambda span: span[1]):
        attempt = row.get("attempt") or 1
        previous_end = ended.get((row["task"], attempt - 1))
        if attempt > 1 and previous_end is not None:
            links_x += [previous_end.isoformat(), start.isoformat(), None]
            links_y += [row["task"], row["task"], None]
        ended[(row["task"], attempt)] = end
    if links_x:
        figure.add_trace(
            go.Scatter(
                x=links_x, y=links_y, mode="lines", name="retry of", hoverinfo="skip",
                line={"dash": "dot", "color": "#555", "width": 1},
            ),
            row=1,
            col=1,
        )  # fmt: skip
    # At one instant starts come before ends: a run that starts and ends then (or one ending
    # as the next starts) never makes the count go below what runs.
    events = sorted([(start, 1) for _, start, _ in spans] + [(end, -1) for _, _, end in spans],
                    key=lambda event: (event[0], -event[1]))  # fmt: skip
    times, counts, running = [], [], 0
    for when, change in events:
        running += change
        times.append(when.isoformat())
        counts.append(running)
    figure.add_trace(
        go.Scatter(
            x=times, y=counts, mode="lines", line_shape="hv", name="at once", showlegend=False,
            hovertemplate="%{x|%H:%M:%S}: %{y} running<extra></extra>",
        ),
        row=2,
        col=1,
    )  # fmt: skip
    figure.update_layout(
        title="All runs (one bar per execution)", barmode="overlay",
        height=max(380, 200 + 36 * len({row["task"] for row in rows})),
        margin={"t": 70, "b": 40},
    )  # fmt: skip
    figure.update_xaxes(type="date", row=1, col=1)
    figure.update_xaxes(type="date", row=2, col=1)
    figure.update_yaxes(title_text="runs", rangemode="tozero", row=2, col=1)
    return figure


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _cpu_rate(samples: Sequence[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Cores in use between consecutive samples (``cpu_seconds`` is cumulative): each rate at
    the start of its interval, the last one repeated at the end, for a step line."""
    at: list[float] = []
    rate: list[float] = []
    for before, after in itertools.pairwise(samples):
        elapsed = after["seconds"] - before["seconds"]
        if elapsed > 0:
            at.append(before["seconds"])
            rate.append(max(0.0, (after["cpu_seconds"] - before["cpu_seconds"]) / elapsed))
    if rate:
        at.append(samples[-1]["seconds"])
        rate.append(rate[-1])
    return at, rate


# ------------------------------------------------------------------------------------- summary


_FIGURE_HEADERS = (
    "task", "runs", "success", "wall p50", "wall p95", "peak p50", "peak p95", "peak max", "memory limit",
    "CPU total",
)  # fmt: skip
_DETAIL_HEADERS = ("task", "outcomes", "kills", "admission wait", "learned estimate")


def _error_table(rows: Sequence[dict[str, Any]]) -> str:
    """Every execution that ended otherwise than ``succeeded``, the newest first (at most
    ``_ERRORS_SHOWN``): when, task, attempt, outcome and why."""
    failed = [row for row in rows if row.get("outcome") not in (None, "succeeded")]
    if not failed:
        return "<p>Every execution succeeded.</p>"
    failed.sort(key=lambda row: row.get("started_at") or "", reverse=True)
    shown = failed[:_ERRORS_SHOWN]
    lines = [
        (
            (row.get("started_at") or "-")[:19].replace("T", " "),
            row["task"],
            str(row.get("attempt") or 1),
            str(row["outcome"]),
            ((row.get("error") or {}).get("message") or "-"),
        )
        for row in shown
    ]
    more = f"<p>{len(failed) - len(shown)} older ones are not shown.</p>" if len(failed) > len(shown) else ""
    return _table(("started", "task", "attempt", "outcome", "why"), lines, text_columns=5) + more


def _summary_table(reports: Sequence[TaskReport]) -> str:
    if not reports:
        return "<p>No executions recorded.</p>"
    figures = _table(_FIGURE_HEADERS, [_figures(report) for report in reports], text_columns=1)
    details = _table(_DETAIL_HEADERS, [_details(report) for report in reports], text_columns=5)
    return f"{figures}\n<p></p>\n{details}"


def _figures(report: TaskReport) -> tuple[str, ...]:
    share = report.peak_memory_share
    return (
        report.task,
        str(report.runs) + (f" ({report.in_flight} in flight)" if report.in_flight else ""),
        percent(report.success_rate),
        format_duration(report.duration.p50),
        format_duration(report.duration.p95),
        format_size(report.peak_memory.p50),
        format_size(report.peak_memory.p95),
        format_size(report.peak_memory.max)
        + (f" ({share * 100:.0f}% of limit)" if share is not None else ""),
        format_size(report.memory_limit),
        f"{report.cpu_seconds_total:.2f}s",
    )


def _details(report: TaskReport) -> tuple[str, ...]:
    wait = wait_text(report) if report.wait.count else "-"
    estimate = estimate_text(report.estimate) if report.estimate is not None else "-"
    outcomes, kills = counts_text(report.outcomes) or "-", counts_text(report.kills) or "none"
    return (report.task, outcomes, kills, wait, estimate)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, text_columns: int) -> str:
    """An HTML table; the columns from ``text_columns`` on are numbers, aligned right."""
    head = "<tr>" + "".join(f"<th>{_e(header)}</th>" for header in headers) + "</tr>"
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{_e(cell)}</td>" if index < text_columns else f'<td class="n">{_e(cell)}</td>'
            for index, cell in enumerate(cells)
        )
        + "</tr>"
        for cells in rows
    )
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
