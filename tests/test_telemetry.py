"""OpenTelemetry for executions, checked through the SDK's in-memory exporters on real
child processes: spans, metrics, log records, the logging bridge, configuration from the
``OTEL_*`` variables, and children that export nothing."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import task_helpers as th
from guards import guard
from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

from governor import (
    Execution,
    ExecutionFailed,
    GovernedExecutor,
    Limits,
    Outcome,
    Scheduler,
    Task,
    Telemetry,
)

MiB = 1 << 20
GUARD = guard(30)  # seconds: deadlock guards only, never delays


def wait_until(predicate: Callable[[], object], timeout: float = GUARD) -> None:
    # Imported late: a child that unpickles this module's child function imports this module,
    # and conftest at import probes cgroups (which, inside an execution's cgroup, would nest).
    from conftest import wait_until

    wait_until(predicate, timeout)


@dataclass
class Pipeline:
    """A ``Telemetry`` on SDK providers that keep everything in memory."""

    telemetry: Telemetry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    logs: InMemoryLogRecordExporter

    def finished_spans(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def log_records(self) -> list[ReadableLogRecord]:
        return list(self.logs.get_finished_logs())

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """Every data point of the metric ``name``: (attributes, point)."""
        data = self.metrics.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(point.attributes or {}), point) for point in metric.data.data_points]
        return found

    def value(self, name: str, **attributes: Any) -> Any:
        """The value (sum) of the one point of ``name`` with exactly these attributes, or None."""
        wanted = {key.replace("__", "."): value for key, value in attributes.items()}
        for found, point in self.points(name):
            if found == wanted:
                return point.value
        return None


@pytest.fixture
def otel() -> Iterator[Pipeline]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    telemetry = Telemetry(
        tracer_provider=tracer_provider, meter_provider=meter_provider, logger_provider=logger_provider
    )
    yield Pipeline(telemetry, spans, reader, logs)
    telemetry.shutdown()
    tracer_provider.shutdown()
    meter_provider.shutdown()
    logger_provider.shutdown()


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without any ``OTEL_*`` variable (the host's must not leak into tests)."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


class Gate:
    """A FIFO a child blocks on until the test releases it."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "gate")
        self.ready = str(directory / "ready")
        os.mkfifo(self.path)

    def release(self) -> None:
        with open(self.path, "wb"):
            pass


def _context(span: ReadableSpan) -> SpanContext:
    context = span.get_span_context()
    assert context is not None
    return context


def _ns(record: Execution, field: str) -> int:
    moment = getattr(record, field)
    return round(moment.timestamp() * 1_000_000) * 1000


# -- spans ------------------------------------------------------------------------------------


def test_a_successful_call_is_one_root_span_with_status_unset(otel: Pipeline) -> None:
    with GovernedExecutor(1, limits=Limits(memory="256MiB"), telemetry=otel.telemetry) as executor:
        future = executor.submit(th.add, 2, 3)
        assert future.result(timeout=GUARD) == 5
    record: Execution = future.execution  # type: ignore[attr-defined]
    [span] = otel.finished_spans()
    assert span.name == "task_helpers.add"  # the callable, not its arguments: few names
    assert span.kind is SpanKind.INTERNAL and span.parent is None
    assert span.status.status_code is StatusCode.UNSET
    assert (span.start_time, span.end_time) == (_ns(record, "started_at"), _ns(record, "ended_at"))
    attributes = dict(span.attributes or {})
    assert attributes["governor.task.name"] == "task_helpers.add"
    assert attributes["governor.attempt"] == 1
    assert attributes["governor.outcome"] == "succeeded"
    assert attributes["process.pid"] == record.pid
    assert attributes["process.exit.code"] == 0
    assert attributes["governor.peak_memory_bytes"] == record.usage.peak_memory_bytes > 0
    assert attributes["governor.cpu_seconds"] == pytest.approx(record.usage.cpu_seconds)
    assert attributes["governor.limit.memory"] == 256 * MiB
    assert attributes["governor.enforcement.memory"] == record.enforcement["memory"]
    assert "error.type" not in attributes and "governor.breached_limit" not in attributes


def test_a_memory_hog_is_an_error_span_and_one_kill(otel: Pipeline) -> None:
    with GovernedExecutor(1, telemetry=otel.telemetry) as executor:
        hog = executor.options(limits=Limits(memory="64MiB")).submit(th.hold_memory, 512 * MiB)
        with pytest.raises(ExecutionFailed, match="memory_exceeded"):
            hog.result(timeout=GUARD)
        assert executor.submit(th.add, 1, 1).result(timeout=GUARD) == 2
    spans = {span.name: span for span in otel.finished_spans()}
    span = spans["task_helpers.hold_memory"]
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "memory_exceeded"
    assert attributes["governor.outcome"] == "memory_exceeded"
    assert attributes["governor.breached_limit"] == "memory"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description and span.status.description.startswith("memory_exceeded (memory)")
    assert spans["task_helpers.add"].status.status_code is StatusCode.UNSET

    [(attributes, kills)] = otel.points("governor.kills")
    assert attributes == {
        "governor.task.name": "task_helpers.hold_memory",
        "governor.kill.reason": "memory_exceeded",
    }
    assert kills.value == 1
    hog_outcome = {
        "governor.task.name": "task_helpers.hold_memory",
        "governor.outcome": "memory_exceeded",
        "error.type": "memory_exceeded",
    }
    executions = {tuple(sorted(a.items())): p.value for a, p in otel.points("governor.executions.finished")}
    assert executions == {
        tuple(sorted(hog_outcome.items())): 1,
        (("governor.outcome", "succeeded"), ("governor.task.name", "task_helpers.add")): 1,
    }


def test_a_task_span_is_named_after_the_task_and_carries_its_id(otel: Pipeline) -> None:
    task = Task("nightly-report", th.add, args=(1, 2))
    with Scheduler(1, listener=otel.telemetry) as scheduler:
        scheduler.add_task(task)
        assert task.id is not None
        scheduler.fire(task.id)
        assert scheduler.wait(lambda: len(otel.finished_spans()) == 1, timeout=GUARD)
    [span] = otel.finished_spans()
    assert span.name == "nightly-report"
    assert span.attributes is not None
    assert span.attributes["governor.task.id"] == task.id
    assert span.attributes["governor.task.name"] == "nightly-report"


def test_an_execution_that_never_started_gets_a_span_from_its_end_alone(otel: Pipeline) -> None:
    task = Task("nightly-report", th.add, args=(1, 2))
    record = Execution.unstarted(Limits(), OSError("fork failed"), outcome=Outcome.CRASHED)
    otel.telemetry.execution_finished(task, None, record)  # as the loop does when a start fails
    [span] = otel.finished_spans()
    assert span.name == "nightly-report"
    assert (span.start_time, span.end_time) == (_ns(record, "started_at"), _ns(record, "ended_at"))
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and "process.pid" not in span.attributes
    assert span.attributes["error.type"] == "crashed"
    assert otel.points("process.cpu.time") == []  # nothing ran, nothing was used
    assert (
        otel.value(
            "governor.executions.finished",
            governor__task__name="nightly-report",
            governor__outcome="crashed",
            error__type="crashed",
        )
        == 1
    )
    assert otel.points("governor.kills") == []
    [log] = otel.log_records()
    assert log.log_record.span_id == _context(span).span_id


# -- metrics ----------------------------------------------------------------------------------


def test_cpu_time_by_mode_and_peak_memory_match_the_record(otel: Pipeline) -> None:
    with GovernedExecutor(1, telemetry=otel.telemetry) as executor:
        future = executor.submit(th.busy, 0.05)
        future.result(timeout=GUARD)
    record: Execution = future.execution  # type: ignore[attr-defined]
    name = "task_helpers.busy"
    user = otel.value("process.cpu.time", governor__task__name=name, cpu__mode="user")
    system = otel.value("process.cpu.time", governor__task__name=name, cpu__mode="system")
    assert user == pytest.approx(record.usage.cpu_user_seconds) and user > 0
    assert system == pytest.approx(record.usage.cpu_system_seconds)
    [(attributes, peak)] = otel.points("governor.execution.memory.peak")
    assert attributes == {"governor.task.name": name}
    assert (peak.count, peak.sum) == (1, record.usage.peak_memory_bytes)
    assert otel.value("process.memory.usage", governor__task__name=name) == 0  # nothing runs now


def test_running_queued_and_memory_in_use_are_observed_while_they_last(
    otel: Pipeline, tmp_path: Path
) -> None:
    gate = Gate(tmp_path)
    name = "task_helpers.hold_memory_until_released"
    with GovernedExecutor(1, telemetry=otel.telemetry) as executor:
        holder = executor.submit(th.hold_memory_until_released, 48 * MiB, gate.path, gate.ready)
        waiting = executor.submit(th.add, 1, 1)
        wait_until(lambda: Path(gate.ready).exists(), GUARD)
        in_use = lambda: otel.value("process.memory.usage", governor__task__name=name) or 0  # noqa: E731
        wait_until(lambda: in_use() >= 48 * MiB, GUARD)
        assert otel.value("governor.executions.running") == 1
        assert otel.value("governor.executions.queued") == 1
        gate.release()
        assert holder.result(timeout=GUARD) == 48 * MiB
        assert waiting.result(timeout=GUARD) == 2
    assert otel.value("governor.executions.running") == 0
    assert otel.value("governor.executions.queued") == 0
    assert otel.value("process.memory.usage", governor__task__name=name) == 0


def test_an_execution_held_back_by_admission_records_its_wait(otel: Pipeline, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    heavy = Limits(memory="80MiB")
    with GovernedExecutor(2, memory_budget="100MiB", cpu_budget=None, telemetry=otel.telemetry) as executor:
        first = executor.options(limits=heavy).submit(th.wait_for_release, gate.path, gate.ready)
        wait_until(lambda: Path(gate.ready).exists(), GUARD)
        second = executor.options(limits=heavy).submit(th.add, 1, 2)  # 80 MiB more does not fit
        wait_until(lambda: otel.value("governor.executions.queued") == 1, GUARD)
        gate.release()
        assert first.result(timeout=GUARD) == "released"
        assert second.result(timeout=GUARD) == 3
    record: Execution = second.execution  # type: ignore[attr-defined]
    assert record.wait_reason is not None
    [(attributes, waited)] = otel.points("governor.admission.wait")
    assert attributes == {"governor.task.name": "task_helpers.add"}
    assert record.queued_at is not None
    expected = (record.started_at - record.queued_at).total_seconds()
    assert waited.count == 1 and waited.sum == pytest.approx(expected)
    span = next(s for s in otel.finished_spans() if s.name == "task_helpers.add")
    assert span.attributes is not None
    assert span.attributes["governor.admission.wait_reason"] == record.wait_reason


# -- logs -------------------------------------------------------------------------------------


def test_one_log_record_per_execution_in_its_span_context(otel: Pipeline) -> None:
    with GovernedExecutor(1, telemetry=otel.telemetry) as executor:
        ok = executor.submit(th.add, 1, 1)
        bad = executor.submit(th.raise_value_error, "nope")
        assert ok.result(timeout=GUARD) == 2
        with pytest.raises(ValueError):
            bad.result(timeout=GUARD)
    spans = {span.name: span for span in otel.finished_spans()}
    records = {
        str((r.log_record.attributes or {})["governor.task.name"]): r.log_record for r in otel.log_records()
    }
    assert set(records) == {"task_helpers.add", "task_helpers.raise_value_error"} == set(spans)
    for name, log in records.items():
        context = _context(spans[name])
        assert (log.trace_id, log.span_id) == (context.trace_id, context.span_id)
        assert log.event_name == "governor.execution.finished"
    good, failed = records["task_helpers.add"], records["task_helpers.raise_value_error"]
    assert good.severity_text == "INFO" and "succeeded" in str(good.body)
    assert failed.severity_text == "WARN" and "failed" in str(failed.body)
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "failed"
    assert "ValueError" in str(failed.attributes["exception.type"])
    assert failed.attributes["exception.message"] == "nope"


def test_the_governor_loggers_are_bridged_until_shutdown(otel: Pipeline) -> None:
    logging.getLogger("governor.scheduler").warning("disk %s is nearly full", "/var")
    logging.getLogger("elsewhere").warning("not ours")
    [record] = otel.log_records()
    assert record.log_record.body == "disk /var is nearly full"
    assert record.log_record.severity_text == "WARN"
    assert record.instrumentation_scope is not None
    assert record.instrumentation_scope.name == "governor.scheduler"
    otel.telemetry.shutdown()
    logging.getLogger("governor.scheduler").warning("after shutdown")
    assert len(otel.log_records()) == 1


def test_shutdown_ends_open_spans_and_later_calls_are_ignored(otel: Pipeline) -> None:
    record = Execution.unstarted(Limits(), RuntimeError("no"))
    otel.telemetry.shutdown()
    otel.telemetry.shutdown()  # harmless
    otel.telemetry.execution_finished(None, None, record)
    assert otel.finished_spans() == []
    assert "shut down" in repr(otel.telemetry)


# -- children ---------------------------------------------------------------------------------


def _what_a_child_sees() -> dict[str, Any]:
    """Run in a child: import governor as a task might, and report what OpenTelemetry does here."""
    from opentelemetry import _logs, metrics

    import governor  # noqa: F401  (what a task that uses governor imports)

    span = trace.get_tracer("a-task").start_span("work")
    recording = span.is_recording()
    span.end()
    return {
        "recording": recording,
        "tracer_provider": type(trace.get_tracer_provider()).__name__,
        "meter_provider": type(metrics.get_meter_provider()).__name__,
        "logger_provider": type(_logs.get_logger_provider()).__name__,
        "threads": sorted(thread.name for thread in threading.enumerate()),
        "exporter_variable": os.environ.get("OTEL_TRACES_EXPORTER"),
    }


def test_a_child_exports_nothing(otel: Pipeline, no_otel_env: pytest.MonkeyPatch) -> None:
    # The child gets the supervisor's environment: even told to export to the console, and
    # importing governor, it has no provider, no exporter and no export thread of ours.
    no_otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    no_otel_env.setenv("OTEL_LOGS_EXPORTER", "console")
    with GovernedExecutor(1, telemetry=otel.telemetry) as executor:
        future = executor.submit(_what_a_child_sees)
        seen = future.result(timeout=GUARD)
    assert seen["exporter_variable"] == "console"
    assert seen["recording"] is False
    assert seen["tracer_provider"] == "ProxyTracerProvider"
    assert "Proxy" in seen["meter_provider"] and "Proxy" in seen["logger_provider"]
    assert not [name for name in seen["threads"] if "otel" in name.lower()]
    assert future.execution.stdout == b""  # type: ignore[attr-defined]
    [span] = otel.finished_spans()  # the supervisor's, and only it
    assert span.name.endswith("_what_a_child_sees")


# -- configuration from the environment -------------------------------------------------------


def test_from_environment_is_none_when_nothing_asks_for_it(no_otel_env: pytest.MonkeyPatch) -> None:
    assert Telemetry.from_environment() is None
    no_otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    no_otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
    assert Telemetry.from_environment() is None
    no_otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    no_otel_env.setenv("OTEL_SDK_DISABLED", "true")
    assert Telemetry.from_environment() is None


def test_from_environment_console_exports_to_stdout(
    no_otel_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    no_otel_env.setenv("OTEL_LOGS_EXPORTER", "console")
    no_otel_env.setenv("OTEL_SERVICE_NAME", "batch-host")
    telemetry = Telemetry.from_environment()
    assert telemetry is not None
    assert repr(telemetry) == "Telemetry(traces=console, metrics=none, logs=console)"
    task = Task("nightly-report", th.add, args=(1, 2))
    telemetry.execution_finished(task, None, Execution.unstarted(Limits(), RuntimeError("no slot")))
    telemetry.shutdown()
    out = capsys.readouterr().out
    assert '"name": "nightly-report"' in out
    assert '"service.name": "batch-host"' in out
    assert "nightly-report attempt 1: failed" in out  # the log record


def test_from_environment_names_the_service_governor_by_default(no_otel_env: pytest.MonkeyPatch) -> None:
    no_otel_env.setenv("OTEL_METRICS_EXPORTER", "console")
    telemetry = Telemetry.from_environment()
    assert telemetry is not None
    try:
        resource = telemetry.meter_provider._sdk_config.resource  # type: ignore[attr-defined]
        assert resource.attributes["service.name"] == "governor"
        assert isinstance(telemetry.tracer_provider, trace.NoOpTracerProvider)
    finally:
        telemetry.shutdown()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin", "OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'"),
        ("OTEL_LOGS_EXPORTER", "console,none", "'none' cannot be combined"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "expected one of grpc, http/protobuf"),
    ],
)
def test_from_environment_refuses_what_it_does_not_know(
    no_otel_env: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    no_otel_env.setenv("OTEL_METRICS_EXPORTER", "otlp")
    no_otel_env.setenv(variable, value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Telemetry.from_environment()


def test_otlp_without_its_package_names_the_package(no_otel_env: pytest.MonkeyPatch) -> None:
    no_otel_env.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    no_otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    with pytest.raises(RuntimeError, match=r"opentelemetry-exporter-otlp .*governor\[otlp\]"):
        Telemetry.from_environment()


# -- governor serve ---------------------------------------------------------------------------


def _serve_env(**variables: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    helpers = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = helpers + os.pathsep + env.get("PYTHONPATH", "")
    return env | variables


def test_serve_refuses_a_bad_otel_variable_before_touching_the_store(tmp_path: Path) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text('[[task]]\nname = "t"\ncommand = ["true"]\n')
    db = tmp_path / "state" / "governor.db"
    done = subprocess.run(
        [sys.executable, "-m", "governor", "serve", str(task_file), "--db", str(db)],
        capture_output=True, text=True, timeout=GUARD, env=_serve_env(OTEL_TRACES_EXPORTER="jaeger"),
    )  # fmt: skip
    assert done.returncode == 2 and "OTEL_TRACES_EXPORTER" in done.stderr
    assert not db.exists()


def test_serve_exports_each_execution_and_flushes_at_exit(tmp_path: Path) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text('[[task]]\nname = "once"\ncommand = ["true"]\ndelay = "10ms"\n')
    db = tmp_path / "state" / "governor.db"
    server = subprocess.Popen(
        [sys.executable, "-m", "governor", "serve", str(task_file), "--db", str(db), "--grace", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_serve_env(OTEL_TRACES_EXPORTER="console"),
    )  # fmt: skip
    try:
        assert server.stderr is not None
        for line in server.stderr:  # the server's own log: wait for the execution to end
            if "task=once" in line:
                break
        server.terminate()
        out, err = server.communicate(timeout=GUARD)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, err
    span = json.loads(out[out.index("{") :])  # one span, printed at shutdown by the batch processor
    assert span["name"] == "once"
    assert span["attributes"]["governor.outcome"] == "succeeded"
    assert span["resource"]["attributes"]["service.name"] == "governor"


def test_throttling_and_stalls_are_span_attributes_and_metrics(otel: Pipeline) -> None:
    with GovernedExecutor(1, telemetry=otel.telemetry) as executor:
        future = executor.options(limits=Limits(cpu_rate=0.05, memory="256MiB")).submit(th.busy, 0.3)
        future.result(timeout=GUARD)
    record: Execution = future.execution  # type: ignore[attr-defined]
    throttled = record.usage.cpu_throttled_seconds
    assert throttled > 0, record  # spinning 0.3 s at 0.05 cores: held back, by quota or duty cycle
    [span] = otel.finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes["governor.cpu_throttled_seconds"] == pytest.approx(throttled)
    for resource, seconds in record.usage.stall_seconds.items():  # cgroup v2 hosts with PSI
        assert attributes[f"governor.stall_seconds.{resource}"] == pytest.approx(seconds)
    bound = record.usage.memory_overshoot_bound_bytes
    assert bound is not None and attributes["governor.memory_overshoot_bound_bytes"] == bound
    name = "task_helpers.busy"
    measured = otel.value(
        "governor.execution.stall", governor__task__name=name, governor__resource="cpu_throttled"
    )
    assert measured == pytest.approx(throttled)
