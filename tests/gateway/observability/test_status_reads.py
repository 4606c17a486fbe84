"""What the console's status reads: the recent calls per provider, and rate-limit use read without charging."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.admission.accounting import MICROS, BudgetCheck, BudgetConfig
from gateway.admission.ratelimit import LimitCheck, MemoryLimiter, RedisLimiter
from gateway.observability.recent import RecentCalls
from tests.redis_support import require_shared_redis


def test_recent_calls_summarise_error_rate_and_percentiles() -> None:
    recent = RecentCalls()
    assert recent.summary("melious") == {
        "window_s": recent.window_s,
        "calls": 0,
        "errors": 0,
        "error_rate": None,
        "p50_ms": None,
        "p95_ms": None,
    }
    for ms in range(1, 101):  # 1 ms .. 100 ms, every fourth one failed
        recent.record("melious", ms % 4 != 0, ms / 1000)
    recent.record("other", True, 5.0)
    summary = recent.summary("melious")
    assert summary["calls"] == 100 and summary["errors"] == 25 and summary["error_rate"] == 0.25
    assert summary["p50_ms"] == 50.0 and summary["p95_ms"] == 95.0


def test_recent_calls_keep_a_bounded_window() -> None:
    recent = RecentCalls(max_calls=10)
    for _ in range(50):
        recent.record("p", False, 0.001)
    assert recent.summary("p")["calls"] == 10
    assert RecentCalls(window_s=0.0).summary("p")["calls"] == 0


def checks(prefix: str) -> list[LimitCheck]:
    # 10 per 10 000 s: one unit drains back every 1000 s, so nothing drains during a test.
    return [LimitCheck(f"{prefix}rl:key:alice:req", 10, 10_000.0, 1, "key")]


async def test_memory_limiter_use_is_read_without_charging() -> None:
    limiter = MemoryLimiter()
    keys = [check.key for check in checks("t:")]
    assert await limiter.ahead_ms(keys) == [0.0]
    for _ in range(3):
        assert (await limiter.check(checks("t:"))).allowed
    first = await limiter.ahead_ms(keys)
    second = await limiter.ahead_ms(keys)
    assert 2 * 1_000_000 < first[0] <= 3 * 1_000_000  # three units of 1000 s each, less the time passed
    assert second[0] <= first[0]  # reading charged nothing
    assert (await limiter.check(checks("t:"))).remaining == 6


@pytest.fixture
async def redis_limiter() -> AsyncIterator[RedisLimiter]:
    url = require_shared_redis()
    limiter = RedisLimiter(aioredis.Redis.from_url(url), url, on_failure="closed")
    yield limiter
    await limiter.aclose()
    await limiter.client.aclose()  # the limiter closes its scripts only: the client is the caller's


async def test_redis_limiter_use_is_read_from_redis(redis_limiter: RedisLimiter) -> None:
    prefix = f"test-status-{uuid.uuid4().hex}:"
    keys = [check.key for check in checks(prefix)]
    try:
        assert await redis_limiter.ahead_ms(keys) == [0.0]
        assert await redis_limiter.ahead_ms([]) == []
        for _ in range(2):
            assert (await redis_limiter.check(checks(prefix))).allowed
        (ahead,) = await redis_limiter.ahead_ms(keys)
        assert 1_000_000 < ahead <= 2 * 1_000_000
        assert (await redis_limiter.check(checks(prefix))).remaining == 7
    finally:
        await redis_limiter.client.delete(*keys)


def budget(key: str, cost: int) -> BudgetCheck:
    config = BudgetConfig(amount=5.0)
    return BudgetCheck(key, 5 * MICROS, cost, 4_102_444_800_000, 4_102_444_800_000, "alice", config)  # 2100-01-01


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_budget_spent_is_read_without_charging(kind: str) -> None:
    if kind == "memory":
        limiter: MemoryLimiter | RedisLimiter = MemoryLimiter()
    else:
        url = require_shared_redis()
        limiter = RedisLimiter(aioredis.Redis.from_url(url), url, on_failure="closed")
    key = f"test-status-{uuid.uuid4().hex}:budget:alice:2100-01"
    try:
        assert await limiter.spent_micros([key]) == [0]
        assert (await limiter.check([], [budget(key, 250_000)])).allowed
        assert await limiter.spent_micros([key]) == [250_000]
        assert await limiter.spent_micros([key]) == [250_000]  # reading charged nothing
    finally:
        if isinstance(limiter, RedisLimiter):
            await limiter.client.delete(key)
        await limiter.aclose()
        if isinstance(limiter, RedisLimiter):
            await limiter.client.aclose()  # the limiter closes its scripts only: the client is the caller's
