"""The image store's background check (gateway/images/health.py) and what /ready makes of it (gateway/readiness.py),
on a real directory store whose directory goes away and comes back."""

from __future__ import annotations

import shutil
from pathlib import Path

import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from gateway.images.health import StoreHealth
from gateway.images.store import DirectoryImageStore
from gateway.readiness import Readiness
from gateway.redis_health import RedisHealth
from tests.servers import free_port


def gauge() -> float | None:
    return REGISTRY.get_sample_value("image_gateway_image_store_ready")


async def test_a_store_never_usable_keeps_the_replica_unready_until_it_is(tmp_path: Path) -> None:
    store = DirectoryImageStore(tmp_path / "images", 60, "secret")
    shutil.rmtree(store.path)  # gone before the first check: a wrong path, a volume not mounted
    health = StoreHealth(store, 5.0)
    assert gauge() == 0  # not usable until seen so
    readiness = Readiness(health)
    with capture_logs() as logged:
        assert not await health.check()
        ok, body = await readiness.assess(None, "open")
        assert not ok and body["status"] == "not ready"
        assert str(tmp_path) not in body["checks"]["image_store"]  # /ready is public: no server path
        assert not await health.check()  # still down: logged once
        store.path.mkdir()
        assert await health.check()
    assert [(line["event"], line["log_level"]) for line in logged] == [
        ("image_store_unavailable", "error"),
        ("image_store_recovered", "warning"),
    ]
    assert "the replica is not ready" in logged[0]["effect"] and str(tmp_path) in logged[0]["detail"]
    ready = (True, {"status": "ready", "checks": {"config": "ok", "image_store": "ok"}})
    assert await readiness.assess(None, "open") == ready
    assert gauge() == 1


async def test_a_store_lost_after_it_served_is_degraded_not_unready(tmp_path: Path) -> None:
    store = DirectoryImageStore(tmp_path / "images", 60, "secret")
    health = StoreHealth(store, 5.0)
    readiness = Readiness(health)
    assert await health.check() and gauge() == 1
    shutil.rmtree(store.path)
    with capture_logs() as logged:
        for _ in range(3):
            assert not await health.check()
    assert [line["event"] for line in logged] == ["image_store_unavailable"]  # one line per change, not per check
    assert "base64 answers are served" in logged[0]["effect"]
    ok, body = await readiness.assess(None, "open")
    assert ok and body["status"] == "degraded" and "not a directory" in body["checks"]["image_store"]
    assert gauge() == 0 and health.state() == "degraded"


async def test_a_redis_never_reached_under_closed_is_unready_and_one_lost_later_is_degraded(tmp_path: Path) -> None:
    """A real client at a port nothing listens on: the PING fails as it does against a Redis that is gone."""
    health = StoreHealth(DirectoryImageStore(tmp_path / "images", 60, "secret"), 5.0)
    assert await health.check()
    redis_health = RedisHealth("closed")
    client = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        readiness = Readiness(health, redis_health)
        ok, body = await readiness.assess(client, "closed")
        assert not ok and body["status"] == "not ready" and body["checks"]["redis"].endswith(": closed")
        ok, body = await Readiness(health, RedisHealth("open")).assess(client, "open")
        assert ok and body["status"] == "degraded" and body["checks"]["redis"].endswith(": open")  # open: never unready
        redis_health.observe(True)  # answered once (the probe, the limiter or /ready saw it)
        ok, body = await readiness.assess(client, "closed")
        assert ok and body["status"] == "degraded"
    finally:
        await client.aclose()
