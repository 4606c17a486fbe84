"""Jobs and budgets over real HTTP on the real Redis: a job reserves at submit and settles at its end,
its cost when it succeeded, nothing when it failed or was canceled."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from gateway.admission.auth import hash_key
from tests.emulators import EmulatorServer, Fault
from tests.integration.conftest import start_gateway
from tests.integration.gateway_server import GatewayServer
from tests.integration.test_budgets import metric
from tests.redis_support import require_shared_redis

KEY = "sk-jobs-spender-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODELS = [{"name": "cent", "targets": [{"provider": "melious", "model": "flux-schnell", "price": {"per_image": 0.01}}]}]
BODY = {"model": "cent", "prompt": "a coin", "size": "512x512"}
PATH = "/melious/v1/images/generations"


@pytest.fixture(scope="module")
def budget_gateway(
    emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    prefix = f"igw-jobs-budget-{uuid.uuid4().hex[:8]}:"
    auth = {"keys": [{"name": "spender", "hash": hash_key(KEY), "budget": {"amount": 0.02, "period": "day"}}]}
    server = start_gateway(
        emulators,
        MODELS,
        tmp_path_factory.mktemp("store"),
        auth=auth,
        redis={"url": require_shared_redis(), "key_prefix": prefix},
    )
    yield server
    server.stop()
    shared = redis.Redis.from_url(require_shared_redis())
    for key in shared.scan_iter(f"{prefix}*"):
        shared.delete(key)


def spent(http: httpx.Client, server: GatewayServer) -> float:
    return metric(http.get(server.url + "/metrics").text, "image_gateway_budget_spent", key="spender")


def until(
    http: httpx.Client, server: GatewayServer, job_id: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        job: dict[str, Any] = http.get(f"{server.url}/v1/jobs/{job_id}", headers=AUTH).json()
        if check(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def submit(http: httpx.Client, server: GatewayServer, prefer: str = "respond-async") -> httpx.Response:
    return http.post(server.url + PATH, json=BODY, headers={**AUTH, "Prefer": prefer})


def test_a_job_spends_its_cost_and_a_failed_or_canceled_one_nothing(
    budget_gateway: GatewayServer, http: httpx.Client, fresh_emulators: dict[str, EmulatorServer]
) -> None:
    # A budget of two images at 0.01.
    ok = submit(http, budget_gateway, "respond-async, wait=20")
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-gateway-cost"].endswith("USD")  # the plain answer's headers, cost included
    assert spent(http, budget_gateway) == pytest.approx(0.01)

    fresh_emulators["melious"].emulator.add_fault(Fault(status=400, message="no"))
    failed = submit(http, budget_gateway).json()["id"]
    until(http, budget_gateway, failed, lambda job: job["status"] == "failed")  # given back

    fresh_emulators["melious"].emulator.add_fault(Fault(delay=10))
    slow = submit(http, budget_gateway)
    assert slow.status_code == 202, slow.text  # the failed job left room for it
    canceled = slow.json()["id"]
    until(http, budget_gateway, canceled, lambda job: job["status"] == "running")
    refused = submit(http, budget_gateway)  # the running job holds the last cent
    assert refused.status_code == 402 and "location" not in refused.headers, refused.text
    assert http.delete(f"{budget_gateway.url}/v1/jobs/{canceled}", headers=AUTH).status_code == 200
    again = submit(http, budget_gateway, "respond-async, wait=20")  # the canceled job gave it back
    assert again.status_code == 200, again.text
    assert spent(http, budget_gateway) == pytest.approx(0.02)
    assert submit(http, budget_gateway).status_code == 402
