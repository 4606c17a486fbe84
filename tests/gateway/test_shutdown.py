"""A shutdown that ends: the Redis probe and the job consumers stop when cancelled, whatever Redis does."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.redis_health import RedisHealth, RedisProbe
from gateway.shutdown import bounded

TRIALS = 60


@pytest.fixture
async def stalled_redis() -> AsyncIterator[int]:
    """A TCP server on loopback that takes every connection and every command, and never answers."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    for writer in connections:
        writer.close()
    await asyncio.sleep(0.1)  # each handler reads its EOF and ends


def probe_client(port: int, timeout_s: float) -> aioredis.Redis:
    """The probe's client as the app builds it (gateway/app.py: build_limiter), with a short timeout."""
    return aioredis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=5,
        retry=Retry(NoBackoff(), 0),
    )


async def test_the_probe_ends_when_cancelled_while_a_ping_is_in_flight(stalled_redis: int) -> None:
    """Cancelled at random moments of a PING that never gets an answer, its timeout firing about then: the
    probe task always ends (it used to swallow the cancel and ping on for good)."""
    rng = random.Random(22)
    for trial in range(TRIALS):
        timeout_s = rng.choice([0.01, 0.02, 0.05])
        client = probe_client(stalled_redis, timeout_s)
        probe = RedisProbe(RedisHealth(), client, interval_s=0.001).start()
        task = probe._task
        assert task is not None
        await asyncio.sleep(rng.uniform(0, 3 * timeout_s))
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        assert task.done(), f"trial {trial}: the probe swallowed its cancel and goes on pinging"
        await probe.aclose()
        await client.aclose()


async def test_closing_the_probe_returns_in_bounded_time(stalled_redis: int) -> None:
    rng = random.Random(6)
    for _ in range(TRIALS // 3):
        client = probe_client(stalled_redis, 0.05)
        probe = RedisProbe(RedisHealth(), client, interval_s=0.001).start()
        await asyncio.sleep(rng.uniform(0, 0.15))
        closing = asyncio.ensure_future(probe.aclose(timeout_s=1.0))
        await asyncio.wait({closing}, timeout=5)
        assert closing.done()
        await client.aclose()


async def test_a_closing_step_that_swallows_its_cancel_is_left_behind() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    step = asyncio.ensure_future(bounded(stubborn(), 0.2, "stubborn"))
    await asyncio.wait({step}, timeout=5)
    assert step.done() and step.exception() is None
    release.set()
