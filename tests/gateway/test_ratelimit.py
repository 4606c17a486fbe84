"""One suite for every limiter: the in-memory one and the Redis one (a real server) behave the same."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Literal

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.ratelimit import LimitCheck, Limiter, MemoryLimiter, RedisLimiter
from schemas.canonical import ErrorCode, GatewayError
from tests.redis_support import require_shared_redis


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        yield MemoryLimiter()
        return
    url = require_shared_redis()
    limiter = RedisLimiter(aioredis.Redis.from_url(url), url, on_failure="closed")
    yield limiter
    await limiter.aclose()


def check(
    limit: int, period_s: float = 3600.0, cost: int = 1, key: str | None = None, scope: str = "key"
) -> LimitCheck:
    return LimitCheck(key or f"test:{uuid.uuid4().hex}", limit, period_s, cost, scope)


async def test_admits_a_burst_of_exactly_the_limit(limiter: Limiter) -> None:
    limit = check(5)
    remaining = []
    for _ in range(5):
        decision = await limiter.check([limit])
        assert decision.allowed
        remaining.append(decision.remaining)
    assert remaining == [4, 3, 2, 1, 0]
    refused = await limiter.check([limit])
    assert not refused.allowed and refused.scope == "key" and refused.limit == 5
    assert 700 <= refused.retry_after_s <= 720  # one emission interval: 3600 s / 5
    assert refused.headers()["Retry-After"] == str(720) or int(refused.headers()["Retry-After"]) >= 700


async def test_cost_counts_images(limiter: Limiter) -> None:
    images = check(10)
    assert (await limiter.check([images._replace(cost=4)])).remaining == 6
    assert (await limiter.check([images._replace(cost=6)])).allowed
    assert not (await limiter.check([images._replace(cost=1)])).allowed


async def test_all_or_nothing(limiter: Limiter) -> None:
    roomy, tight = check(10, scope="model"), check(1, scope="key")
    assert (await limiter.check([roomy, tight])).allowed
    refused = await limiter.check([roomy, tight])
    assert not refused.allowed and refused.scope == "key"
    # The refused request did not charge the roomy limit: 8 left after one more on it alone.
    assert (await limiter.check([roomy])).remaining == 8


async def test_reports_the_tightest_limit(limiter: Limiter) -> None:
    decision = await limiter.check([check(100, scope="model"), check(3, scope="key")])
    assert (decision.limit, decision.remaining, decision.scope) == (3, 2, "key")


async def test_refills_at_the_emission_rate(limiter: Limiter) -> None:
    limit = check(2, period_s=0.4)  # one unit every 0.2 s
    assert (await limiter.check([limit])).allowed
    assert (await limiter.check([limit])).allowed
    assert not (await limiter.check([limit])).allowed
    await asyncio.sleep(0.25)
    assert (await limiter.check([limit])).allowed
    assert not (await limiter.check([limit])).allowed


async def test_a_cost_beyond_the_whole_limit_is_invalid_not_retry_later(limiter: Limiter) -> None:
    with pytest.raises(GatewayError) as caught:
        await limiter.check([check(4, cost=5)])
    assert caught.value.code is ErrorCode.INVALID_REQUEST


async def test_concurrent_checks_admit_exactly_the_limit(limiter: Limiter) -> None:
    limit = check(25)
    decisions = await asyncio.gather(*(limiter.check([limit]) for _ in range(60)))
    assert sum(decision.allowed for decision in decisions) == 25


AWAY_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def away_limiter(on_failure: Literal["open", "closed"]) -> RedisLimiter:
    client = aioredis.Redis.from_url(
        AWAY_URL, socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    return RedisLimiter(client, AWAY_URL, on_failure=on_failure, timeout_s=0.2)


async def test_redis_away_fails_open_onto_memory() -> None:
    limiter = away_limiter("open")
    limit = check(2)
    assert [(await limiter.check([limit])).allowed for _ in range(3)] == [True, True, False]
    assert not limiter.redis_up
    await limiter.aclose()


async def test_redis_away_fails_closed_with_overloaded() -> None:
    limiter = away_limiter("closed")
    with pytest.raises(GatewayError) as caught:
        await limiter.check([check(2)])
    assert caught.value.code is ErrorCode.OVERLOADED
    await limiter.aclose()
