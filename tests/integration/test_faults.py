"""The fault matrix: every upstream fault, seen from every inbound dialect.

For each fault and dialect: the right status and error code in the client's envelope,
a message in the gateway's own words (no upstream text, exception or provider name, and
the request id), the right number of upstream calls, each carrying the request id,
fallback to a healthy provider when the model has one, and an answer within the
request's deadline.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.emulators import EmulatorServer, Fault
from tests.integration.conftest import PROVIDERS, start_gateway
from tests.integration.gateway_server import GatewayServer
from tests.servers import free_port

ATTEMPTS = 3
DEADLINE_S = 4.0
READ_TIMEOUT_S = 0.3
MAX_RESPONSE_BYTES = 256 * 1024


# What an upstream says in its error answers: about the gateway's key, never for the client.
UPSTREAM_TEXT = "Rate limit exceeded for this API key"
# A cooldown no test outlives: a row whose provider cools down at once has a provider of its own.
LONG_COOLDOWN = {"failures": 1_000_000, "seconds": 300}


class Case(NamedTuple):
    fault: Fault | None  # None: the provider is not listening at all
    canonical: str
    status: int
    calls: int = ATTEMPTS  # calls to the failing provider: retried by its policy, or called once
    falls_back: bool = True  # whether the next target is tried (the client's own faults: no)
    credentials: bool = False  # the upstream refused the gateway's key: counted, cooled down at once


def status_fault(status: int, **fields: Any) -> Fault:
    return Fault(status=status, message=UPSTREAM_TEXT, times=None, **fields)


FAULTS: dict[str, Case] = {
    "429-retry-after": Case(status_fault(429, retry_after="1"), "rate_limited", 429),
    "429": Case(status_fault(429), "rate_limited", 429),
    "500": Case(status_fault(500), "upstream_error", 502),
    "502": Case(status_fault(502), "upstream_error", 502),
    "503": Case(status_fault(503), "overloaded", 503),
    "connect-refused": Case(None, "upstream_error", 502),
    "read-timeout": Case(Fault(delay=READ_TIMEOUT_S * 4, times=None), "upstream_timeout", 504),
    "reset-mid-body": Case(Fault(reset=True, times=None), "upstream_error", 502),
    "malformed-json": Case(Fault(body='{"created": 1, "data": [', times=None), "upstream_error", 502),
    "wrong-content-type": Case(
        Fault(body="<html>hello</html>", content_type="text/html", times=None), "upstream_error", 502
    ),
    "oversized-body": Case(Fault(body="x" * (MAX_RESPONSE_BYTES * 2), times=None), "upstream_error", 502),
    "quota (not retried)": Case(status_fault(402), "insufficient_quota", 402, calls=1, falls_back=False),
    "bad request (not retried)": Case(status_fault(400), "invalid_request", 400, calls=1, falls_back=False),
    # The gateway's own key refused: one call (the same key will not start working), then the next target.
    "401 gateway key refused": Case(status_fault(401), "upstream_error", 502, calls=1, credentials=True),
    "403 gateway key refused": Case(status_fault(403), "upstream_error", 502, calls=1, credentials=True),
}
FALLBACK = ("solo", "pair")

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


def own_provider(fault: str, dialect: str, fallback: str) -> str:
    """The provider of a row that cools down at once: one per test, so no test meets another's cooldown."""
    return "key-" + re.sub(r"[^a-z0-9]+", "-", f"{fault} {dialect} {fallback}")


def provider_for(fault: str, dialect: str = "", fallback: str = "") -> str:
    case = FAULTS[fault]
    if case.fault is None:
        return "dead"
    return own_provider(fault, dialect, fallback) if case.credentials else "melious"


@pytest.fixture(scope="module")
def faulty_gateway(
    emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    """Model ``solo-X`` has provider X alone; ``pair-X`` falls back from X to a healthy Nebul."""
    healthy = {"provider": "nebul", "model": PROVIDERS["nebul"][2]}
    melious: dict[str, Any] = {"kind": "melious", "base_url": emulators["melious"].base_url, "api_key": "test-key"}
    # "dead" is a provider nobody listens for; the "key-..." ones are the Melious emulator under other names.
    extra = {"dead": {**melious, "base_url": f"http://127.0.0.1:{free_port()}"}}
    for fault, case in FAULTS.items():
        if case.credentials:
            for dialect in DIALECTS:
                for fallback in FALLBACK:
                    extra[own_provider(fault, dialect, fallback)] = {**melious, "cooldown": LONG_COOLDOWN}
    models = []
    for name in ("melious", *extra):
        target = {"provider": name, "model": "flux-schnell"}
        models += [
            {"name": f"solo-{name}", "targets": [target]},
            {"name": f"pair-{name}", "targets": [target, healthy]},
        ]
    server = start_gateway(
        emulators,
        models,
        tmp_path_factory.mktemp("store"),
        server={"request_deadline_s": DEADLINE_S},
        provider_overrides={
            "timeout": {"connect": 1, "read": READ_TIMEOUT_S, "total": 2},
            "max_response_bytes": MAX_RESPONSE_BYTES,
        },
        extra_providers=extra,
    )
    yield server
    server.stop()


def send(
    http: httpx.Client, gateway: GatewayServer, dialect: str, model: str, request_id: str = ""
) -> tuple[httpx.Response, float]:
    path, body, _ = DIALECTS[dialect]
    headers = {"X-Request-ID": request_id} if request_id else {}
    started = time.monotonic()
    response = http.post(gateway.url + path, json={**body, "model": model}, headers=headers)
    return response, time.monotonic() - started


def message_of(response: httpx.Response) -> str:
    message = response.json()["error"]["message"]
    assert isinstance(message, str)
    return message


def assert_gateways_own_words(response: httpx.Response, gateway: GatewayServer, model: str, request_id: str) -> None:
    """The message tells the client about its request and model, and asks it to quote the request id:
    no upstream text, no client library's exception, no provider's name, no key."""
    message = message_of(response)
    assert repr(model) in message, message
    assert message.endswith(f"Quote request id {request_id} if you report it."), message
    assert UPSTREAM_TEXT not in response.text
    assert not re.search(r"[A-Za-z]+(Error|Exception)\b", message), message
    told = message.replace(repr(model), "").replace(request_id, "").lower()
    for provider in gateway.config.providers:
        assert provider.lower() not in told, f"provider {provider!r} named in {message!r}"
    assert "test-key" not in response.text


def scrape(http: httpx.Client, gateway: GatewayServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(http.get(gateway.url + "/metrics").text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def auth_failures(http: httpx.Client, gateway: GatewayServer, provider: str) -> float:
    key = ("image_gateway_upstream_auth_failures_total", (("provider", provider),))
    return scrape(http, gateway).get(key, 0.0)


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
    model, request_id = f"solo-{provider_for(fault, dialect, 'solo')}", uuid.uuid4().hex
    response, elapsed = send(http, faulty_gateway, dialect, model, request_id)
    assert response.status_code == case.status, response.text
    assert response.json()["error"]["code"] == WIRE[DIALECTS[dialect][2]][case.canonical]
    assert_gateways_own_words(response, faulty_gateway, model, request_id)
    assert response.headers["x-gateway-attempts"] == str(case.calls)
    if case.fault is not None:
        assert emulators["melious"].emulator.request_ids == [request_id] * case.calls
    assert elapsed < DEADLINE_S + 1.0
    if case.credentials:
        assert "credentials" in message_of(response)
        assert auth_failures(http, faulty_gateway, provider_for(fault, dialect, "solo")) == 1
        # Cooled down at once: the next request calls nobody, and is told when to come back.
        again, _ = send(http, faulty_gateway, dialect, model)
        assert again.status_code == 503, again.text
        assert again.json()["error"]["code"] == WIRE[DIALECTS[dialect][2]]["overloaded"]
        assert 250 <= int(again.headers["retry-after"]) <= 300
        assert len(emulators["melious"].emulator.calls) == 1


@pytest.mark.parametrize("dialect", list(DIALECTS))
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_with_fallback(
    fault: str, dialect: str, faulty_gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    case = FAULTS[fault]
    inject(emulators, fault)
    request_id = uuid.uuid4().hex
    response, elapsed = send(http, faulty_gateway, dialect, f"pair-{provider_for(fault, dialect, 'pair')}", request_id)
    if not case.falls_back:  # the client's own fault, or its quota: another provider would not help
        assert response.status_code == case.status, response.text
        assert len(emulators["nebul"].emulator.calls) == 0
        return
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-provider"] == "nebul"
    assert response.headers["x-gateway-attempts"] == str(case.calls + 1)
    assert emulators["nebul"].emulator.request_ids == [request_id]
    if case.fault is not None:
        assert emulators["melious"].emulator.request_ids == [request_id] * case.calls
    assert elapsed < DEADLINE_S + 1.0
    if case.credentials:
        assert auth_failures(http, faulty_gateway, provider_for(fault, dialect, "pair")) == 1
        # Cooled down at once: the next request goes straight to the fallback.
        again, _ = send(http, faulty_gateway, dialect, f"pair-{provider_for(fault, dialect, 'pair')}")
        assert again.status_code == 200 and again.headers["x-gateway-attempts"] == "1", again.text
        assert len(emulators["melious"].emulator.calls) == 1


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
    emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """The emulator's own key check (no fault): a revoked gateway key is one call, an error line, a metric."""
    revoked = {"kind": "melious", "base_url": emulators["melious"].base_url, "api_key": "sk-revoked-0123456789"}
    server = start_gateway(
        emulators,
        [{"name": "m", "targets": [{"provider": "revoked", "model": "flux-schnell"}]}],
        tmp_path,
        extra_providers={"revoked": {**revoked, "cooldown": LONG_COOLDOWN}},
    )
    try:
        capfd.readouterr()
        response, _ = send(http, server, "nebul", "m", "revoked-key-0001")
        captured = capfd.readouterr()
        assert response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "upstream_error"
        assert response.json()["error"]["type"] == "server_error"  # not authentication_error: the client's key was fine
        assert "credentials" in message_of(response)
        assert_gateways_own_words(response, server, "m", "revoked-key-0001")
        assert len(emulators["melious"].emulator.calls) == 1
        assert auth_failures(http, server, "revoked") == 1
        lines = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
        (refused,) = [line for line in lines if line["event"] == "upstream_credentials_refused"]
        assert refused["level"] == "error" and refused["provider"] == "revoked"
        assert refused["request_id"] == "revoked-key-0001"
        assert "Invalid or missing API key" in refused["detail"]  # the upstream's own words: in the log only
        assert "sk-revoked-0123456789" not in captured.out + captured.err
    finally:
        server.stop()


def test_the_log_holds_what_the_client_is_not_told(
    faulty_gateway: GatewayServer,
    emulators: dict[str, EmulatorServer],
    http: httpx.Client,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The upstream's text, the client library's exception and the provider: under the request id."""
    emulators["melious"].emulator.add_fault(Fault(reset=True, times=1))  # a cut-off answer, then 429s
    emulators["melious"].emulator.add_fault(status_fault(429))
    capfd.readouterr()
    response, _ = send(http, faulty_gateway, "melious", "solo-melious", "told-0001")
    captured = capfd.readouterr()
    assert response.status_code == 429, response.text
    assert_gateways_own_words(response, faulty_gateway, "solo-melious", "told-0001")
    lines = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    attempts = [line for line in lines if line["event"] == "upstream_attempt" and line["request_id"] == "told-0001"]
    assert [line["provider"] for line in attempts] == ["melious"] * ATTEMPTS
    assert attempts[0]["outcome"] == "upstream_error" and attempts[0]["exception"].endswith("Error"), attempts[0]
    assert attempts[1]["outcome"] == "rate_limited" and UPSTREAM_TEXT in attempts[1]["detail"]


def test_every_target_cooling_down_is_a_503_with_retry_after(
    emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Any
) -> None:
    """Like a 429, the 503 says when to come back: when the first cooldown ends."""
    server = start_gateway(
        emulators,
        [{"name": "m", "targets": [{"provider": "melious", "model": "flux-schnell"}]}],
        tmp_path,
        provider_overrides={"retry": {"attempts": 1}, "cooldown": {"failures": 2, "seconds": 30}},
    )
    try:
        emulators["melious"].emulator.add_fault(Fault(status=500, times=None))
        for _ in range(2):  # two failures in a row: melious cools down for 30 s
            failed, _ = send(http, server, "nebul", "m")
            assert failed.status_code == 502 and "retry-after" not in failed.headers
        for dialect in DIALECTS:
            response, _ = send(http, server, dialect, "m", "cooling-0001")
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == WIRE[DIALECTS[dialect][2]]["overloaded"]
            assert 1 <= int(response.headers["retry-after"]) <= 30
            assert_gateways_own_words(response, server, "m", "cooling-0001")
        assert len(emulators["melious"].emulator.calls) == 2
    finally:
        server.stop()


def test_an_upstreams_retry_after_is_read_strictly(
    emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Any
) -> None:
    """Finite seconds, capped at an hour for the client; anything else is ignored (never a 500)."""
    server = start_gateway(
        emulators,
        [{"name": "m", "targets": [{"provider": "melious", "model": "flux-schnell"}]}],
        tmp_path,
        provider_overrides={"retry": {"attempts": 1}, "cooldown": LONG_COOLDOWN},
    )
    said_and_told = [("7", "7"), ("99999999", "3600"), ("inf", None), ("nan", None), ("-5", None), ("1e3", None),
                     ("1_0", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None)]  # fmt: skip
    try:
        for said, told in said_and_told:
            emulators["melious"].emulator.add_fault(Fault(status=429, message=UPSTREAM_TEXT, retry_after=said, times=1))
            response, _ = send(http, server, "nebul", "m")
            assert response.status_code == 429, (said, response.text)
            assert response.headers.get("retry-after") == told, said
    finally:
        server.stop()
