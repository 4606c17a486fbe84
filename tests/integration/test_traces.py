"""Traces: spans exported over OTLP/HTTP to a real receiver on loopback, which decodes the protobuf payload.

The request span continues the client's ``traceparent``; each upstream attempt is its child
and its ``traceparent`` reaches the provider (the emulator records it); the local backend's
queue and batch hang under their attempt. Without the OTLP variables nothing is traced and
nothing is sent.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.observability import tracing
from tests.conftest import API_KEY
from tests.emulators import EmulatorServer
from tests.integration.conftest import FAST_RETRY, NO_COOLDOWN, provider_entries
from tests.integration.gateway_server import GatewayServer, gateway_config

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"


class Receiver:
    """An OTLP/HTTP trace receiver: ``POST /v1/traces`` with an ``ExportTraceServiceRequest`` (protobuf)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.payloads: list[bytes] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.paths.append(self.path)
                receiver.payloads.append(body)
                message = ExportTraceServiceRequest()
                message.ParseFromString(body)
                for resource_spans in message.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend(scope_spans.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    server = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", server.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
    try:
        yield server
    finally:
        server.close()


MODELS = [
    {
        "name": "via-melious",
        "targets": [{"provider": "melious", "model": "flux-schnell", "price": {"currency": "EUR", "per_image": 0.003}}],
    },
    {"name": "tiny", "targets": [{"provider": "gpu", "model": "tiny"}]},
]
LOCAL = {
    "gpu": {
        "kind": "local",
        "device": "cpu",
        "models": {"tiny": {"path": "builtin:tiny-sd"}},
        "energy": {"meter": "power", "power_watts": 100.0},
    }
}


def start_gateway(
    emulators: dict[str, EmulatorServer], models: list[dict[str, Any]], store: Path, local: bool = False
) -> GatewayServer:
    providers = {**provider_entries(emulators), **(LOCAL if local else {})}
    providers["gpu" if local else "melious"].update(retry=FAST_RETRY, cooldown=NO_COOLDOWN)
    server = GatewayServer(gateway_config(providers, models, store))
    server.startup_timeout_s = 300.0  # the tiny model is built on first use: slow on a busy machine
    return server.start()


def named(spans: list[Span], name: str) -> list[Span]:
    return [span for span in spans if span.name == name]


def attributes(span: Span) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in span.attributes:
        value = item.value
        values[item.key] = getattr(value, value.WhichOneof("value"))
    return values


def test_spans_reach_the_receiver_with_their_parents(
    receiver: Receiver, emulators: dict[str, EmulatorServer], tmp_path: Path, http: httpx.Client
) -> None:
    gateway = start_gateway(emulators, MODELS, tmp_path, local=True)
    try:
        assert tracing.enabled
        remote = http.post(
            gateway.url + "/melious/v1/images/generations",
            json={"model": "via-melious", "prompt": "a lake", "size": "512x512"},
            headers={"traceparent": TRACEPARENT, "X-Request-ID": "traced-0001"},
        )
        assert remote.status_code == 200, remote.text
        local = http.post(
            gateway.url + "/nebul/v1/images/generations",
            json={"model": "tiny", "prompt": "a lake", "size": "64x64"},
            headers={"traceparent": TRACEPARENT},
        )
        assert local.status_code == 200, local.text
        missing = http.post(gateway.url + "/melious/v1/images/generations", json={"model": "nope", "prompt": "x"})
        assert missing.status_code == 404
    finally:
        gateway.stop()  # the app's shutdown flushes the spans still queued
    assert not tracing.enabled
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    spans = receiver.spans

    requests = named(spans, "POST /melious/v1/images/generations")
    traced = [span for span in requests if span.trace_id.hex() == CLIENT_TRACE_ID]
    assert len(traced) == 1, [span.name for span in spans]
    request = traced[0]
    assert request.kind == Span.SPAN_KIND_SERVER
    assert request.parent_span_id.hex() == CLIENT_SPAN_ID
    request_attributes = attributes(request)
    assert request_attributes["gen_ai.operation.name"] == "image_generation"
    assert request_attributes["gen_ai.request.model"] == "via-melious"
    assert request_attributes["gen_ai.provider.name"] == "melious"
    assert request_attributes["http.response.status_code"] == 200
    assert request_attributes["image_gateway.images"] == 1
    assert request_attributes["image_gateway.request_id"] == "traced-0001"
    assert request_attributes["image_gateway.energy_method"] == "reported"
    assert request_attributes["image_gateway.cost"] == pytest.approx(0.003)
    assert request_attributes["image_gateway.cost_currency"] == "EUR"

    (attempt,) = [span for span in spans if span.parent_span_id == request.span_id]
    assert attempt.kind == Span.SPAN_KIND_CLIENT
    assert attempt.name == "image_generation flux-schnell"
    assert attempt.trace_id == request.trace_id
    assert attributes(attempt)["gen_ai.provider.name"] == "melious"

    # The provider got the attempt's traceparent: the client's trace, the attempt's span as parent.
    (call,) = emulators["melious"].emulator.calls
    version, trace_id, parent_id, flags = call.headers["traceparent"].split("-")
    assert (version, trace_id, parent_id, flags) == ("00", CLIENT_TRACE_ID, attempt.span_id.hex(), "01")

    # The local request: server span ▸ attempt ▸ local queue and local batch.
    (local_request,) = named(spans, "POST /nebul/v1/images/generations")
    assert local_request.parent_span_id.hex() == CLIENT_SPAN_ID
    (local_attempt,) = [span for span in spans if span.parent_span_id == local_request.span_id]
    assert local_attempt.name == "image_generation tiny"
    children = {span.name: span for span in spans if span.parent_span_id == local_attempt.span_id}
    assert set(children) == {"local queue", "local batch"}
    assert children["local queue"].end_time_unix_nano == children["local batch"].start_time_unix_nano
    batch = attributes(children["local batch"])
    assert batch["image_gateway.energy_method"] == "estimated" and batch["image_gateway.energy_kwh"] > 0
    assert attributes(local_request)["image_gateway.energy_kwh"] == pytest.approx(batch["image_gateway.energy_kwh"])
    assert attributes(local_request)["image_gateway.unpriced"] is True  # no price: never a cost of 0
    assert "image_gateway.cost" not in attributes(local_request)

    # A request without a traceparent starts its own trace; a refusal is traced with its status.
    (refused,) = [span for span in requests if span.trace_id.hex() != CLIENT_TRACE_ID]
    assert not refused.parent_span_id
    assert attributes(refused)["http.response.status_code"] == 404
    assert attributes(refused)["error.type"] == "model_not_found"

    # Never a secret: the upstream key is in no payload.
    assert all(API_KEY.encode() not in payload for payload in receiver.payloads)
    assert all("authorization" not in key.lower() for span in spans for key in attributes(span))


def test_without_the_otlp_variables_nothing_is_traced_or_sent(
    emulators: dict[str, EmulatorServer], tmp_path: Path, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    gateway = start_gateway(emulators, MODELS[:1], tmp_path)
    try:
        assert not tracing.enabled
        response = http.post(
            gateway.url + "/melious/v1/images/generations",
            json={"model": "via-melious", "prompt": "a lake", "size": "512x512"},
            headers={"traceparent": TRACEPARENT},
        )
        assert response.status_code == 200, response.text
    finally:
        gateway.stop()
    (call,) = emulators["melious"].emulator.calls
    assert "traceparent" not in call.headers  # the client's is not forwarded as it is either


def test_the_standard_variables_decide() -> None:
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"})
