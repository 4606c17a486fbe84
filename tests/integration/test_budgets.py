"""Cost per request, budgets per key and the standard rate-limit fields, over real HTTP.

Budgets are spent exactly to the cent by concurrent requests: on several real gateway
processes sharing one real Redis, and on one process with the in-memory limiter.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import http_sf
import httpx
import pytest
import redis
import yaml

from gateway.admission.auth import hash_key
from tests.dialects import INBOUND
from tests.emulators import EmulatorServer
from tests.emulators.control import Fault
from tests.integration.conftest import start_gateway
from tests.integration.gateway_server import GatewayServer
from tests.redis_support import require_shared_redis
from tests.servers import GatewayProcess

KEYS = {name: f"sk-{name}-0123456789abcdef" for name in ("alice", "broke", "tight", "spender")}
BUDGET = {"amount": 0.10, "period": "day", "currency": "USD"}  # 0.10 at 0.01 an image: exactly 10 images
MELIOUS_MODEL = "flux-schnell"
MODELS = [
    {
        # 0.01 + 0.002 x 1.048576 MP = 0.012097152 for a 1024x1024 image
        "name": "priced",
        "targets": [
            {"provider": "melious", "model": MELIOUS_MODEL, "price": {"per_image": 0.01, "per_megapixel": 0.002}}
        ],
    },
    {"name": "cent", "targets": [{"provider": "melious", "model": MELIOUS_MODEL, "price": {"per_image": 0.01}}]},
    {"name": "unpriced", "targets": [{"provider": "melious", "model": MELIOUS_MODEL}]},
]


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def auth_section() -> dict[str, Any]:
    return {
        "keys": [
            {"name": "alice", "hash": hash_key(KEYS["alice"]), "limits": {"requests": 1000, "images": 5000}},
            {"name": "broke", "hash": hash_key(KEYS["broke"]), "budget": {"amount": 0, "period": "month"}},
            {"name": "tight", "hash": hash_key(KEYS["tight"]), "limits": {"requests": 1, "period_s": 3600}},
            {"name": "spender", "hash": hash_key(KEYS["spender"]), "budget": BUDGET},
        ]
    }


def sf_list(value: str) -> dict[str, dict[str, Any]]:
    """A Structured Fields list by a real parser, as {member: parameters}."""
    parsed = cast(list[tuple[Any, dict[str, Any]]], http_sf.parse(value.encode(), tltype="list"))
    return {str(item): dict(params) for item, params in parsed}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in /metrics text (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(label) == value for label, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def priced_gateway(
    emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    server = start_gateway(emulators, MODELS, tmp_path_factory.mktemp("store"), auth=auth_section())
    yield server
    server.stop()


# --- cost ---


@pytest.mark.parametrize("dialect", list(INBOUND))
def test_every_dialect_shows_the_cost(dialect: str, priced_gateway: GatewayServer, http: httpx.Client) -> None:
    path, payload, _, _ = INBOUND[dialect]
    response = http.post(priced_gateway.url + path, json=payload("priced"), headers=bearer("alice"))
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-cost"] == "0.0121 USD"


def test_cost_is_counted_by_model_provider_key_and_currency(priced_gateway: GatewayServer, http: httpx.Client) -> None:
    labels = {"model": "priced", "provider": "melious", "key": "alice", "currency": "USD"}
    before = metric(http.get(priced_gateway.url + "/metrics").text, "image_gateway_cost_total", **labels)
    body = {"model": "priced", "prompt": "p", "size": "1024x1024", "n": 3}
    response = http.post(priced_gateway.url + "/nebul/v1/images/generations", json=body, headers=bearer("alice"))
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 3
    assert response.headers["x-gateway-cost"] == "0.0363 USD"  # 3 x 0.012097152
    after = metric(http.get(priced_gateway.url + "/metrics").text, "image_gateway_cost_total", **labels)
    assert after - before == pytest.approx(0.036291456)


def test_an_unpriced_target_has_no_cost_header_and_counts_unpriced_images(
    priced_gateway: GatewayServer, http: httpx.Client
) -> None:
    labels = {"model": "unpriced", "provider": "melious", "key": "alice"}
    before = metric(http.get(priced_gateway.url + "/metrics").text, "image_gateway_unpriced_images_total", **labels)
    body = {"model": "unpriced", "prompt": "p", "size": "512x512", "n": 2}
    response = http.post(priced_gateway.url + "/melious/v1/images/generations", json=body, headers=bearer("alice"))
    assert response.status_code == 200, response.text
    assert "x-gateway-cost" not in response.headers
    text = http.get(priced_gateway.url + "/metrics").text
    assert metric(text, "image_gateway_unpriced_images_total", **labels) - before == 2
    assert metric(text, "image_gateway_cost_total", model="unpriced") == 0  # never counted as zero cost


# --- budgets: the dialects' refusal, unpriced admission ---

INSUFFICIENT = {
    "melious": ("/melious/v1/images/generations", "BILLING_INSUFFICIENT_ENERGY"),
    "nebul": ("/nebul/v1/images/generations", "insufficient_quota"),
    "openai-root": ("/v1/images/generations", "insufficient_quota"),
    "pomelo": ("/pomelo/api/v1/midjourney/generate", "insufficient_quota"),
    "nebulablock": ("/nebulablock/v1/images/generate", "insufficient_quota"),
}


@pytest.mark.parametrize("dialect", list(INSUFFICIENT))
def test_a_spent_budget_is_insufficient_quota_in_the_dialect(
    dialect: str, priced_gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    path, code = INSUFFICIENT[dialect]
    response = http.post(priced_gateway.url + path, json={"model": "cent", "prompt": "p"}, headers=bearer("broke"))
    assert response.status_code == 402, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert "monthly budget of this key is spent" in error["message"]
    assert KEYS["broke"] not in response.text
    assert "retry-after" not in response.headers
    assert emulators["melious"].emulator.calls == []  # refused before any upstream call


def test_an_unpriced_model_is_admitted_on_a_spent_budget(priced_gateway: GatewayServer, http: httpx.Client) -> None:
    body = {"model": "unpriced", "prompt": "p", "size": "512x512"}
    response = http.post(priced_gateway.url + "/melious/v1/images/generations", json=body, headers=bearer("broke"))
    assert response.status_code == 200, response.text
    assert "x-gateway-cost" not in response.headers


# --- the standard rate-limit fields ---


def test_ratelimit_fields_on_an_answer_and_on_its_429(priced_gateway: GatewayServer, http: httpx.Client) -> None:
    url = priced_gateway.url + "/melious/v1/images/generations"
    body = {"model": "unpriced", "prompt": "p", "size": "512x512", "n": 2}
    answered = http.post(url, json=body, headers=bearer("alice"))
    assert answered.status_code == 200, answered.text
    policies = sf_list(answered.headers["ratelimit-policy"])
    assert policies["key-requests"] == {"q": 1000, "w": 60, "qu": "requests", "pk": b"alice"}
    assert policies["key-images"] == {"q": 5000, "w": 60, "qu": "images", "pk": b"alice"}
    limits = sf_list(answered.headers["ratelimit"])
    assert set(limits) == {"key-requests", "key-images"}
    assert limits["key-images"]["r"] < 5000 and limits["key-images"]["pk"] == b"alice"

    assert http.post(url, json=body, headers=bearer("tight")).status_code in (200, 429)  # whichever test ran first
    refused = http.post(url, json=body, headers=bearer("tight"))
    assert refused.status_code == 429, refused.text
    assert sf_list(refused.headers["ratelimit-policy"]) == {
        "key-requests": {"q": 1, "w": 3600, "qu": "requests", "pk": b"tight"}
    }
    limit = sf_list(refused.headers["ratelimit"])["key-requests"]
    assert limit["r"] == 0 and 0 < limit["t"] <= 3600
    assert int(refused.headers["retry-after"]) >= 1
    for response in (answered, refused):
        assert not any(secret in str(response.headers) for secret in KEYS.values())


# --- a budget spent exactly to the cent ---

REQUESTS = 30


def spend_concurrently(urls: list[str]) -> Counter[tuple[int, str]]:
    def one(index: int) -> tuple[int, str]:
        response = httpx.post(
            urls[index % len(urls)] + "/melious/v1/images/generations",
            json={"model": "cent", "prompt": "p", "size": "512x512", "response_format": "b64_json"},
            headers=bearer("spender"),
            timeout=30,
        )
        if response.status_code == 200:
            return 200, response.headers["x-gateway-cost"]
        return response.status_code, response.json()["error"]["code"]

    with ThreadPoolExecutor(max_workers=12) as pool:
        return Counter(pool.map(one, range(REQUESTS)))


def test_budget_spent_to_the_cent_in_one_process_in_memory(
    emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Path
) -> None:
    server = start_gateway(emulators, MODELS, tmp_path, auth=auth_section())
    try:
        url = server.url + "/melious/v1/images/generations"
        # The in-process server shares the process's metrics with earlier tests: count from here.
        before = http.get(server.url + "/metrics").text
        refused_before = metric(before, "image_gateway_budget_refused_total", key="spender")
        # Failed requests give their reservation back: three of them spend nothing.
        emulators["melious"].emulator.add_fault(Fault(status=400, message="bad prompt", times=3))
        for _ in range(3):
            failed = http.post(url, json={"model": "cent", "prompt": "p"}, headers=bearer("spender"))
            assert failed.status_code == 400, failed.text
        outcomes = spend_concurrently([server.url])
        assert outcomes == {(200, "0.0100 USD"): 10, (402, "BILLING_INSUFFICIENT_ENERGY"): REQUESTS - 10}
        text = http.get(server.url + "/metrics").text
        assert metric(text, "image_gateway_budget_spent", key="spender", currency="USD") == pytest.approx(0.10)
        assert metric(text, "image_gateway_budget_amount", key="spender", currency="USD") == pytest.approx(0.10)
        refused = metric(text, "image_gateway_budget_refused_total", key="spender") - refused_before
        assert refused == REQUESTS - 10
    finally:
        server.stop()


PROCESSES = 3


@pytest.fixture
def budget_processes(
    emulators: dict[str, EmulatorServer], tmp_path: Path
) -> Iterator[tuple[list[GatewayProcess], str]]:
    prefix = f"igw-test-{uuid.uuid4().hex[:8]}:"
    config = {
        "redis": {"url": require_shared_redis(), "key_prefix": prefix, "on_failure": "closed"},
        "auth": auth_section(),
        "image_store": {"path": str(tmp_path / "store")},
        "providers": {"melious": {"kind": "melious", "base_url": emulators["melious"].base_url, "api_key": "test-key"}},
        "models": MODELS,
    }
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))
    processes = [GatewayProcess(config_file) for _ in range(PROCESSES)]
    try:
        for process in processes:
            process.wait_ready()
        yield processes, prefix
    finally:
        for process in processes:
            process.stop()
        shared = redis.Redis.from_url(require_shared_redis())
        for key in shared.scan_iter(f"{prefix}*"):
            shared.delete(key)


def test_budget_spent_to_the_cent_across_processes_on_one_redis(
    budget_processes: tuple[list[GatewayProcess], str],
) -> None:
    processes, prefix = budget_processes
    outcomes = spend_concurrently([process.url for process in processes])
    assert outcomes == {(200, "0.0100 USD"): 10, (402, "BILLING_INSUFFICIENT_ENERGY"): REQUESTS - 10}
    shared = redis.Redis.from_url(require_shared_redis())
    counters = list(shared.scan_iter(f"{prefix}budget:spender:*"))
    assert len(counters) == 1
    assert shared.get(counters[0]) == b"100000"  # every reservation settled: 0.10 in millionths
    assert 0 < shared.ttl(counters[0]) <= 25 * 3600  # gone an hour after the UTC day ends
