"""OpenTelemetry traces: a span per request, a span per upstream attempt, the local queue and batch.

Off unless ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set
when the app starts (and ``OTEL_SDK_DISABLED`` is not ``true``, ``OTEL_TRACES_EXPORTER`` not
``none``); then spans are exported over OTLP/HTTP (protobuf) by a batching processor, with
the exporter's standard ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_BSP_*`` settings. While off, the
hot path costs one check of ``enabled`` per hook and the SDK is never imported.

The request span (kind server) continues the client's W3C ``traceparent``; each upstream
attempt (kind client) is its child and sends its own ``traceparent`` on to the provider;
the local engine adds ``local queue`` and ``local batch`` under the attempt (it finds the
tracer in the OTel context under ``TRACER_CONTEXT_KEY``). Attributes follow the GenAI
semantic conventions where they fit; never a header, a key or a prompt.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from schemas.canonical import GatewayError, ImageRequest, Operation
from schemas.tracing import TRACER_CONTEXT_KEY

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from gateway.observability.record import RequestRecord

__all__ = ["TRACER_CONTEXT_KEY", "Attempt", "RequestSpan", "enabled", "start", "stop"]

log = structlog.get_logger("gateway.tracing")

# The one check on the hot path: True only while an exporter is configured and started.
enabled = False
_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_users = 0

INSTRUMENTATION = "image-gateway"

# gen_ai.operation.name: the conventions name no image operation, so these are ours.
OPERATION_NAMES = {
    Operation.GENERATE: "image_generation",
    Operation.EDIT: "image_edit",
    Operation.VARIATION: "image_variation",
}
_OUTCOME_STATUS = {"ok": 200, "client_gone": 499}


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint set, the SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in {"none", ""}:
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def start(environ: Mapping[str, str] | None = None) -> bool:
    """At app start: export traces when the environment asks for them (the provider is shared by apps in a process)."""
    global enabled, _provider, _tracer, _users
    environ = os.environ if environ is None else environ
    if not wanted(environ):
        return False
    _users += 1
    if _provider is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the exporter its endpoint variables.
        service = {"service.name": environ.get("OTEL_SERVICE_NAME") or "image-gateway"}
        _provider = TracerProvider(resource=Resource.create(service))
        _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        _tracer = _provider.get_tracer(INSTRUMENTATION)
        log.info("tracing_on", exporter="otlp/http")
    enabled = True
    return True


def stop() -> None:
    """At app shutdown: the last app of the process flushes what is left and turns traces off."""
    global enabled, _provider, _tracer, _users
    if _provider is None:
        return
    _users -= 1
    if _users > 0:
        return
    enabled = False
    provider, _provider, _tracer = _provider, None, None
    provider.shutdown()  # exports the spans still queued


def _traced_context(span: Span) -> Any:
    from opentelemetry import context, trace

    return context.set_value(TRACER_CONTEXT_KEY, _tracer, trace.set_span_in_context(span))


class RequestSpan:
    """The server span of one dialect request, current while it is served."""

    __slots__ = ("span", "token")

    def __init__(self, scope: Mapping[str, Any], headers: Mapping[str, str], request_id: str | None) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        assert _tracer is not None
        path, method = scope["path"], scope["method"]
        parent = TraceContextTextMapPropagator().extract(headers)  # the client's traceparent, when it sent one
        self.span = _tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "http.route": path,
                "url.path": path,
                "image_gateway.request_id": request_id or "",
            },
        )
        self.token = context.attach(_traced_context(self.span))

    def end(self, record: RequestRecord, operation: Operation | None, status: int | None) -> None:
        from opentelemetry import context, trace

        context.detach(self.token)
        span = self.span
        if status is None:
            status = _OUTCOME_STATUS.get(record.outcome, 500)
        attributes: dict[str, Any] = {
            "http.response.status_code": status,
            "gen_ai.request.model": record.model,
            "gen_ai.provider.name": record.provider,
            "image_gateway.dialect": record.dialect,
            "image_gateway.outcome": record.outcome,
            "image_gateway.images": record.images,
            "image_gateway.attempts": record.attempts.calls,
        }
        if operation is not None:
            attributes["gen_ai.operation.name"] = OPERATION_NAMES[operation]
        cost = record.cost
        if cost is not None:  # priced (gateway/admission/accounting.py); unpriced: no cost attribute, never 0
            attributes["image_gateway.cost"] = float(cost.amount)
            attributes["image_gateway.cost_currency"] = cost.currency
        elif record.images:
            attributes["image_gateway.unpriced"] = True
        energy = record.energy
        if energy is not None:
            attributes["image_gateway.energy_kwh"] = energy.kwh
            attributes["image_gateway.energy_method"] = energy.method
        span.set_attributes(attributes)
        if record.outcome != "ok":
            span.set_attribute("error.type", record.outcome)
            if status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR, record.outcome))
        span.end()


class Attempt:
    """The client span of one upstream call, current while it runs; ``traceparent`` goes to the provider."""

    __slots__ = ("span", "token", "traceparent")

    def __init__(self, provider: str, upstream_model: str, request: ImageRequest) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        assert _tracer is not None
        operation = OPERATION_NAMES[request.operation]
        self.span = _tracer.start_span(
            f"{operation} {upstream_model}",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": upstream_model,
                "gen_ai.provider.name": provider,
                "gen_ai.request.choice.count": request.n,
            },
        )
        traced = _traced_context(self.span)
        self.token = context.attach(traced)
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, traced)
        self.traceparent = carrier.get("traceparent")

    def end(self, failure: BaseException | None) -> None:
        from opentelemetry import context, trace

        context.detach(self.token)
        if failure is None:
            self.span.set_attribute("image_gateway.outcome", "ok")
        else:
            outcome = failure.outcome if isinstance(failure, GatewayError) else type(failure).__name__
            self.span.set_attributes({"image_gateway.outcome": outcome, "error.type": outcome})
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, outcome))
        self.span.end()
