"""Rate limits shared by real gateway processes over one real Redis, Redis going away, and inbound keys."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from gateway.admission.auth import hash_key
from tests.emulators import EmulatorServer
from tests.integration.conftest import start_gateway
from tests.integration.gateway_server import GatewayServer
from tests.redis_support import OwnRedis, require_shared_redis
from tests.servers import GatewayProcess

KEYS = {"alice": "sk-alice-0123456789", "bob": "sk-bob-0123456789", "eve": "sk-eve-revoked-0123"}
MODELS = [
    {"name": "flux-schnell", "targets": [{"provider": "melious", "model": "flux-schnell"}]},
    {"name": "kontext", "targets": [{"provider": "nebul", "model": "black-forest-labs/FLUX.1-Kontext-dev"}]},
]


def auth_section(limits: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "keys": [
            {"name": "alice", "hash": hash_key(KEYS["alice"]), **({"limits": limits} if limits else {})},
            {"name": "bob", "hash": hash_key(KEYS["bob"]), "models": ["kontext"]},
            {"name": "eve", "hash": hash_key(KEYS["eve"]), "revoked": True},
        ]
    }


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


# --- several gateway processes, one Redis, one budget ---

PROCESSES = 3
LIMIT = 30
REQUESTS = 90


@pytest.fixture
def gateway_processes(emulators: dict[str, EmulatorServer], tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    prefix = f"igw-test-{uuid.uuid4().hex[:8]}:"
    config = {
        "redis": {"url": require_shared_redis(), "key_prefix": prefix, "on_failure": "closed"},
        "auth": auth_section({"requests": LIMIT, "period_s": 3600}),
        "image_store": {"path": str(tmp_path / "store")},
        "providers": {"melious": {"kind": "melious", "base_url": emulators["melious"].base_url, "api_key": "test-key"}},
        "models": MODELS[:1],
    }
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))
    processes = [GatewayProcess(config_file) for _ in range(PROCESSES)]
    try:
        for process in processes:
            process.wait_ready()
        yield processes
    finally:
        for process in processes:
            process.stop()
        shared = redis.Redis.from_url(require_shared_redis())
        for key in shared.scan_iter(f"{prefix}*"):
            shared.delete(key)


def test_replicas_share_one_exact_budget(gateway_processes: list[GatewayProcess]) -> None:
    def one(index: int) -> tuple[int, str]:
        target = gateway_processes[index % PROCESSES]
        response = httpx.post(
            target.url + "/melious/v1/images/generations",
            json={"prompt": "p", "size": "512x512", "response_format": "b64_json"},
            headers=bearer("alice"),
            timeout=30,
        )
        code = response.json()["error"]["code"] if response.status_code != 200 else ""
        return response.status_code, code

    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = Counter(pool.map(one, range(REQUESTS)))
    assert outcomes == {(200, ""): LIMIT, (429, "RATE_LIMIT_EXCEEDED"): REQUESTS - LIMIT}


# --- Redis going away mid-run, and coming back ---


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path).start()
    yield server
    server.stop()


def limited_gateway(
    emulators: dict[str, EmulatorServer], store: Path, redis_url: str, on_failure: str
) -> GatewayServer:
    return start_gateway(
        emulators,
        MODELS,
        store,
        redis={"url": redis_url, "on_failure": on_failure, "timeout_s": 0.2},
        auth=auth_section({"requests": 1000, "period_s": 3600}),
    )


def hammer(server: GatewayServer, http: httpx.Client, count: int) -> list[tuple[int, float]]:
    """``count`` requests in a row: status and seconds each."""
    results = []
    for _ in range(count):
        started = time.monotonic()
        response = http.post(
            server.url + "/nebul/v1/images/generations",
            json={"model": "flux-schnell", "prompt": "p", "size": "512x512"},
            headers=bearer("alice"),
        )
        results.append((response.status_code, time.monotonic() - started))
    return results


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def rate_keys(url: str) -> list[bytes]:
    return list(redis.Redis.from_url(url).scan_iter("igw:rl:*"))


def test_redis_away_fails_open_then_resumes(
    own_redis: OwnRedis, emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Path
) -> None:
    server = limited_gateway(emulators, tmp_path, own_redis.url, "open")
    try:
        assert {status for status, _ in hammer(server, http, 3)} == {200}
        assert rate_keys(own_redis.url)
        own_redis.stop()
        ready = http.get(server.url + "/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"  # still serving
        during = hammer(server, http, 10)
        assert {status for status, _ in during} == {200}  # open: served on the in-memory limiter
        assert max(seconds for _, seconds in during) < 2.0  # and nobody waits on the dead Redis
        own_redis.start()  # empty, as a restarted Redis without persistence is
        wait_for(lambda: hammer(server, http, 1) and bool(rate_keys(own_redis.url)))
    finally:
        server.stop()


def test_redis_away_fails_closed_then_resumes(
    own_redis: OwnRedis, emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Path
) -> None:
    server = limited_gateway(emulators, tmp_path, own_redis.url, "closed")
    try:
        assert {status for status, _ in hammer(server, http, 2)} == {200}
        own_redis.stop()
        response = http.post(
            server.url + "/melious/v1/images/generations", json={"prompt": "p"}, headers=bearer("alice")
        )
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "INFERENCE_OVERLOADED"
        assert response.headers["retry-after"] == "1"
        # Seen once, then lost: degraded, not unready. Every replica shares that Redis, so taking them all out
        # would only swap the gateway's own `overloaded` (with Retry-After) for the load balancer's bare 503.
        ready = http.get(server.url + "/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["redis"].startswith("unreachable") and ready.json()["checks"]["redis"].endswith(
            "closed"
        )
        during = hammer(server, http, 5)
        assert {status for status, _ in during} == {503}
        assert max(seconds for _, seconds in during) < 2.0
        own_redis.start()
        wait_for(lambda: hammer(server, http, 1)[0][0] == 200)
        ready = http.get(server.url + "/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
    finally:
        server.stop()


def test_redis_never_reached_under_closed_keeps_the_replica_unready(
    emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Path
) -> None:
    """`closed` with a Redis this replica has never reached (a wrong URL, a network policy): not ready, so a
    rollout stops on it; ready once that Redis answers."""
    absent = OwnRedis(tmp_path)  # its port chosen, nothing listening yet
    server = limited_gateway(emulators, tmp_path, absent.url, "closed")
    try:
        ready = http.get(server.url + "/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "not ready"
        assert ready.json()["checks"]["redis"].startswith("unreachable")
        absent.start()
        wait_for(lambda: http.get(server.url + "/ready").status_code == 200)
        assert http.get(server.url + "/ready").json()["status"] == "ready"
    finally:
        server.stop()
        absent.stop()


# --- inbound keys ---


@pytest.fixture(scope="module")
def keyed_gateway(
    emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    server = start_gateway(
        emulators, MODELS, tmp_path_factory.mktemp("store"), auth=auth_section({"requests": 1000, "images": 10})
    )
    yield server
    server.stop()


DIALECT_PATHS = {
    "melious": ("/melious/v1/images/generations", lambda body: body["error"]["code"], "AUTH_INVALID_API_KEY"),
    "nebul": ("/nebul/v1/images/generations", lambda body: body["error"]["code"], "invalid_api_key"),
    "openai-root": ("/v1/images/generations", lambda body: body["error"]["code"], "invalid_api_key"),
    "pomelo": ("/pomelo/api/v1/midjourney/generate", lambda body: body["error"]["code"], "unauthorized"),
    "nebulablock": ("/nebulablock/v1/images/generate", lambda body: body["error"]["code"], "unauthorized"),
}
BAD_CREDENTIALS = {
    "missing": {},
    "malformed": {"Authorization": "Token abc"},
    "empty-bearer": {"Authorization": "Bearer"},
    "wrong": {"Authorization": "Bearer sk-not-a-key"},
    "revoked": bearer("eve"),
}


@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS))
@pytest.mark.parametrize("dialect", list(DIALECT_PATHS))
def test_bad_credentials_get_401_in_the_dialect(
    dialect: str,
    credentials: str,
    keyed_gateway: GatewayServer,
    emulators: dict[str, EmulatorServer],
    http: httpx.Client,
) -> None:
    path, code_of, expected = DIALECT_PATHS[dialect]
    response = http.post(
        keyed_gateway.url + path, json={"model": "flux-schnell", "prompt": "p"}, headers=BAD_CREDENTIALS[credentials]
    )
    assert response.status_code == 401, response.text
    assert code_of(response.json()) == expected
    assert response.headers["www-authenticate"] == "Bearer"
    assert all(len(server.emulator.calls) == 0 for server in emulators.values())


def test_good_key_by_either_header_with_rate_limit_headers(keyed_gateway: GatewayServer, http: httpx.Client) -> None:
    body = {"model": "flux-schnell", "prompt": "p", "size": "512x512"}
    for headers in (bearer("alice"), {"X-API-Key": KEYS["alice"]}):
        response = http.post(keyed_gateway.url + "/melious/v1/images/generations", json=body, headers=headers)
        assert response.status_code == 200, response.text
        assert int(response.headers["x-ratelimit-limit"]) in (10, 1000)
        assert "x-ratelimit-remaining" in response.headers and "x-ratelimit-reset" in response.headers


def test_key_limited_to_one_model(keyed_gateway: GatewayServer, http: httpx.Client) -> None:
    allowed = http.post(
        keyed_gateway.url + "/nebul/v1/images/generations",
        json={"model": "kontext", "prompt": "p", "size": "512x512"},
        headers=bearer("bob"),
    )
    assert allowed.status_code == 200, allowed.text
    refused = http.post(
        keyed_gateway.url + "/nebul/v1/images/generations",
        json={"model": "flux-schnell", "prompt": "p"},
        headers=bearer("bob"),
    )
    assert refused.status_code == 404, refused.text
    assert refused.json()["error"]["code"] == "model_not_found"


def test_images_limit_counts_n(emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Path) -> None:
    server = start_gateway(emulators, MODELS, tmp_path, auth=auth_section({"images": 6, "period_s": 3600}))
    try:
        url = server.url + "/melious/v1/images/generations"
        body = {"model": "flux-schnell", "prompt": "p", "size": "512x512", "n": 4}
        first = http.post(url, json=body, headers=bearer("alice"))
        assert first.status_code == 200 and first.headers["x-ratelimit-remaining"] == "2"
        second = http.post(url, json=body, headers=bearer("alice"))  # 4 more images than the 2 left
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        assert int(second.headers["retry-after"]) > 0 and second.headers["x-ratelimit-remaining"] == "2"
        assert http.post(url, json={**body, "n": 2}, headers=bearer("alice")).status_code == 200
        too_many = http.post(url, json={**body, "n": 4, "model": "flux-schnell"}, headers=bearer("alice"))
        assert too_many.status_code == 429
    finally:
        server.stop()


def test_keys_never_reach_logs_or_answers(
    keyed_gateway: GatewayServer, http: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    http.post(keyed_gateway.url + "/melious/v1/images/generations", json={"prompt": "p"}, headers=bearer("alice"))
    wrong = http.post(
        keyed_gateway.url + "/melious/v1/images/generations",
        json={"prompt": "p"},
        headers={"Authorization": "Bearer sk-secret-wrong"},
    )
    assert "sk-secret-wrong" not in wrong.text
    captured = capfd.readouterr()
    for secret in (*KEYS.values(), "sk-secret-wrong", "test-key"):
        assert secret not in captured.out + captured.err
