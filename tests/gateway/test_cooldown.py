"""Cooldowns shared through Redis: every provider's is read on its own schedule (gateway/cooldown.py)."""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

from gateway.cooldown import Cooldowns
from tests.redis_support import require_shared_redis


async def test_a_refresh_for_one_model_does_not_hold_back_another_models_providers() -> None:
    client = aioredis.Redis.from_url(require_shared_redis())
    prefix = f"igw-test-{secrets.token_hex(4)}:"
    try:
        failing, reading = Cooldowns(client, prefix), Cooldowns(client, prefix)
        await reading.refresh(["provider-a"])  # a request for a model served by provider-a
        assert await failing.record_failure("provider-b", threshold=1, seconds=30)  # another replica cools b down
        await reading.refresh(["provider-b"])  # at once, a request for a model served by provider-b
        assert reading.cooling("provider-b") and not reading.cooling("provider-a")
        await reading.refresh(["provider-a", "provider-b"])  # again within REFRESH_S: what is known stays
        assert reading.cooling("provider-b")
    finally:
        await client.delete(prefix + "cooldown:provider-b")
        await client.aclose()
