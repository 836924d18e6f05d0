"""OpenTelemetry for executions: one span, a few metrics and one log record per execution.

``Telemetry`` is a scheduler listener (see ``ExecutionListener``); the loop tells it of every
start and end, and it records, without blocking, through the providers it was given::

    loop ──execution_started──>  span opened (start = the child's start), execution tracked
    loop ──execution_finished─>  span ended (end = the record's end), status, counters and
                                 histograms, one log record in the span's context
    metric reader ──collect───>  observable instruments read the tracked executions' latest
                                 usage readings and the bound schedulers' queues
    ``governor`` loggers ──────> the logging bridge (when a logger provider is given)

Spans are named after the task (an executor call: the callable's qualified name, or argv[0]
of a command), so names stay few. Per the semantic conventions a span's status stays unset on
success; any other outcome sets ``error.type`` to the outcome and the status to ERROR.

Instruments (the ``process.*`` ones follow the process semantic conventions):

=================================  ===============  =============  ==============================
name                               kind             unit           attributes
=================================  ===============  =============  ==============================
governor.executions.finished       Counter          {execution}    outcome, task name, error.type
governor.kills                     Counter          {execution}    kill reason, task name
governor.admission.wait            Histogram        s              task name
governor.execution.memory.peak     Histogram        By             task name
governor.executions.running        async UpDown     {execution}    (none)
governor.executions.queued         async UpDown     {execution}    (none; needs ``bind``)
process.cpu.time                   Counter          s              cpu.mode user|system, task name
process.memory.usage               async UpDown     By             task name
=================================  ===============  =============  ==============================

``process.memory.usage`` is what the semantic conventions define: memory in use now (the
latest reading of each running execution, summed per task; 0 once a task has none running),
so it cannot carry a peak that lived between two collections. The true peak of every execution
goes to the ``governor.execution.memory.peak`` histogram instead, recorded when it ends.
``process.cpu.time`` is added when an execution ends, from its measured user and system time.

Children export nothing. No provider is ever set globally, here or at import: ``Telemetry``
uses the providers it is given (or, given none, the application's global ones), and
``from_environment`` builds private providers. Children are forked from the zygote, a fresh
interpreter that never imports ``governor``, so no provider, exporter or export thread exists
in a child; a task that imports ``governor`` finds the OpenTelemetry API's no-op defaults.
(The ``OTEL_*`` variables do reach children with the rest of the environment: a task that
configures OpenTelemetry itself exports what it records, under its own name.)
"""

from __future__ import annotations

import logging
import signal
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import _logs, metrics, trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.semconv._incubating.attributes.cpu_attributes import CPU_MODE, CpuModeValues
from opentelemetry.semconv._incubating.attributes.process_attributes import PROCESS_EXIT_CODE, PROCESS_PID
from opentelemetry.semconv._incubating.metrics.process_metrics import PROCESS_CPU_TIME, PROCESS_MEMORY_USAGE
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from governor.abc import ExecutionListener
from governor.observe._environment import providers_from_environment
from governor.observe._facts import kill_reason
from governor.scheduling._task import call_name
from policies import format_duration, format_size
from runner import Execution, Handle

if TYPE_CHECKING:
    from governor.scheduling._scheduler import Scheduler
    from governor.scheduling._task import Task

_SCOPE = "governor"
_UNNAMED = "governor.execution"  # an executor call that never started: its callable is unknown here
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Waits for admission last from milliseconds to hours; peaks span a few MiB to tens of GiB.
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)
_MEMORY_BUCKETS = tuple(float(1 << power) for power in range(20, 37))  # 1 MiB .. 64 GiB


@dataclass(eq=False)
class _Running:
    """An execution between its start and its end: its open span and its handle."""

    span: trace.Span
    handle: Handle
    name: str


class Telemetry(ExecutionListener):
    """Traces, metrics and logs for every execution of the schedulers it listens to.

    Pass it as a listener (``Scheduler(listener=...)``, ``GovernedExecutor(telemetry=...)``)
    and ``bind`` it to the scheduler so that its queue is observed. Providers are injected;
    one left out is the application's global provider (a no-op unless the application set
    one). With ``logger_provider``, records of the ``governor`` loggers are bridged to it too
    (at the levels those loggers are configured for). ``shutdown`` flushes; it also shuts down
    the providers that ``from_environment`` built. Thread-safe; listener calls are quick.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        logger_provider: _logs.LoggerProvider | None = None,
    ) -> None:
        version = _version()
        self.tracer_provider = tracer_provider or trace.get_tracer_provider()
        self.meter_provider = meter_provider or metrics.get_meter_provider()
        self.logger_provider = logger_provider or _logs.get_logger_provider()
        self._tracer = self.tracer_provider.get_tracer(_SCOPE, version)
        self._logger = self.logger_provider.get_logger(_SCOPE, version)
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._names: set[str] = set()  # every task name seen: each reports memory, 0 when idle
        self._schedulers: weakref.WeakSet[Scheduler] = weakref.WeakSet()
        self._closed = False
        self._owned: tuple[Any, ...] = ()  # providers from_environment built: shut down with us
        self._described = "injected"
        meter = self.meter_provider.get_meter(_SCOPE, version)
        self._executions = meter.create_counter(
            "governor.executions.finished",
            unit="{execution}",
            description="Executions that ended, by outcome.",
        )
        self._kills = meter.create_counter(
            "governor.kills",
            unit="{execution}",
            description="Executions ended by enforcement: a breached limit, a cancellation, an eviction.",
        )
        self._admission_wait = meter.create_histogram(
            "governor.admission.wait",
            unit="s",
            description="Time from queued to started, of executions that admission control held back.",
            explicit_bucket_boundaries_advisory=_WAIT_BUCKETS,
        )
        self._peak_memory = meter.create_histogram(
            "governor.execution.memory.peak",
            unit="By",
            description="Peak memory of each execution (its whole process tree).",
            explicit_bucket_boundaries_advisory=_MEMORY_BUCKETS,
        )
        self._cpu_time = meter.create_counter(
            PROCESS_CPU_TIME, unit="s", description="CPU seconds of ended executions, by mode."
        )
        self._stalls = meter.create_counter(
            "governor.execution.stall",
            unit="s",
            description="Seconds some of an execution's tasks stalled waiting for a resource (PSI, "
            "cgroup v2), by governor.resource: cpu, memory, io; and cpu_throttled, its cpu_rate quota.",
        )
        meter.create_observable_up_down_counter(
            PROCESS_MEMORY_USAGE,
            callbacks=[self._observe_memory],
            unit="By",
            description="Memory in use by running executions (latest reading), per task.",
        )
        meter.create_observable_up_down_counter(
            "governor.executions.running",
            callbacks=[self._observe_running],
            unit="{execution}",
            description="Executions running now.",
        )
        meter.create_observable_up_down_counter(
            "governor.executions.queued",
            callbacks=[self._observe_queued],
            unit="{execution}",
            description="Executions waiting for a slot or for admission now (bound schedulers).",
        )
        self._bridge: _LoggingBridge | None = None
        if logger_provider is not None and not isinstance(logger_provider, _logs.NoOpLoggerProvider):
            self._bridge = _LoggingBridge(logger_provider)
            logging.getLogger(_SCOPE).addHandler(self._bridge)

    @classmethod
    def from_environment(cls) -> Telemetry | None:
        """Telemetry configured by the standard ``OTEL_*`` variables, or ``None`` when they
        configure nothing.

        ``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER`` and ``OTEL_LOGS_EXPORTER`` each take
        ``console``, ``otlp`` or ``none`` (or a comma-separated list); unlike the SDK's own
        auto-configuration, an unset variable means no exporter, so telemetry is opt-in.
        ``OTEL_SDK_DISABLED=true`` turns everything off. ``otlp`` needs the optional package
        ``opentelemetry-exporter-otlp`` (``pip install 'resource-governor[otlp]'``) and speaks the
        protocol ``OTEL_EXPORTER_OTLP[_<SIGNAL>]_PROTOCOL`` names (``grpc``, the Python SDK's
        default, or ``http/protobuf``); the exporters read their endpoint and headers from the
        environment themselves, as do batching (``OTEL_BSP_*``, ``OTEL_BLRP_*``), the metric
        export interval and the resource (``OTEL_SERVICE_NAME``, default ``governor``;
        ``OTEL_RESOURCE_ATTRIBUTES``). Raises ``ValueError`` naming the variable for a value
        it does not know, ``RuntimeError`` naming the package when ``otlp`` is not installed.
        """
        configured = providers_from_environment()
        if configured is None:
            return None
        telemetry = cls(
            tracer_provider=configured.tracer_provider,
            meter_provider=configured.meter_provider,
            logger_provider=configured.logger_provider,
        )
        telemetry._owned = configured.owned
        telemetry._described = configured.described
        return telemetry

    def bind(self, scheduler: Scheduler) -> None:
        """Observe ``scheduler``'s queue in ``governor.executions.queued`` (summed over every
        bound scheduler; held weakly, so a discarded scheduler drops out)."""
        with self._lock:
            self._schedulers.add(scheduler)

    # -- the listener ---------------------------------------------------------------------

    def execution_started(self, task: Task | None, attempt: int, handle: Handle, queued_at: datetime) -> None:
        """Open the execution's span, starting when its child started."""
        if self._closed:
            return
        name = task.name if task is not None else call_name(handle.spec.target)
        attributes = _identity(task, name, attempt)
        attributes["governor.run_id"] = handle.id
        if handle.pid is not None:
            attributes[PROCESS_PID] = handle.pid
        for limit, value in handle.spec.limits.as_dict().items():
            attributes[f"governor.limit.{limit}"] = value
        span = self._tracer.start_span(
            name,
            context=Context(),  # a root span: the loop thread's context is nobody's parent
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_ns(handle.started_at),
        )
        with self._lock:
            if not self._closed:  # shutdown() may have run meanwhile: it ends what it found
                self._running[handle.id] = _Running(span, handle, name)
                self._names.add(name)
                return
        span.set_attribute("governor.unfinished", True)
        span.end()

    def execution_finished(self, task: Task | None, run_id: str | None, record: Execution) -> None:
        """End the span with the outcome; count, measure and log the execution."""
        if self._closed:
            return
        with self._lock:
            running = self._running.pop(run_id, None) if run_id is not None else None
        name: str | None
        if running is not None:
            span, name = running.span, running.name
        else:  # it never started, or ended before the loop could say it had
            name = task.name if task is not None else None
            span = self._tracer.start_span(
                name or _UNNAMED,
                context=Context(),
                kind=SpanKind.INTERNAL,
                attributes=_identity(task, name, record.attempt),
                start_time=_ns(record.started_at),
            )
        facts = _outcome_attributes(record)
        if run_id is not None:
            facts["governor.run_id"] = run_id
        span.set_attributes(facts)
        if not record.ok:
            span.set_status(Status(StatusCode.ERROR, _describe(record)))
        span.end(end_time=_ns(record.ended_at))
        self._measure(name, record)
        self._log(span, name, record, facts)

    # -- lifecycle ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Flush what was recorded, detach the logging bridge, and shut down the providers
        ``from_environment`` built (injected ones are only flushed). Spans of executions
        still running are ended, marked ``governor.unfinished``. Calling it again is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            unfinished = list(self._running.values())
            self._running.clear()
        for running in unfinished:
            running.span.set_attribute("governor.unfinished", True)
            running.span.end()
        if self._bridge is not None:
            logging.getLogger(_SCOPE).removeHandler(self._bridge)
        if self._owned:
            for provider in self._owned:
                provider.shutdown()
            return
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            flush = getattr(provider, "force_flush", None)
            if callable(flush):
                flush()

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"Telemetry({self._described}{', shut down' if self._closed else ''})"

    # -- recording ------------------------------------------------------------------------

    def _measure(self, name: str | None, record: Execution) -> None:
        common: dict[str, AttributeValue] = {} if name is None else {"governor.task.name": name}
        outcome = str(record.outcome)
        counted = {**common, "governor.outcome": outcome}
        if not record.ok:
            counted[ERROR_TYPE] = outcome
        self._executions.add(1, counted)
        waited = _waited(record)
        if waited is not None:
            self._admission_wait.record(waited, common)
        if record.pid is None:
            return  # it never ran: nothing was used, nothing was killed
        usage = record.usage
        self._cpu_time.add(usage.cpu_user_seconds, {**common, CPU_MODE: CpuModeValues.USER.value})
        self._cpu_time.add(usage.cpu_system_seconds, {**common, CPU_MODE: CpuModeValues.SYSTEM.value})
        self._peak_memory.record(usage.peak_memory_bytes, common)
        stalls = {**usage.stall_seconds, "cpu_throttled": usage.cpu_throttled_seconds}
        for resource, seconds in stalls.items():
            if seconds:
                self._stalls.add(seconds, {**common, "governor.resource": resource})
        reason = kill_reason(str(record.outcome), record.breached_limit)
        if reason is not None:
            self._kills.add(1, {**common, "governor.kill.reason": reason})

    def _log(
        self, span: trace.Span, name: str | None, record: Execution, facts: dict[str, AttributeValue]
    ) -> None:
        attributes = _identity(None, name, record.attempt) | facts
        if record.error is not None and not record.ok:
            attributes[EXCEPTION_TYPE] = record.error.type
            attributes[EXCEPTION_MESSAGE] = record.error.message
            if record.error.traceback:
                attributes[EXCEPTION_STACKTRACE] = record.error.traceback
        severity = SeverityNumber.INFO if record.ok else SeverityNumber.WARN
        self._logger.emit(
            timestamp=_ns(record.ended_at),
            context=trace.set_span_in_context(span, Context()),
            severity_number=severity,
            severity_text="INFO" if record.ok else "WARN",
            body=_summary(name or _UNNAMED, record),
            attributes=attributes,
            event_name="governor.execution.finished",
        )

    # -- observable instruments (called by the metric reader's thread) --------------------

    def _observe_running(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            if self._closed:
                return []
            return [Observation(len(self._running))]

    def _observe_queued(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            if self._closed or not self._schedulers:
                return []  # unknown is not zero
            schedulers = list(self._schedulers)
        return [Observation(sum(scheduler.queued_tasks_count() for scheduler in schedulers))]

    def _observe_memory(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            if self._closed:
                return []
            totals = dict.fromkeys(self._names, 0)
            for running in self._running.values():
                reading = running.handle.last_reading
                if reading is not None:
                    totals[running.name] += reading.memory_bytes
        return [Observation(total, {"governor.task.name": name}) for name, total in totals.items()]


class _LoggingBridge(logging.Handler):
    """Python ``logging`` records as OpenTelemetry log records (the Logs Bridge API).

    The SDK's ``LoggingHandler`` would do, but it is deprecated (it warns when built, in favour
    of a package we do not depend on); this is the same small translation.
    """

    def __init__(self, provider: _logs.LoggerProvider) -> None:
        super().__init__()
        self._provider = provider
        self._loggers: dict[str, _logs.Logger] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = self._loggers.get(record.name)
            if logger is None:
                logger = self._loggers.setdefault(record.name, self._provider.get_logger(record.name))
            attributes: dict[str, AttributeValue] = {
                "code.function.name": record.funcName,
                "code.file.path": record.pathname,
                "code.line.number": record.lineno,
                "thread.name": record.threadName or "",
            }
            error = record.exc_info[1] if record.exc_info else None
            severity = _severity(record.levelno)
            logger.emit(
                timestamp=int(record.created * 1e9),
                severity_number=severity,
                severity_text=severity.name,  # WARN, FATAL: the data model's short names
                body=record.getMessage(),
                attributes=attributes,
                exception=error,
            )
        except Exception:  # logging's own convention: report the handler's failure, go on
            self.handleError(record)


# -- helpers ----------------------------------------------------------------------------------


def _version() -> str:
    try:
        return metadata.version("governor")
    except metadata.PackageNotFoundError:
        return ""


def _ns(moment: datetime) -> int:
    """A UTC datetime as integer nanoseconds since the epoch (exact to the microsecond)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _identity(task: Task | None, name: str | None, attempt: int) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {"governor.attempt": attempt}
    if name is not None:
        attributes["governor.task.name"] = name
    if task is not None and task.id is not None:
        attributes["governor.task.id"] = task.id
    return attributes


def _outcome_attributes(record: Execution) -> dict[str, AttributeValue]:
    usage = record.usage
    attributes: dict[str, AttributeValue] = {
        "governor.outcome": str(record.outcome),
        "governor.peak_memory_bytes": usage.peak_memory_bytes,
        "governor.cpu_seconds": usage.cpu_seconds,
        "governor.wall_seconds": usage.wall_seconds,
    }
    if usage.cpu_throttled_seconds:
        attributes["governor.cpu_throttled_seconds"] = usage.cpu_throttled_seconds
    if usage.memory_high_events:
        attributes["governor.memory_high_events"] = usage.memory_high_events
    for resource, seconds in usage.stall_seconds.items():
        attributes[f"governor.stall_seconds.{resource}"] = seconds
    if usage.memory_overshoot_bound_bytes is not None:
        attributes["governor.memory_overshoot_bound_bytes"] = usage.memory_overshoot_bound_bytes
    if record.pid is not None:
        attributes[PROCESS_PID] = record.pid
    if record.exit_code is not None:
        attributes[PROCESS_EXIT_CODE] = record.exit_code
    if record.signal is not None:
        attributes["governor.signal"] = _signal_name(record.signal)
    if record.breached_limit is not None:
        attributes["governor.breached_limit"] = record.breached_limit
    for limit, mechanism in record.enforcement.items():
        attributes[f"governor.enforcement.{limit}"] = str(mechanism)
    if record.unenforced:
        attributes["governor.unenforced"] = list(record.unenforced)
    waited = _waited(record)
    if waited is not None:
        attributes["governor.admission.wait_seconds"] = waited
        attributes["governor.admission.wait_reason"] = record.wait_reason or ""
    if not record.ok:
        attributes[ERROR_TYPE] = str(record.outcome)
    return attributes


def _waited(record: Execution) -> float | None:
    """Seconds admission control held the execution back, or ``None`` if it did not."""
    if record.wait_reason is None or record.queued_at is None:
        return None
    return max(0.0, (record.started_at - record.queued_at).total_seconds())


def _describe(record: Execution) -> str:
    text = str(record.outcome)
    if record.breached_limit is not None:
        text += f" ({record.breached_limit})"
    if record.error is not None and record.error.message:
        text += f": {record.error.message}"
    return text


def _summary(name: str, record: Execution) -> str:
    usage = record.usage
    return (
        f"{name} attempt {record.attempt}: {_describe(record)}; wall {format_duration(usage.wall_seconds)}, "
        f"peak {format_size(usage.peak_memory_bytes)}, cpu {usage.cpu_seconds:.3f}s"
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _severity(level: int) -> SeverityNumber:
    if level >= logging.CRITICAL:
        return SeverityNumber.FATAL
    if level >= logging.ERROR:
        return SeverityNumber.ERROR
    if level >= logging.WARNING:
        return SeverityNumber.WARN
    if level >= logging.INFO:
        return SeverityNumber.INFO
    return SeverityNumber.DEBUG
