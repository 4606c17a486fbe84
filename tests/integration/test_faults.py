"""The fault matrix: every upstream fault, seen from every inbound dialect.

For each fault and dialect: the right status and error code in the client's envelope,
the right number of upstream attempts, fallback to a healthy provider when the model
has one, and an answer within the request's deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import httpx
import pytest

from tests.emulators import EmulatorServer, Fault
from tests.integration.conftest import PROVIDERS, start_gateway
from tests.integration.gateway_server import GatewayServer
from tests.servers import free_port

ATTEMPTS = 3
DEADLINE_S = 4.0
READ_TIMEOUT_S = 0.3
MAX_RESPONSE_BYTES = 256 * 1024


class Case(NamedTuple):
    fault: Fault | None  # None: the provider is not listening at all
    canonical: str
    status: int
    retryable: bool = True


FAULTS: dict[str, Case] = {
    "429-retry-after": Case(Fault(status=429, retry_after="1", times=None), "rate_limited", 429),
    "429": Case(Fault(status=429, times=None), "rate_limited", 429),
    "500": Case(Fault(status=500, times=None), "upstream_error", 502),
    "502": Case(Fault(status=502, times=None), "upstream_error", 502),
    "503": Case(Fault(status=503, times=None), "overloaded", 503),
    "connect-refused": Case(None, "upstream_error", 502),
    "read-timeout": Case(Fault(delay=READ_TIMEOUT_S * 4, times=None), "upstream_timeout", 504),
    "reset-mid-body": Case(Fault(reset=True, times=None), "upstream_error", 502),
    "malformed-json": Case(Fault(body='{"created": 1, "data": [', times=None), "upstream_error", 502),
    "wrong-content-type": Case(
        Fault(body="<html>hello</html>", content_type="text/html", times=None), "upstream_error", 502
    ),
    "oversized-body": Case(Fault(body="x" * (MAX_RESPONSE_BYTES * 2), times=None), "upstream_error", 502),
    "quota (not retried)": Case(Fault(status=402, times=None), "insufficient_quota", 402, retryable=False),
    "bad request (not retried)": Case(Fault(status=400, times=None), "invalid_request", 400, retryable=False),
}

# inbound dialect → (path, body without model, wire family)
DIALECTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "melious": ("/melious/v1/images/generations", {"prompt": "p", "size": "512x512"}, "melious"),
    "nebul": ("/nebul/v1/images/generations", {"prompt": "p", "size": "512x512"}, "openai"),
    "openai-root": ("/v1/images/generations", {"prompt": "p", "size": "512x512"}, "openai"),
    "pomelo": ("/pomelo/api/v1/midjourney/generate", {"prompt": "p"}, "nb"),
    "nebulablock-serverless": (
        "/nebulablock/api/v1/images/generation",
        {"prompt": "p", "width": 512, "height": 512},
        "nb",
    ),
    "nebulablock-v1": ("/nebulablock/v1/images/generate", {"prompt": "p", "size": "512x512"}, "nb"),
}
WIRE = {
    "melious": {
        "rate_limited": "RATE_LIMIT_EXCEEDED",
        "upstream_error": "INFERENCE_PROVIDER_ERROR",
        "overloaded": "INFERENCE_OVERLOADED",
        "upstream_timeout": "INFERENCE_TIMEOUT",
        "insufficient_quota": "BILLING_INSUFFICIENT_ENERGY",
        "invalid_request": "VALIDATION_INVALID_VALUE",
    },
    "openai": {
        "rate_limited": "rate_limit_exceeded",
        "upstream_error": "upstream_error",
        "overloaded": "overloaded",
        "upstream_timeout": "timeout",
        "insufficient_quota": "insufficient_quota",
        "invalid_request": "invalid_value",
    },
    "nb": {
        "rate_limited": "rate_limit_exceeded",
        "upstream_error": "upstream_error",
        "overloaded": "overloaded",
        "upstream_timeout": "timeout",
        "insufficient_quota": "insufficient_quota",
        "invalid_request": "invalid_request",
    },
}


@pytest.fixture(scope="module")
def faulty_gateway(
    emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    """Model ``solo-X`` has provider X alone; ``pair-X`` falls back from X to a healthy Nebul."""
    healthy = {"provider": "nebul", "model": PROVIDERS["nebul"][2]}
    models = []
    for name in ("melious", "dead"):
        target = {"provider": name, "model": "flux-schnell"}
        models += [
            {"name": f"solo-{name}", "targets": [target]},
            {"name": f"pair-{name}", "targets": [target, healthy]},
        ]
    # "dead" is a provider nobody listens for.
    dead = {"kind": "melious", "base_url": f"http://127.0.0.1:{free_port()}", "api_key": "test-key"}
    server = start_gateway(
        emulators,
        models,
        tmp_path_factory.mktemp("store"),
        server={"request_deadline_s": DEADLINE_S},
        provider_overrides={
            "timeout": {"connect": 1, "read": READ_TIMEOUT_S, "total": 2},
            "max_response_bytes": MAX_RESPONSE_BYTES,
        },
        extra_providers={"dead": dead},
    )
    yield server
    server.stop()


def provider_for(fault: str) -> str:
    return "dead" if FAULTS[fault].fault is None else "melious"


def send(http: httpx.Client, gateway: GatewayServer, dialect: str, model: str) -> tuple[httpx.Response, float]:
    path, body, _ = DIALECTS[dialect]
    started = time.monotonic()
    response = http.post(gateway.url + path, json={**body, "model": model})
    return response, time.monotonic() - started


def inject(emulators: dict[str, EmulatorServer], fault: str) -> None:
    case = FAULTS[fault]
    if case.fault is not None:
        emulators["melious"].emulator.add_fault(case.fault)


@pytest.mark.parametrize("dialect", list(DIALECTS))
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_without_fallback(
    fault: str, dialect: str, faulty_gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    case = FAULTS[fault]
    inject(emulators, fault)
    response, elapsed = send(http, faulty_gateway, dialect, f"solo-{provider_for(fault)}")
    assert response.status_code == case.status, response.text
    assert response.json()["error"]["code"] == WIRE[DIALECTS[dialect][2]][case.canonical]
    expected_attempts = ATTEMPTS if case.retryable else 1
    assert response.headers["x-gateway-attempts"] == str(expected_attempts)
    if case.fault is not None:
        assert len(emulators["melious"].emulator.calls) == expected_attempts
    assert elapsed < DEADLINE_S + 1.0
    assert "test-key" not in response.text


@pytest.mark.parametrize("dialect", list(DIALECTS))
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_with_fallback(
    fault: str, dialect: str, faulty_gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    case = FAULTS[fault]
    inject(emulators, fault)
    response, elapsed = send(http, faulty_gateway, dialect, f"pair-{provider_for(fault)}")
    if not case.retryable:  # the client's own fault, or its quota: another provider would not help
        assert response.status_code == case.status, response.text
        assert len(emulators["nebul"].emulator.calls) == 0
        return
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-provider"] == "nebul"
    assert response.headers["x-gateway-attempts"] == str(ATTEMPTS + 1)
    assert len(emulators["nebul"].emulator.calls) == 1
    assert elapsed < DEADLINE_S + 1.0


def test_retry_after_is_honoured(
    faulty_gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    """One 429 with Retry-After: the retry waits for it (up to the cap), then succeeds."""
    emulators["melious"].emulator.add_fault(Fault(status=429, retry_after="1", times=1))
    response, _ = send(http, faulty_gateway, "melious", "solo-melious")
    assert response.status_code == 200, response.text
    calls = emulators["melious"].emulator.calls
    assert len(calls) == 2
    # Retry-After said 1 s; the test config caps it at 0.5 s: the second call waited for the cap.
    assert calls[1].time - calls[0].time >= 0.45


def test_deadline_cuts_retries_short(emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Any) -> None:
    """A Retry-After longer than what is left of the deadline ends the request instead of sleeping past it."""
    server = start_gateway(
        emulators,
        [{"name": "m", "targets": [{"provider": "melious", "model": "flux-schnell"}]}],
        tmp_path,
        server={"request_deadline_s": 1.0},
        provider_overrides={"retry": {"attempts": 5, "retry_after_cap_s": 30}},
    )
    try:
        emulators["melious"].emulator.add_fault(Fault(status=503, retry_after="20", times=None))
        response, elapsed = send(http, server, "nebul", "m")
        assert response.status_code == 503, response.text
        assert elapsed < 1.5
        assert len(emulators["melious"].emulator.calls) == 1
    finally:
        server.stop()


def test_cooldown_skips_a_failing_provider(
    emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Any
) -> None:
    models = [
        {
            "name": "m",
            "targets": [
                {"provider": "melious", "model": "flux-schnell"},
                {"provider": "nebul", "model": PROVIDERS["nebul"][2]},
            ],
        }
    ]
    server = start_gateway(
        emulators,
        models,
        tmp_path,
        provider_overrides={"retry": {"attempts": 1}, "cooldown": {"failures": 2, "seconds": 30}},
    )
    try:
        emulators["melious"].emulator.add_fault(Fault(status=503, times=None))
        for _ in range(2):  # two failures in a row: melious cools down
            assert send(http, server, "melious", "m")[0].headers["x-gateway-provider"] == "nebul"
        assert len(emulators["melious"].emulator.calls) == 2
        for _ in range(3):  # now skipped without a call
            response = send(http, server, "melious", "m")[0]
            assert response.status_code == 200
            assert response.headers["x-gateway-attempts"] == "1"
        assert len(emulators["melious"].emulator.calls) == 2
    finally:
        server.stop()


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_content_policy_passes_through(
    dialect: str, faulty_gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    path, body, family = DIALECTS[dialect]
    response = http.post(
        faulty_gateway.url + path, json={**body, "prompt": "something forbidden", "model": "pair-melious"}
    )
    assert response.status_code == 400, response.text
    expected = {
        "melious": "POLICY_CONTENT_VIOLATION",
        "openai": "content_policy_violation",
        "nb": "content_policy_violation",
    }
    assert response.json()["error"]["code"] == expected[family]
    assert len(emulators["nebul"].emulator.calls) == 0  # not retried, no fallback


def test_upstream_refusing_the_gateways_key_is_not_the_clients_401(
    faulty_gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    emulators["melious"].emulator.add_fault(Fault(status=401, times=None))
    response, _ = send(http, faulty_gateway, "melious", "solo-melious")
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "INFERENCE_PROVIDER_ERROR"
    assert "test-key" not in response.text
