"""Observing executions: OpenTelemetry (a scheduler listener) and the facts every view states
alike (kill reasons, what was measured, in ``_facts``)."""

from governor.observe._telemetry import Telemetry

__all__ = ["Telemetry"]
