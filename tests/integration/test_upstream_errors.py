"""An upstream's error, read through its own table, reaches each client in the client's dialect."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.emulators import EmulatorServer, Fault
from tests.integration.gateway_server import GatewayServer

# (inbound path, body for model m, how to read the wire code)
CLIENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "melious": ("/melious/v1/images/generations", {"prompt": "p"}),
    "nebul": ("/nebul/v1/images/generations", {"prompt": "p"}),
    "openai-root": ("/v1/images/generations", {"prompt": "p"}),
    "pomelo": ("/pomelo/api/v1/midjourney/generate", {"prompt": "p"}),
    "nebulablock": ("/nebulablock/v1/images/generate", {"prompt": "p"}),
}
# canonical → the wire code each client family shows (docs/errors.md)
WIRE = {
    "insufficient_quota": {
        "melious": "BILLING_INSUFFICIENT_ENERGY",
        "openai": "insufficient_quota",
        "nb": "insufficient_quota",
    },
    "content_policy": {
        "melious": "POLICY_CONTENT_VIOLATION",
        "openai": "content_policy_violation",
        "nb": "content_policy_violation",
    },
    "overloaded": {"melious": "INFERENCE_OVERLOADED", "openai": "overloaded", "nb": "overloaded"},
    "rate_limited": {"melious": "RATE_LIMIT_EXCEEDED", "openai": "rate_limit_exceeded", "nb": "rate_limit_exceeded"},
    "upstream_error": {"melious": "INFERENCE_PROVIDER_ERROR", "openai": "upstream_error", "nb": "upstream_error"},
    "upstream_timeout": {"melious": "INFERENCE_TIMEOUT", "openai": "timeout", "nb": "timeout"},
}
FAMILY = {"melious": "melious", "nebul": "openai", "openai-root": "openai", "pomelo": "nb", "nebulablock": "nb"}
# Each provider kind, reached through the model that leads only to it.
UPSTREAMS = {
    "melious": "via-melious",
    "nebul": "via-nebul",
    "pomelo": "via-pomelo-midjourney",
    "nebulablock": "via-nebulablock-v1",
}


def call(http: httpx.Client, gateway: GatewayServer, client: str, model: str, **extra: Any) -> httpx.Response:
    path, body = CLIENTS[client]
    return http.post(gateway.url + path, json={**body, "model": model, **extra})


@pytest.mark.parametrize("upstream", list(UPSTREAMS))
@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize(
    ("fault", "canonical", "status"),
    [
        (Fault(status=402), "insufficient_quota", 402),
        (Fault(status=503, retry_after="7"), "overloaded", 503),
        (Fault(status=429), "rate_limited", 429),
        (Fault(status=500), "upstream_error", 502),
        (Fault(body="{not json"), "upstream_error", 502),
        (Fault(body="<html>ok</html>", content_type="text/html"), "upstream_error", 502),
        (Fault(status=503, body="<html>busy</html>", content_type="text/html"), "overloaded", 503),
    ],
    ids=["quota", "503-retry-after", "429", "500", "malformed-json", "html-200", "html-503"],
)
def test_upstream_fault_in_client_dialect(
    fault: Fault,
    canonical: str,
    status: int,
    client: str,
    upstream: str,
    gateway: GatewayServer,
    emulators: dict[str, EmulatorServer],
    http: httpx.Client,
) -> None:
    emulators[upstream].emulator.add_fault(fault)
    response = call(http, gateway, client, UPSTREAMS[upstream])
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == WIRE[canonical][FAMILY[client]]
    if fault.retry_after:
        assert response.headers["retry-after"] == fault.retry_after
    assert len(emulators[upstream].emulator.calls) == 1


@pytest.mark.parametrize("client", list(CLIENTS))
def test_content_policy_passes_through(client: str, gateway: GatewayServer, http: httpx.Client) -> None:
    response = call(http, gateway, client, "via-melious", prompt="something forbidden")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == WIRE["content_policy"][FAMILY[client]]


def test_upstream_timeout(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Any
) -> None:
    from tests.integration.conftest import start_gateway

    impatient = start_gateway(
        emulators,
        [{"name": "m", "targets": [{"provider": "melious", "model": "flux-schnell", "timeout": 0.3}]}],
        tmp_path,
    )
    try:
        emulators["melious"].emulator.add_fault(Fault(delay=2.0))
        response = call(http, impatient, "nebulablock", "m")
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "timeout"
    finally:
        impatient.stop()


def test_upstream_refusing_the_gateways_key_is_not_the_clients_401(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    emulators["nebul"].emulator.add_fault(Fault(status=401))
    response = call(http, gateway, "melious", "via-nebul")
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "INFERENCE_PROVIDER_ERROR"
    assert "test-key" not in response.text


def test_fallback_to_the_next_target_on_a_retryable_error(
    emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Any
) -> None:
    from tests.integration.conftest import start_gateway

    models = [
        {
            "name": "m",
            "targets": [
                {"provider": "melious", "model": "flux-schnell"},
                {"provider": "nebul", "model": "black-forest-labs/FLUX.1-Kontext-dev"},
            ],
        }
    ]
    server = start_gateway(emulators, models, tmp_path)
    try:
        emulators["melious"].emulator.add_fault(Fault(status=503))
        ok = call(http, server, "melious", "m")
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-gateway-provider"] == "nebul"
        emulators["melious"].emulator.add_fault(Fault(status=402))
        refused = call(http, server, "melious", "m")  # not retryable: no fallback
        assert refused.status_code == 402
        assert len(emulators["nebul"].emulator.calls) == 1
    finally:
        server.stop()
