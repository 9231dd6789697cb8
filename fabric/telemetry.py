"""Tracing across hops: one job is one trace through orchestrator, router and agents.

Every envelope carries a W3C `traceparent`. A service handling a message opens a span as the
child of the envelope's traceparent and puts the span's own traceparent on what it sends:

    with telemetry.span("route", env.traceparent, {"job_id": env.job_id}) as span:
        await bus.publish(topic, make(body, traceparent=span.traceparent))

With FOA_OTEL_EXPORTER=console|otlp and `opentelemetry-sdk` installed (the `telemetry` extra)
the spans are real OpenTelemetry spans, exported per service. Otherwise (the default) the same
calls still propagate trace ids through envelopes and logs but record nothing, at no cost.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from fabric.envelope import child_traceparent, trace_id_of
from fabric.settings import Settings

log = logging.getLogger("foa.telemetry")

Exporter = Literal["none", "console", "otlp"]
AttrValue = str | bool | int | float


def otel_available() -> bool:
    try:
        import opentelemetry.sdk.trace  # noqa: F401 - imported only to learn whether the SDK is installed
    except ImportError:
        return False
    return True


@dataclass
class SpanHandle:
    """What `Telemetry.span` yields: the traceparent to send onwards, and the span if recorded."""

    traceparent: str
    span: Any = None

    @property
    def trace_id(self) -> str | None:
        return trace_id_of(self.traceparent)

    def set_attribute(self, key: str, value: AttrValue) -> None:
        if self.span is not None:
            self.span.set_attribute(key, value)

    def record_error(self, exc: BaseException) -> None:
        if self.span is not None:
            from opentelemetry.trace import Status, StatusCode

            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))


def _clean(attributes: Mapping[str, object] | None) -> dict[str, AttrValue]:
    """OTel attributes must be primitives; drop None, stringify the rest."""
    out: dict[str, AttrValue] = {}
    for key, value in (attributes or {}).items():
        if value is None:
            continue
        out[key] = value if isinstance(value, (str, bool, int, float)) else str(value)
    return out


class Telemetry:
    """One service's tracer. Build it with `telemetry_for(settings, service)`."""

    def __init__(self, service: str, exporter: Exporter = "none", endpoint: str | None = None) -> None:
        self.service = service
        self.exporter = exporter
        self._current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
            f"foa_traceparent_{id(self)}", default=None
        )
        self._provider: Any = None
        self._tracer: Any = None
        self._propagator: Any = None
        if exporter == "none":
            return
        if not otel_available():
            log.warning(
                "FOA_OTEL_EXPORTER is set but opentelemetry-sdk is not installed "
                "(pip install 'foa[telemetry]'): tracing off",
                extra={"exporter": exporter},
            )
            return
        try:
            self._setup(exporter, endpoint)
        except ImportError as exc:
            log.warning("OpenTelemetry exporter unavailable, tracing off: %s", exc, extra={"exporter": exporter})
            self._provider = self._tracer = None

    def _setup(self, exporter: Exporter, endpoint: str | None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        # a provider per service object, never the global one: several services may share a process
        provider = TracerProvider(resource=Resource.create({"service.name": self.service}))
        if exporter == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        else:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[no-redef,unused-ignore]  # one or the other
                    OTLPSpanExporter,
                )
            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter())
            )
        self._provider = provider
        self._tracer = provider.get_tracer("foa")
        self._propagator = TraceContextTextMapPropagator()

    @property
    def enabled(self) -> bool:
        """True when spans are recorded and exported (not just propagated)."""
        return self._tracer is not None

    @contextmanager
    def span(
        self, name: str, traceparent: str | None = None, attributes: Mapping[str, object] | None = None
    ) -> Iterator[SpanHandle]:
        """A span that continues `traceparent` (an incoming envelope's) or, without one, the
        current span of this task, or else starts a new trace."""
        parent = traceparent or self._current.get()
        if self._tracer is None:
            handle = SpanHandle(child_traceparent(parent))
            token = self._current.set(handle.traceparent)
            try:
                yield handle
            finally:
                self._current.reset(token)
            return
        from opentelemetry.context import Context

        context = self._propagator.extract({"traceparent": parent}) if parent else Context()
        with self._tracer.start_as_current_span(name, context=context, attributes=_clean(attributes)) as span:
            handle = SpanHandle(_format(span.get_span_context()), span)
            token = self._current.set(handle.traceparent)
            try:
                yield handle
            except BaseException as exc:
                handle.record_error(exc)
                raise
            finally:
                self._current.reset(token)

    def current_traceparent(self) -> str | None:
        """The traceparent of the innermost open span in this task (None outside any span)."""
        return self._current.get()

    def outgoing_traceparent(self) -> str:
        """What to put on an envelope sent now: a child of the current span, or a new trace."""
        return child_traceparent(self._current.get())

    def shutdown(self) -> None:
        """Flush pending spans (the OTLP exporter batches)."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = self._tracer = None


def _format(ctx: Any) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def telemetry_for(settings: Settings, service: str) -> Telemetry:
    """The tracer FOA_OTEL_EXPORTER / FOA_OTEL_ENDPOINT ask for (off by default)."""
    return Telemetry(service, settings.otel_exporter, settings.otel_endpoint)
