"""``governor report``: figures checked against a database of known executions (records built
by hand, no execution is run), the JSON/CSV/table shapes, the command line, and the HTML report
rendered in headless Chromium (skipped when the host has none).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
from conftest import wait_until
from guards import guard

from governor.cli import main
from governor.service._estimates import learn_from_history
from governor.service._store import Store
from governor.views import _report as report
from governor.views._report import ReportError, ReportInput, Spread, TaskReport
from policies import Estimate, Limits
from runner import Execution, Outcome, Sample, TaskError, Usage

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MiB = 1 << 20
NIGHTLY_LIMITS = Limits(memory="256MiB")
ARTIFACTS = Path(__file__).parent / "artifacts"

# (run id, outcome, breached limit, peak MiB, wall s, user CPU s, admission wait s, wait reason)
# Each nightly run starts one hour after the previous; system CPU is 0.5 s for all.
NIGHTLY = [
    ("n1", Outcome.SUCCEEDED, None, 100, 10.0, 8.0, 2.0, None),
    ("n2", Outcome.SUCCEEDED, None, 120, 12.0, 9.0, 30.0, "memory"),
    ("n3", Outcome.FAILED, None, 80, 5.0, 4.0, 0.0, None),
    ("n4", Outcome.MEMORY_EXCEEDED, "memory", 256, 3.0, 2.5, 5.0, "memory"),
    ("n5", Outcome.SUCCEEDED, None, 110, 11.0, 8.5, 1.0, None),
    ("n6", Outcome.TIMED_OUT, "wall_time", 90, 20.0, 1.0, 0.0, None),
    ("n7", Outcome.EVICTED, None, 200, 7.0, 5.0, 4.0, None),
]
# n8 is still in flight (queued 6 s before it started); n9 was lost (never queued: a direct run).


def execution(
    outcome: Outcome,
    *,
    started_at: datetime,
    peak_mib: float,
    wall: float,
    cpu_user: float,
    cpu_system: float = 0.0,
    limits: Limits = NIGHTLY_LIMITS,
    breached: str | None = None,
    wait: float | None = None,
    wait_reason: str | None = None,
    timeline: tuple[Sample, ...] = (),
) -> Execution:
    """A finished execution with the given figures."""
    error = None
    if outcome is not Outcome.SUCCEEDED:
        error = TaskError(type="builtins.RuntimeError", message=str(outcome))
    return Execution(
        outcome=outcome,
        exit_code=0 if outcome is Outcome.SUCCEEDED else None,
        signal=None,
        breached_limit=breached,
        error=error,
        usage=Usage(
            peak_memory_bytes=int(peak_mib * MiB),
            cpu_user_seconds=cpu_user,
            cpu_system_seconds=cpu_system,
            wall_seconds=wall,
            peak_processes=1,
            timeline=timeline,
            memory_source="cgroup",
        ),
        limits=limits,
        enforcement={"memory": "cgroup2"},
        unenforced=(),
        started_at=started_at,
        ended_at=started_at + timedelta(seconds=wall),
        pid=1000,
        queued_at=None if wait is None else started_at - timedelta(seconds=wait),
        wait_reason=wait_reason,
    )


def ramp(peak_mib: float, seconds: int, cores: float) -> tuple[Sample, ...]:
    """A timeline that grows to ``peak_mib`` over ``seconds`` using ``cores`` throughout."""
    return tuple(
        Sample(float(t), int(peak_mib * MiB * t / seconds), cores * t, 1) for t in range(1, seconds + 1)
    )


def populate(path: Path) -> None:
    """The database of known executions the figures below are computed from."""
    with Store(path, batch_interval=0) as store:
        for hour, (run_id, outcome, breached, peak, wall, user, wait, reason) in enumerate(NIGHTLY):
            record = execution(
                outcome,
                started_at=T0 + timedelta(hours=hour),
                peak_mib=peak,
                wall=wall,
                cpu_user=user,
                cpu_system=0.5,
                breached=breached,
                wait=wait,
                wait_reason=reason,
                timeline=ramp(peak, 3, 1.0) if run_id in ("n4", "n6") else (),
            )
            store.finished(run_id, "nightly", record)
        limits = NIGHTLY_LIMITS.as_dict()
        in_flight = T0 + timedelta(hours=7)
        store.started("n8", "nightly", 1, in_flight - timedelta(seconds=6), in_flight, 2000, 1, [], limits)
        store.started("n9", "nightly", 1, None, T0 + timedelta(hours=8), 2001, 1, [], limits)
        store.flush()
        store.mark_lost(["n9"], "the supervisor died")

        # hourly: direct runs (never queued), no limits, all succeeded, 0.5 cores each.
        for index, (run_id, peak, wall) in enumerate([("h1", 10, 1.0), ("h2", 20, 2.0), ("h3", 30, 3.0)]):
            store.finished(
                run_id,
                "hourly",
                execution(
                    Outcome.SUCCEEDED,
                    started_at=T0 + timedelta(hours=10 + index),
                    peak_mib=peak,
                    wall=wall,
                    cpu_user=wall / 2,
                    limits=Limits(),
                    timeline=ramp(peak, 3, 0.5) if run_id == "h3" else (),
                ),
            )

        # sweep: killed by hand, failed on a minor limit, and one that could not start.
        started = T0 + timedelta(hours=20)
        cancelled = execution(
            Outcome.CANCELLED,
            started_at=started,
            peak_mib=50,
            wall=2.0,
            cpu_user=1.0,
            timeline=ramp(50, 2, 0.5),
        )
        store.finished("s1", "sweep", cancelled)
        pids = execution(Outcome.FAILED, started_at=started + timedelta(hours=1), peak_mib=40, wall=1.0,
                         cpu_user=0.25, breached="pids")  # fmt: skip
        store.finished("s2", "sweep", pids)
        unstarted = Execution.unstarted(NIGHTLY_LIMITS, OSError("fork failed"))
        moment = started + timedelta(hours=2)
        store.finished("s3", "sweep", replace(unstarted, started_at=moment, ended_at=moment))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "governor.db"
    populate(path)
    return path


@pytest.fixture(scope="module")
def data(db: Path) -> ReportInput:
    with Store(db) as store:
        return report.read(store, chart_runs=[])


@pytest.fixture(scope="module")
def reports(data: ReportInput) -> dict[str, TaskReport]:
    return {task_report.task: task_report for task_report in report.build_reports(data.rows)}


# ------------------------------------------------------------------------------------ figures


def test_percentile_is_nearest_rank() -> None:
    assert report.percentile([4, 1, 3, 2], 50) == 2
    assert report.percentile([4, 1, 3, 2], 95) == 4
    assert report.percentile(range(1, 101), 95) == 95  # not 96: 0.95 * 100 is not exactly 95 in floats
    assert report.percentile(range(1, 21), 95) == 19
    assert report.percentile([7.5], 50) == 7.5
    assert report.percentile([], 50) is None
    with pytest.raises(ValueError, match="percent"):
        report.percentile([1], 0)


def test_nightly_figures(reports: dict[str, TaskReport], data: ReportInput) -> None:
    nightly = reports["nightly"]
    assert (nightly.runs, nightly.ended, nightly.in_flight, nightly.succeeded) == (9, 8, 1, 3)
    assert nightly.success_rate == 3 / 8
    assert nightly.outcomes == {
        "succeeded": 3, "evicted": 1, "failed": 1, "lost": 1, "memory_exceeded": 1, "timed_out": 1,
    }  # fmt: skip
    assert nightly.kills == {"evicted": 1, "memory_exceeded": 1, "timed_out": 1}
    # Measured: n1..n7 (n8 is in flight, n9 was lost). Peaks sorted: 80 90 100 110 120 200 256.
    assert nightly.peak_memory == Spread(count=7, p50=110 * MiB, p95=256 * MiB, max=256 * MiB)
    assert nightly.memory_limit == 256 * MiB
    assert nightly.peak_memory_share == 1.0
    # Walls sorted: 3 5 7 10 11 12 20.
    assert nightly.duration == Spread(count=7, p50=10.0, p95=20.0, max=20.0)
    # CPU (user + 0.5 system) sorted: 1.5 3.0 4.5 5.5 8.5 9.0 9.5.
    assert nightly.cpu_seconds == Spread(count=7, p50=5.5, p95=9.5, max=9.5)
    assert nightly.cpu_seconds_total == 41.5
    # Waits (n1..n8; n9 never queued) sorted: 0 0 1 2 4 5 6 30.
    assert nightly.wait == Spread(count=8, p50=2.0, p95=30.0, max=30.0)
    assert nightly.wait_total_seconds == 48.0
    assert nightly.wait_reasons == {"memory": 2}
    # Learned from the task's rows under its latest limits, as the server learns at start...
    rows = [row for row in data.rows if row["task"] == "nightly"]
    assert nightly.estimate == learn_from_history(rows).estimate("nightly", memory_limit=256 * MiB)
    # ... whose figures here are: memory, the weighted p95 of peaks, is n4's kill floor (1.5 x
    # 256 MiB) capped at the limit; duration, the weighted median of the runs that ended by
    # themselves (not n4), 11 s. (The CPU rate's averaging is the estimator's to test.)
    assert nightly.estimate is not None
    assert (nightly.estimate.memory_bytes, nightly.estimate.source) == (256 * MiB, "history")
    assert nightly.estimate.duration_seconds == 11.0


def test_direct_runs_have_no_wait_and_a_learned_estimate(reports: dict[str, TaskReport]) -> None:
    hourly = reports["hourly"]
    assert (hourly.runs, hourly.success_rate, hourly.kills) == (3, 1.0, {})
    assert hourly.peak_memory == Spread(count=3, p50=20 * MiB, p95=30 * MiB, max=30 * MiB)
    assert hourly.memory_limit is None and hourly.peak_memory_share is None
    assert hourly.wait == Spread(count=0, p50=None, p95=None, max=None)
    assert (hourly.wait_total_seconds, hourly.wait_reasons) == (0.0, {})
    assert hourly.estimate == Estimate(30 * MiB, 0.5, "history", 2.0)


def test_cancelled_minor_limits_and_unstarted_runs(reports: dict[str, TaskReport]) -> None:
    sweep = reports["sweep"]
    assert (sweep.runs, sweep.ended, sweep.success_rate) == (3, 3, 0.0)
    assert sweep.kills == {"cancelled": 1, "pids_exceeded": 1}
    # The execution that could not start measured nothing: only s1 and s2 count.
    assert sweep.peak_memory == Spread(count=2, p50=40 * MiB, p95=50 * MiB, max=50 * MiB)
    assert sweep.duration == Spread(count=2, p50=1.0, p95=2.0, max=2.0)


def test_the_charted_runs_are_each_tasks_largest_peak_and_killed_ones_then_those_asked_for(
    data: ReportInput,
) -> None:
    """Each task's largest, then its runs enforcement ended, the latest first: n7 (evicted) and
    n6 (timed out) beside n4 (killed for memory, and the largest); s2 (pids) beside s1."""
    assert report.chosen_runs(data.rows) == ["h3", "n4", "n7", "n6", "s1", "s2"]
    assert report.chosen_runs(data.rows, ["n2", "h3"]) == ["h3", "n4", "n7", "n6", "s1", "s2", "n2"]
    with pytest.raises(ReportError, match="--run nope"):
        report.chosen_runs(data.rows, ["nope"])


def test_at_most_the_latest_killed_runs_are_charted_and_the_rest_are_counted(tmp_path: Path) -> None:
    """A task killed a hundred times would have drawn a hundred charts."""
    pytest.importorskip("plotly")
    from governor.views._report_html import render_html

    with Store(tmp_path / "governor.db", batch_interval=0) as store:
        store.finished("big", "hog", execution(Outcome.SUCCEEDED, started_at=T0, peak_mib=300, wall=1.0,
                                               cpu_user=0.5))  # fmt: skip
        for index in range(report.KILLED_CHARTED + 3):
            killed = execution(Outcome.MEMORY_EXCEEDED, started_at=T0 + timedelta(minutes=index + 1),
                               peak_mib=256, wall=1.0, cpu_user=0.5, breached="memory",
                               timeline=ramp(256, 2, 1.0))  # fmt: skip
            store.finished(f"k{index}", "hog", killed)
        store.flush()
        data = report.read(store, chart_runs=[])
    latest = [f"k{index}" for index in range(report.KILLED_CHARTED + 2, 2, -1)]
    assert list(data.timelines) == ["big", *latest]
    page = render_html(report.build_reports(data.rows), data, generated_at=T0 + timedelta(hours=1))
    assert page.count("killed at its limit") == report.KILLED_CHARTED  # each charted one marked
    assert "hog: 3 earlier run(s) that enforcement ended are not charted" in page


def test_read_filters_by_task_and_since_and_reads_the_charted_timelines(db: Path) -> None:
    with Store(db) as store:
        seen: list[tuple[str, int, int]] = []
        found = report.read(
            store,
            tasks=["hourly", "nightly", "hourly"],
            since=T0 + timedelta(hours=3),
            chart_runs=["n5"],
            progress=lambda what, done, total: seen.append((what, done, total)),
        )
    assert [row["run_id"] for row in found.rows] == ["h1", "h2", "h3", "n4", "n5", "n6", "n7", "n8", "n9"]
    assert list(found.timelines) == ["h3", "n4", "n7", "n6", "n5"]
    assert [sample["memory_bytes"] for sample in found.timelines["n4"]] == [
        int(256 * MiB * t / 3) for t in (1, 2, 3)
    ]
    assert found.timelines["n5"] == []
    assert seen[-1] == ("reading timelines", 5, 5)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_shown_on_a_terminal_only_and_erased_when_done() -> None:
    assert report.terminal_progress(io.StringIO()) is None  # a pipe or a log file: no progress lines
    terminal = _Terminal()
    progress = report.terminal_progress(terminal)
    assert progress is not None
    progress("reading timelines", 1, 3)
    progress("reading timelines", 3, 3)
    assert terminal.getvalue() == "\rgovernor report: reading timelines 1/3\x1b[K\r\x1b[K"


def test_parse_since() -> None:
    now = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    assert report.parse_since("7d", now) == now - timedelta(days=7)
    assert report.parse_since("12h", now) == now - timedelta(hours=12)
    assert report.parse_since("1h30m", now) == now - timedelta(minutes=90)
    assert report.parse_since("2024-05-01T12:00+02:00", now) == datetime(
        2024, 5, 1, 12, tzinfo=timezone(timedelta(hours=2))
    )
    assert report.parse_since("2024-05-01", now) == datetime(2024, 5, 1).astimezone()  # naive: local time
    for bad in ("yesterday", "7 weeks", ""):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            report.parse_since(bad, now)


# ------------------------------------------------------------------------------------- shapes


def test_json_shape(reports: dict[str, TaskReport]) -> None:
    document = json.loads(report.render_json(list(reports.values()), since=T0))
    assert document["since"] == T0.isoformat()
    nightly = next(task for task in document["tasks"] if task["task"] == "nightly")
    assert nightly["peak_memory_bytes"] == {"count": 7, "p50": 110 * MiB, "p95": 256 * MiB, "max": 256 * MiB}
    assert nightly["duration_seconds"] == {"count": 7, "p50": 10.0, "p95": 20.0, "max": 20.0}
    assert nightly["wait_seconds"]["p95"] == 30.0
    assert nightly["kills"] == {"evicted": 1, "memory_exceeded": 1, "timed_out": 1}
    estimate = reports["nightly"].estimate
    assert estimate is not None
    assert nightly["estimate"] == {
        "memory_bytes": 256 * MiB,
        "cpu_cores": estimate.cpu_cores,
        "duration_seconds": 11.0,
        "source": "history",
    }
    assert (nightly["runs"], nightly["ended"], nightly["success_rate"]) == (9, 8, 0.375)


def test_csv_shape(reports: dict[str, TaskReport]) -> None:
    rows = list(csv.DictReader(io.StringIO(report.render_csv(list(reports.values())))))
    assert [row["task"] for row in rows] == ["hourly", "nightly", "sweep"]
    assert tuple(rows[0]) == report.CSV_COLUMNS
    nightly = rows[1]
    assert nightly["peak_memory_p50_bytes"] == str(110 * MiB)
    assert nightly["duration_p95_seconds"] == "20.0"
    assert nightly["success_rate"] == "0.375"
    assert nightly["kills"] == "evicted=1;memory_exceeded=1;timed_out=1"
    assert nightly["wait_reasons"] == "memory=2"
    assert rows[0]["memory_limit_bytes"] == "" and rows[0]["wait_p50_seconds"] == ""  # unknown: empty
    assert rows[0]["wait_total_seconds"] == "0.0"


def test_table_is_aligned(reports: dict[str, TaskReport]) -> None:
    text = report.render_table(list(reports.values()))
    lines = text.splitlines()
    assert lines[0] == "3 task(s), 15 execution(s)"
    header, *body = lines[2:6]
    assert header.split()[:3] == ["task", "runs", "success"]
    assert body[1].split()[:3] == ["nightly", "9", "37.5%"]
    assert header.split()[11:14] == ["peak", "max", "of"]  # the share has a column of its own
    assert body[1].split()[9:12] == ["256.0", "MiB", "100.0%"]
    assert {len(line) for line in [header, *body]} == {len(header)}  # right-aligned last column
    assert "nightly: outcomes succeeded 3, evicted 1" in text
    assert "kills evicted 1, memory_exceeded 1, timed_out 1" in text
    assert re.search(r"nightly: .*; estimate 256\.0 MiB, [0-9.]+ cores, 11\.00s \(from history\)", text)
    assert (
        "hourly: outcomes succeeded 3; kills none; estimate 30.0 MiB, 0.50 cores, 2.00s (from history)"
        in text
    )
    assert report.render_table([]) == "no executions recorded\n"


# ------------------------------------------------------------------------------- command line


def governor(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "governor", *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=guard(60),
    )


def test_cli_json_with_tasks_and_since(db: Path) -> None:
    done = governor("report", "nightly", "ghost", "--db", str(db), "--format", "json", "--since",
                    (T0 + timedelta(hours=5)).isoformat())  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert [task["task"] for task in document["tasks"]] == ["nightly"]
    assert document["tasks"][0]["runs"] == 4  # n6..n9
    assert "no executions of 'ghost'" in done.stderr


def test_cli_table_and_csv_to_a_file(db: Path, tmp_path: Path) -> None:
    done = governor("report", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3 task(s), 15 execution(s)")
    target = tmp_path / "out.csv"
    done = governor("report", "--db", str(db), "--format", "csv", "-o", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(target)
    assert target.read_text().splitlines()[0] == ",".join(report.CSV_COLUMNS)


def test_cli_errors_name_what_is_wrong(db: Path, tmp_path: Path) -> None:
    done = governor("report", "--db", str(db), "--since", "last tuesday")
    assert done.returncode == 2
    assert "--since: cannot read 'last tuesday'" in done.stderr and not done.stdout
    done = governor("report", "--db", str(db), "--format", "html", "--run", "nope", cwd=tmp_path)
    assert done.returncode == 2 and "--run nope" in done.stderr
    assert not (tmp_path / "governor-report.html").exists()
    done = governor("report", "--db", str(db), "--run", "n1")
    assert done.returncode == 2 and "only the html format" in done.stderr
    done = governor("report", "--db", str(tmp_path / "missing.db"))
    assert done.returncode == 1 and "no database at" in done.stderr


def test_html_without_plotly_names_the_extra(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [module for module in sys.modules if module == "plotly" or module.startswith("plotly.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "plotly", None)  # makes `import plotly` fail
    assert main(["report", "--db", str(db), "--format", "html"]) == 4
    assert "pip install 'resource-governor[report]'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- html


@pytest.fixture(scope="module")
def html_report(db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("plotly")
    cwd = tmp_path_factory.mktemp("html")
    done = governor("report", "--db", str(db), "--format", "html", "--run", "n2", cwd=cwd)
    assert done.returncode == 0, done.stderr
    path = cwd / "governor-report.html"
    assert done.stdout.strip() == str(path)
    return path


# Peak memory and duration distributions; all runs; timelines of h3, n4, n6, s1 (n2, n7 and s2
# have no samples: n2, asked for, is named as such; the others are left out).
CHARTS = 2 + 1 + 4


def test_html_is_one_self_contained_file(html_report: Path, db: Path) -> None:
    page = html_report.read_text()
    assert page.count("window.PlotlyConfig") == 1  # plotly.js inlined exactly once
    assert not re.search(r"<(script|link|img)\b[^>]*\b(src|href)=", page)  # nothing to fetch
    assert all(f'id="chart-{index}"' in page for index in range(CHARTS))
    assert "n2: no usage samples were recorded" in page  # asked for, but it has no timeline
    assert "<td>nightly</td>" in page and "37.5%" in page
    # What did not succeed: one row each, newest first, with why.
    with Store(db) as store:
        failed = [row for row in store.history() if row["outcome"] not in (None, "succeeded")]
    errors = page.split("<h2>What did not succeed</h2>", 1)[1].split("</table>", 1)[0]
    assert errors.count("<tr>") == 1 + len(failed) and len(failed) >= 5  # a header, then one each
    assert (
        "<td>memory_exceeded</td>" in errors and "<td>timed_out</td>" in errors and "<td>lost</td>" in errors
    )
    assert "All runs (one bar per execution)" in page and "running at once" in page
    assert "killed at its limit" in page  # n4 was killed for memory: its timeline marks where
    assert "ended: timed_out" in page  # and n6 where its wall time ran out
    assert "n7: no usage samples" not in page and "s2: no usage samples" not in page
    from governor.views._report_html import _all_runs

    with Store(db) as store:
        rows = store.history()
    figure = _all_runs(rows, T0 + timedelta(days=30))
    at_once = next(trace for trace in figure.data if trace.name == "at once")
    assert min(at_once.y) >= 0 and max(at_once.y) >= 1  # how many ran at once, never below none
    assert {"succeeded", "memory_exceeded", "lost", "running"} <= {trace.name for trace in figure.data}


def test_every_number_a_hover_shows_is_rounded_for_people(html_report: Path) -> None:
    """Plotly shows a raw float (``0.30000000000000004``) wherever a hover template gives a
    number no format: each x, y and base shown is formatted, or is a task name or a count."""
    found = re.findall(r'"hovertemplate":("(?:[^"\\]|\\.)*")', html_report.read_text())
    templates = {json.loads(template) for template in found}
    assert len(templates) >= 6  # distributions, limits, memory, CPU, kill marks, bars, at once
    shown = {placeholder for template in templates for placeholder in re.findall(r"%\{([^}]*)\}", template)}
    unformatted = {name for name in shown if name in ("x", "y", "base")}
    assert unformatted == {"x", "y"}, shown  # the task (limit lines, bars) and runs at once:
    for template in templates:
        for match in re.finditer(r"%\{(x|y)\}", template):
            context = template[match.end() : match.end() + 12]
            assert context.startswith((" running", "</extra>", " · ")), template
    data = {name for name in shown if name.startswith("customdata")}
    assert data == {"customdata[0]", "customdata[1]", "customdata[2]"}  # run id, attempt, format_duration


def _chromium_processes(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Callable[[str, Path], tuple[str, str]]]:
    """``render(url, screenshot)``: headless Chromium loads ``url`` (a fresh profile, and a
    ``$HOME`` under ``tmp_path``), saves a screenshot and returns (the DOM once scripts have
    run, its log). After the test, no process of it survives."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    home = tmp_path / "home"
    home.mkdir()

    def render(url: str, screenshot: Path) -> tuple[str, str]:
        command = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=5000", "--window-size=1400,3000", f"--screenshot={screenshot}",
            "--dump-dom", url,
        ]  # fmt: skip
        environment = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
            start_new_session=True,
        ) as process:  # fmt: skip
            try:
                return process.communicate(timeout=guard(60))
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)  # the browser and its helpers: one group
                process.wait()

    yield render
    # Its crash handler detaches from us; the home directory in its command line names it.
    marker = str(tmp_path)
    try:
        wait_until(lambda: not _chromium_processes(marker), timeout=guard(10))
    finally:
        for process in _chromium_processes(marker):
            process.kill()


def test_html_renders_its_charts_in_chromium(
    html_report: Path, chromium: Callable[[str, Path], tuple[str, str]]
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    screenshot.unlink(missing_ok=True)
    shutil.copy(html_report, ARTIFACTS / "report.html")
    dom, log = chromium(html_report.as_uri(), screenshot)
    print(f"screenshot of the HTML report: {screenshot}")
    console = [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, "the page wrote to the console:\n" + "\n".join(console)
    rendered = re.sub(r"<script\b.*?</script>", "", dom, flags=re.DOTALL)  # plotly.js names its classes too
    for index in range(CHARTS):
        tag = re.search(rf'<div\b[^>]*\bid="chart-{index}"[^>]*>', rendered)
        assert tag is not None and "js-plotly-plot" in tag.group(0), f"chart {index} was not drawn"
    assert rendered.count('class="main-svg"') >= CHARTS
    assert "limit 256.0 MiB" in rendered  # the limit line's label, drawn in n4's memory timeline
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", log[-2000:]
    assert screenshot.stat().st_size > 20_000  # charts, not a blank page


def test_what_held_runs_back_is_stored_summed_and_shown(tmp_path: Path) -> None:
    throttled = (0.25, 0.5)
    with Store(tmp_path / "governor.db", batch_interval=0) as store:
        for index, seconds in enumerate(throttled):
            record = execution(Outcome.SUCCEEDED, started_at=T0 + timedelta(hours=index), peak_mib=10,
                               wall=2.0, cpu_user=0.4)  # fmt: skip
            usage = replace(record.usage, cpu_throttled_seconds=seconds, memory_high_events=3,
                            stall_seconds={"memory": 0.125, "io": 0.0})  # fmt: skip
            store.finished(f"q{index}", "squeezed", replace(record, usage=usage))
        store.flush()
        rows = store.history()
    assert rows[0]["memory_high_events"] == 3 and rows[0]["stall_seconds"] == {"memory": 0.125, "io": 0.0}
    [squeezed] = report.build_reports(rows)
    assert squeezed.held_back == {"cpu_throttled": 0.75, "memory_high": 6, "stall_memory": 0.25}
    assert "held back cpu quota 750ms, past memory_high 6x, stalled on memory 250ms" in report.render_table(
        [squeezed]
    )
    assert json.loads(report.render_json([squeezed]))["tasks"][0]["held_back"]["memory_high"] == 6


def test_the_all_runs_chart_ties_each_retry_to_the_attempt_before_it() -> None:
    pytest.importorskip("plotly")
    from governor.views._report_html import _all_runs

    def row(run_id: str, attempt: int, start: int, end: int, outcome: str) -> dict[str, object]:
        return {"run_id": run_id, "task": "flaky", "attempt": attempt, "outcome": outcome,
                "started_at": (T0 + timedelta(seconds=start)).isoformat(),
                "ended_at": (T0 + timedelta(seconds=end)).isoformat()}  # fmt: skip

    rows = [row("a", 1, 0, 5, "failed"), row("b", 2, 8, 9, "succeeded"), row("c", 1, 20, 21, "succeeded")]
    figure = _all_runs(rows, T0 + timedelta(hours=1))
    [link] = [trace for trace in figure.data if trace.name == "retry of"]
    assert list(link.x) == [
        (T0 + timedelta(seconds=5)).isoformat(),
        (T0 + timedelta(seconds=8)).isoformat(),
        None,
    ]
