"""OpenTelemetry providers built from the standard ``OTEL_*`` environment variables.

``governor serve`` (through ``Telemetry.from_environment``) builds private providers this
way; nothing is ever installed globally. Unlike the SDK's own auto-configuration, an unset
``OTEL_<SIGNAL>_EXPORTER`` means no exporter: telemetry is opt-in.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import _logs, metrics, trace

_SIGNALS = ("traces", "metrics", "logs")
_EXPORTERS = ("console", "otlp", "none")
_OTLP_PACKAGE = "opentelemetry-exporter-otlp"
_OTLP_CLASSES = {  # protocol -> signal -> (module, class)
    "grpc": {
        "traces": ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
        "metrics": ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
        "logs": ("opentelemetry.exporter.otlp.proto.grpc._log_exporter", "OTLPLogExporter"),
    },
    "http/protobuf": {
        "traces": ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
        "metrics": ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
        "logs": ("opentelemetry.exporter.otlp.proto.http._log_exporter", "OTLPLogExporter"),
    },
}


@dataclass(frozen=True)
class Providers:
    """What the environment asked for: one provider per signal (no-op ones where nothing was
    asked), the SDK providers built here (their owner shuts them down), and a description."""

    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider
    logger_provider: _logs.LoggerProvider
    owned: tuple[Any, ...]
    described: str


def providers_from_environment() -> Providers | None:
    """The providers the ``OTEL_*`` variables configure, or ``None`` when they configure
    nothing (see ``Telemetry.from_environment`` for the variables and their errors)."""
    environ = os.environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    chosen = {signal: _exporter_names(signal) for signal in _SIGNALS}
    if not any(chosen.values()):
        return None
    # Resolve every exporter before building anything: a bad value must not leave export
    # threads behind.
    factories = {signal: [_exporter_factory(signal, n) for n in names] for signal, names in chosen.items()}
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = _resource()
    tracer_provider: trace.TracerProvider = trace.NoOpTracerProvider()
    meter_provider: metrics.MeterProvider = metrics.NoOpMeterProvider()
    logger_provider: _logs.LoggerProvider = _logs.NoOpLoggerProvider()
    owned: list[Any] = []
    if factories["traces"]:
        sdk_tracer_provider = TracerProvider(resource=resource)
        for make in factories["traces"]:
            sdk_tracer_provider.add_span_processor(BatchSpanProcessor(make()))
        tracer_provider = sdk_tracer_provider
        owned.append(sdk_tracer_provider)
    if factories["metrics"]:
        readers = [PeriodicExportingMetricReader(make()) for make in factories["metrics"]]
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        owned.append(meter_provider)
    if factories["logs"]:
        sdk_logger_provider = LoggerProvider(resource=resource)
        for make in factories["logs"]:
            sdk_logger_provider.add_log_record_processor(BatchLogRecordProcessor(make()))
        logger_provider = sdk_logger_provider
        owned.append(sdk_logger_provider)
    described = ", ".join(f"{s}={','.join(n) or 'none'}" for s, n in chosen.items())
    return Providers(tracer_provider, meter_provider, logger_provider, tuple(owned), described)


def _exporter_names(signal_name: str) -> list[str]:
    variable = f"OTEL_{signal_name.upper()}_EXPORTER"
    text = os.environ.get(variable, "")
    names = list(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    for name in names:
        if name not in _EXPORTERS:
            raise ValueError(
                f"{variable}: unknown exporter {name!r}; governor supports {', '.join(_EXPORTERS)}"
            )
    if "none" in names and len(names) > 1:
        raise ValueError(f"{variable}: 'none' cannot be combined with other exporters, got {text!r}")
    return [name for name in names if name != "none"]


def _exporter_factory(signal_name: str, name: str) -> Callable[[], Any]:
    """How to build one exporter; imports it now, so a missing package fails before anything starts."""
    if name == "console":
        # Bound to sys.stdout as it is now (the SDK's default is sys.stdout at its import).
        if signal_name == "traces":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            return lambda: ConsoleSpanExporter(out=sys.stdout)
        if signal_name == "metrics":
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

            return lambda: ConsoleMetricExporter(out=sys.stdout)
        from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter

        return lambda: ConsoleLogRecordExporter(out=sys.stdout)
    variable = f"OTEL_EXPORTER_OTLP_{signal_name.upper()}_PROTOCOL"
    protocol = (os.environ.get(variable) or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip()
    if protocol not in _OTLP_CLASSES:
        choices = ", ".join(_OTLP_CLASSES)
        raise ValueError(
            f"{variable} / OTEL_EXPORTER_OTLP_PROTOCOL: expected one of {choices}, got {protocol!r}"
        )
    module_name, class_name = _OTLP_CLASSES[protocol][signal_name]
    try:
        module = __import__(module_name, fromlist=[class_name])
    except ImportError as error:
        raise RuntimeError(
            f"OTEL_{signal_name.upper()}_EXPORTER=otlp needs the package {_OTLP_PACKAGE} "
            f"(pip install 'resource-governor[otlp]'): {error}"
        ) from error
    exporter: Callable[[], Any] = getattr(module, class_name)
    return exporter


def _resource() -> Any:
    """The SDK's resource from the environment, named ``governor`` unless it says otherwise."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "governor"}))
    return resource
