"""The status page asks adapters and limiters through their protocols (``Adapter.backend_status``,
``Limiter.ahead_ms`` / ``spent_micros``), never by their classes; the local backend's models' speed options
reach it, in-process and from remote workers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from adapters.base import AdapterBase, CallOptions
from adapters.local import LocalAdapter
from adapters.melious import MeliousAdapter
from adapters.upstream import UpstreamClient, build_upstream_client
from gateway.admission.accounting import BudgetCheck, Reservation
from gateway.admission.ratelimit import Decision, LimitCheck, Limiter, MemoryLimiter
from gateway.config import GatewayConfig, parse_config
from gateway.console.status import LocalBackendStatus, StatusSampler
from schemas.canonical import ImageRequest, ImageResult
from schemas.local import LocalBackendSettings
from tests.local_backend.worker_server import WorkerServer

TOKEN = "worker-token-for-the-console-0123"


class OwnBackend(AdapterBase):
    """A backend of the gateway's own that is neither local nor HTTP: the console shows what it says."""

    name = "own"

    async def backend_status(self) -> dict[str, Any] | None:
        return {"remote": False, "started": True, "device": "tpu", "queue_depth": 2, "images_generated": 10}

    async def generate(self, request: ImageRequest, options: CallOptions) -> ImageResult:
        raise NotImplementedError


class CountingLimiter:
    """A limiter of another kind than the two the gateway ships: its reads are the status page's numbers."""

    def __init__(self) -> None:
        self.inner = MemoryLimiter()
        self.reads: list[str] = []

    async def check(self, checks: Sequence[LimitCheck], budgets: Sequence[BudgetCheck] = ()) -> Decision:
        return await self.inner.check(checks, budgets)

    async def settle(self, reservation: Reservation, actual: int) -> list[int]:
        return await self.inner.settle(reservation, actual)

    async def ahead_ms(self, keys: Sequence[str]) -> list[float]:
        self.reads.append("ahead_ms")
        return [1_728_000.0 * 3] * len(keys)  # three units of alice's 50 per day used

    async def spent_micros(self, keys: Sequence[str]) -> list[int]:
        self.reads.append("spent_micros")
        return [1_250_000] * len(keys)

    async def aclose(self) -> None:
        await self.inner.aclose()


CONFIG = """
providers:
  melious: {kind: melious, base_url: "http://127.0.0.1:9", api_key: k}
models:
  - {name: m, targets: [{provider: melious, model: flux, price: {currency: EUR, per_image: 0.25}}]}
auth:
  keys:
    - name: alice
      hash: "sha256:%s"
      limits: {requests: 50, period_s: 86400}
      budget: {amount: 5, period: month, currency: EUR}
""" % ("0" * 64)


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    shared = build_upstream_client("aiohttp")
    yield shared
    await shared.aclose()


def sampler(config: GatewayConfig, adapters: dict[str, Any], limiter: Limiter) -> StatusSampler:
    gateway = SimpleNamespace(config=config, adapters=adapters, admission=SimpleNamespace(limiter=limiter))
    return StatusSampler(gateway)  # type: ignore[arg-type]


async def test_limits_and_budgets_are_read_through_the_limiter_protocol(client: UpstreamClient) -> None:
    config = parse_config(CONFIG)
    limiter = CountingLimiter()
    status = sampler(config, {}, limiter)
    limits = await status.limits()
    budgets = await status.budgets()
    assert limiter.reads == ["ahead_ms", "spent_micros"]
    assert [(item["name"], item["used"], item["limit"]) for item in limits["items"]] == [("alice", 3, 50)]
    assert [(item["key"], item["spent"], item["amount"]) for item in budgets["items"]] == [("alice", 1.25, 5.0)]


async def test_backends_are_asked_through_the_adapter_protocol(client: UpstreamClient) -> None:
    config = parse_config(CONFIG)
    http = MeliousAdapter("melious", config.providers["melious"], client)  # type: ignore[arg-type]
    assert await http.backend_status() is None  # an HTTP provider is only its calls
    status = sampler(config, {"melious": http, "own": OwnBackend()}, MemoryLimiter())
    found = await status.local()
    assert found == [
        {
            "provider": "own",
            "remote": False,
            "started": True,
            "device": "tpu",
            "queue_depth": 2,
            "images_generated": 10,
            "images_per_s": None,
        }
    ]
    msgspec.convert(found, list[LocalBackendStatus])  # the admin API's shape


def speedy_settings(**options: Any) -> LocalBackendSettings:
    model = {"path": "builtin:tiny-sd", "fuse_qkv": True, "channels_last": True}
    raw = {"kind": "local", "device": "cpu", "batch_window_ms": 0, "models": {"tiny": model}, **options}
    return msgspec.convert(raw, LocalBackendSettings)


SPEEDY = {"dtype": "float32", "quantize": None, "cache": None, "compile": None, "fuse_qkv": True, "channels_last": True}


async def test_an_in_process_engine_tells_its_models_speed_options(client: UpstreamClient) -> None:
    adapter = LocalAdapter("local", speedy_settings(), client)
    assert await adapter.backend_status() == {"remote": False, "device": None, "started": False}
    await adapter.start()
    try:
        state = await adapter.backend_status()
    finally:
        await adapter.aclose()
    assert state is not None and state["started"] is True and state["device"] == "cpu"
    assert state["options"] == {"tiny": SPEEDY}
    assert state["models"] == {"tiny": "ready"}


async def test_remote_workers_tell_their_speed_options_with_the_worker_token(client: UpstreamClient) -> None:
    with WorkerServer(speedy_settings(worker_token=TOKEN)) as worker:
        settings = msgspec.convert(
            {"kind": "local", "workers": [worker.url], "worker_token": TOKEN}, LocalBackendSettings
        )
        adapter = LocalAdapter("gpu", settings, client)
        state = await adapter.backend_status()
        wrong = LocalAdapter("gpu", msgspec.structs.replace(settings, worker_token="another-token-0123456789"), client)
        refused = await wrong.backend_status()
    assert state == {"remote": True, "workers": {worker.url: True}, "options": {"tiny": SPEEDY}}
    assert refused is not None and refused["options"] == {}  # /stats wants the token: no options without it
    # Asked again within WORKER_OPTIONS_TTL_S, the options are the ones known, the worker gone or not.
    again = await adapter.backend_status()
    assert again is not None and again["options"] == {"tiny": SPEEDY} and again["workers"] == {worker.url: False}
