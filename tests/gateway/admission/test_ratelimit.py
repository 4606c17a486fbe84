"""One suite for every limiter: the in-memory one and the Redis one (a real server) behave the same."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal, cast

import http_sf
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.admission.accounting import MICROS, BudgetCheck, BudgetConfig
from gateway.admission.ratelimit import LimitCheck, Limiter, MemoryLimiter, PolicyState, RedisLimiter, limit_checks
from schemas.canonical import ErrorCode, GatewayError
from schemas.policy import RateLimit
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
    await limiter.client.aclose()  # the limiter closes its scripts only: the client is the caller's


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


def away_limiter(
    on_failure: Literal["open", "closed"], budgets_on_failure: Literal["open", "closed"] = "closed"
) -> RedisLimiter:
    client = aioredis.Redis.from_url(
        AWAY_URL, socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    return RedisLimiter(client, AWAY_URL, on_failure=on_failure, budgets_on_failure=budgets_on_failure, timeout_s=0.2)


async def test_redis_away_fails_open_onto_memory() -> None:
    limiter = away_limiter("open")
    limit = check(2)
    assert [(await limiter.check([limit])).allowed for _ in range(3)] == [True, True, False]
    assert not limiter.redis_up
    await limiter.aclose()
    await limiter.client.aclose()  # the limiter closes its scripts only: the client is the caller's


async def test_redis_away_fails_closed_with_overloaded() -> None:
    limiter = away_limiter("closed")
    with pytest.raises(GatewayError) as caught:
        await limiter.check([check(2)])
    assert caught.value.code is ErrorCode.OVERLOADED
    await limiter.aclose()
    await limiter.client.aclose()  # the limiter closes its scripts only: the client is the caller's


async def test_redis_away_refuses_budgeted_requests_even_when_limits_fail_open() -> None:
    limiter = away_limiter("open")  # budgets_on_failure: closed, the default
    spend = budget(100_000, 10_000)
    with pytest.raises(GatewayError) as caught:
        await limiter.check([check(5)], [spend])
    assert caught.value.code is ErrorCode.OVERLOADED and caught.value.retry_after == 1.0
    assert "budget" in caught.value.message
    assert (await limiter.check([check(5)])).allowed  # a request with no budget is still served, in memory
    await limiter.aclose()
    await limiter.client.aclose()


# --- budgets: reserved in the same check, settled at the end ---


def budget(limit: int, cost: int, period_end_in_s: float = 3600.0, name: str = "alice") -> BudgetCheck:
    end_ms = int((time.time() + period_end_in_s) * 1000)
    config = BudgetConfig(amount=limit / MICROS, period="day")
    return BudgetCheck(f"test:budget:{uuid.uuid4().hex}", limit, cost, end_ms, end_ms + 3_600_000, name, config)


async def test_a_budget_is_spent_exactly_to_the_cent(limiter: Limiter) -> None:
    spend = budget(100_000, 10_000)  # 0.10 at 0.01 a request
    decisions = [await limiter.check([], [spend]) for _ in range(11)]
    assert [decision.allowed for decision in decisions] == [True] * 10 + [False]
    refused = decisions[-1]
    assert refused.scope == "budget" and refused.budget == spend and refused.budget_left == 0
    assert 3590 <= refused.retry_after_s <= 3600  # until the period ends
    error = refused.refusal()
    assert error.code is ErrorCode.INSUFFICIENT_QUOTA and error.status == 402
    assert "daily budget" in error.message and "0 USD left of 0.1 USD" in error.message
    assert "Retry-After" not in error.headers  # a spent budget is not a rate limit to wait out


async def test_concurrent_reservations_never_overspend(limiter: Limiter) -> None:
    spend = budget(250_000, 10_000)
    decisions = await asyncio.gather(*(limiter.check([], [spend]) for _ in range(60)))
    assert sum(decision.allowed for decision in decisions) == 25


async def test_budget_and_rate_limits_admit_together_or_not_at_all(limiter: Limiter) -> None:
    roomy, spend = check(10), budget(30_000, 10_000)
    tight = check(1)
    assert (await limiter.check([roomy, tight], [spend])).allowed
    refused = await limiter.check([roomy, tight], [spend])  # the rate limit refuses: nothing reserved
    assert not refused.allowed and refused.scope == "key" and refused.budget is None
    assert [(await limiter.check([], [spend])).allowed for _ in range(3)] == [True, True, False]
    # The budget refused: the roomy limit was not charged (8 left after one more on it alone).
    assert (await limiter.check([roomy], [spend])).scope == "budget"
    assert (await limiter.check([roomy])).remaining == 8


async def test_settling_gives_back_what_was_not_spent(limiter: Limiter) -> None:
    spend = budget(50_000, 20_000)
    first = await limiter.check([], [spend])
    assert first.reservation is not None
    assert await limiter.settle(first.reservation, 0) == [0]  # failed: all of it back
    second = await limiter.check([], [spend])
    assert second.reservation is not None
    assert await limiter.settle(second.reservation, 5_000) == [5_000]  # cheaper than estimated
    third = await limiter.check([], [spend])
    assert third.reservation is not None and await limiter.settle(third.reservation, 20_000) == [25_000]
    fourth = await limiter.check([], [spend])
    assert fourth.allowed  # 45 000 reserved of 50 000
    assert not (await limiter.check([], [spend])).allowed


async def test_a_reservation_bigger_than_the_whole_budget_is_insufficient_quota(limiter: Limiter) -> None:
    decision = await limiter.check([], [budget(10_000, 10_001)])
    assert not decision.allowed and decision.refusal().code is ErrorCode.INSUFFICIENT_QUOTA


async def test_redis_budget_counter_expires_after_its_period() -> None:
    url = require_shared_redis()
    limiter = RedisLimiter(aioredis.Redis.from_url(url), url, on_failure="closed")
    spend = budget(100_000, 12_345)
    try:
        assert (await limiter.check([], [spend])).allowed
        shared = aioredis.Redis.from_url(url)
        assert await shared.get(spend.key) == b"12345"
        expires_ms = await shared.pexpiretime(spend.key)
        assert expires_ms == spend.expire_at_ms
        await shared.aclose()
    finally:
        await limiter.aclose()
        await limiter.client.aclose()  # the limiter closes its scripts only: the client is the caller's


async def test_redis_away_fails_open_onto_a_memory_budget_settled_there() -> None:
    limiter = away_limiter("open", budgets_on_failure="open")
    spend = budget(20_000, 10_000)
    first = await limiter.check([], [spend])
    assert first.reservation is not None and first.reservation.where == "memory"
    assert await limiter.settle(first.reservation, 0) == [0]
    assert [(await limiter.check([], [spend])).allowed for _ in range(3)] == [True, True, False]
    await limiter.aclose()
    await limiter.client.aclose()  # the limiter closes its scripts only: the client is the caller's


# --- the RateLimit-Policy and RateLimit fields (draft-ietf-httpapi-ratelimit-headers) ---


def parse_list(value: str) -> list[tuple[Any, dict[str, Any]]]:
    """A Structured Fields list, by a real parser (http-sf): a malformed field fails here."""
    parsed = cast(list[tuple[Any, dict[str, Any]]], http_sf.parse(value.encode(), tltype="list"))
    return [(item, dict(params)) for item, params in parsed]


async def test_standard_fields_name_every_limit(limiter: Limiter) -> None:
    checks = limit_checks(RateLimit(requests=10, images=100, period_s=60), "key", "alice", 4, f"t{uuid.uuid4().hex}:")
    checks += limit_checks(RateLimit(images=1000, period_s=0.5), "model", "flux", 4, f"t{uuid.uuid4().hex}:")
    headers = (await limiter.check(checks)).headers()
    policies = parse_list(headers["RateLimit-Policy"])
    assert policies == [
        ("key-requests", {"q": 10, "w": 60, "qu": "requests", "pk": b"alice"}),
        ("key-images", {"q": 100, "w": 60, "qu": "images", "pk": b"alice"}),
        ("model-images", {"q": 1000, "w": 1, "qu": "images", "pk": b"flux"}),
    ]
    limits = parse_list(headers["RateLimit"])
    assert [(name, params["r"], params["pk"]) for name, params in limits] == [
        ("key-requests", 9, b"alice"),
        ("key-images", 96, b"alice"),
        ("model-images", 996, b"flux"),
    ]
    assert 5 <= limits[0][1]["t"] <= 6  # one request of 10 per 60 s refills in 6 s
    assert 2 <= limits[1][1]["t"] <= 3  # four images of 100 per 60 s: 2.4 s
    assert headers["X-RateLimit-Limit"] == "10"  # the tightest, as before


async def test_a_refusal_carries_the_fields_with_nothing_charged(limiter: Limiter) -> None:
    prefix = f"t{uuid.uuid4().hex}:"
    checks = limit_checks(RateLimit(requests=1, period_s=3600), "key", "bob", 1, prefix)
    checks += limit_checks(RateLimit(requests=50, period_s=3600), "model", "flux", 1, prefix)
    assert (await limiter.check(checks)).allowed
    refused = (await limiter.check(checks)).refusal()
    assert refused.code is ErrorCode.RATE_LIMITED
    limits = dict(parse_list(refused.headers["RateLimit"]))
    assert limits["key-requests"]["r"] == 0 and 3590 <= limits["key-requests"]["t"] <= 3600
    assert limits["model-requests"]["r"] == 49  # the refused request did not charge it
    assert len(parse_list(refused.headers["RateLimit-Policy"])) == 2


async def test_a_budget_refusal_carries_the_rate_limit_fields(limiter: Limiter) -> None:
    checks = limit_checks(RateLimit(requests=5), "key", "carol", 1, f"t{uuid.uuid4().hex}:")
    refused = await limiter.check(checks, [budget(100, 200, name="carol")])
    error = refused.refusal()
    assert error.code is ErrorCode.INSUFFICIENT_QUOTA
    assert dict(parse_list(error.headers["RateLimit"]))["key-requests"]["r"] == 5  # not charged
    assert error.headers["X-RateLimit-Remaining"] == "5"


def test_the_partition_key_is_the_name_never_the_key() -> None:
    state = PolicyState(LimitCheck("igw:rl:key:alice:req", 3, 60.0, 1, "key", "requests", "alice"), 2, 20.0)
    assert state.policy_item() == '"key-requests";q=3;w=60;qu="requests";pk=:YWxpY2U=:'
    assert state.limit_item() == '"key-requests";r=2;t=20;pk=:YWxpY2U=:'
