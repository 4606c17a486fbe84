"""What gateway/observability/tracing.py and the local engine agree on, without importing each other."""

from __future__ import annotations

__all__ = ["TRACER_CONTEXT_KEY"]

# The OpenTelemetry context value under which a traced request carries its tracer: the local engine
# looks it up (one context lookup; None when the request is not traced) to add its queue and batch spans.
TRACER_CONTEXT_KEY = "image-gateway-tracer"
