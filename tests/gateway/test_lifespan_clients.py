"""The app's lifespan owns the shared clients: each closed exactly once, the shared Redis client last of those
that use it, and everything built so far closed when a later start-up step fails."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient

import gateway.app as app_module
from gateway.admission.ratelimit import RedisLimiter
from gateway.app import create_app
from tests.gateway.fakes import config
from tests.redis_support import require_shared_redis

MODELS = [{"name": "m", "targets": [{"provider": "p", "model": "x"}]}]


class Closes:
    """Wraps the ``aclose`` of what the lifespan builds, and records each call in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.order: list[str] = []
        self.redis: Any = None
        for name in ("build_redis_client", "build_limiter", "build_upstream_client"):
            monkeypatch.setattr(app_module, name, self._wrapping(name, getattr(app_module, name)))

    def _wrapping(self, name: str, build: Any) -> Any:
        def built(*args: Any) -> Any:
            made = build(*args)
            if made is None:
                return None
            original = made.aclose

            async def aclose() -> None:
                self.order.append(name)
                await original()

            made.aclose = aclose
            if name == "build_redis_client":
                self.redis = made
            return made

        return built


def settings(tmp_path: Path) -> Any:
    prefix = f"igw-unit-lifespan-{uuid.uuid4().hex[:8]}:"
    sections = {"image_store": {"path": str(tmp_path)}, "redis": {"url": require_shared_redis(), "key_prefix": prefix}}
    return config({"p": {}}, MODELS, **sections)


async def test_each_shared_client_is_closed_once_the_redis_client_after_its_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closes = Closes(monkeypatch)
    app = create_app(settings(tmp_path))
    async with AsyncTestClient(app=app) as client:
        assert (await client.get("/ready")).status_code == 200  # /ready pings through the shared client
        gateway = app.state.gateway
        assert gateway.redis is closes.redis and gateway.cooldowns is not None
        limiter = gateway.admission.limiter
        assert isinstance(limiter, RedisLimiter) and limiter.client is closes.redis  # one client, shared
        assert closes.order == []
    assert sorted(closes.order) == ["build_limiter", "build_redis_client", "build_upstream_client"]
    assert closes.order.index("build_limiter") < closes.order.index("build_redis_client")


async def test_the_limiter_leaves_the_shared_client_open() -> None:
    url = require_shared_redis()
    shared = aioredis.Redis.from_url(url)
    try:
        limiter = RedisLimiter(shared, url, on_failure="closed")
        await limiter.aclose()
        assert await shared.ping()  # cooldowns, dedup and /ready still have it
    finally:
        await shared.aclose()


async def test_a_failed_start_closes_what_was_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closes = Closes(monkeypatch)

    async def store_fails(config: Any) -> Any:
        raise RuntimeError("the image store would not start")

    monkeypatch.setattr(app_module, "start_image_store", store_fails)
    app = create_app(settings(tmp_path))
    with pytest.raises(RuntimeError, match="would not start"):
        async with app_module.lifespan(app):
            raise AssertionError("the app started")
    assert sorted(closes.order) == ["build_limiter", "build_redis_client", "build_upstream_client"]
    assert closes.order[-1] == "build_redis_client"
