"""Cooldowns shared through Redis: every provider's is read on its own schedule (gateway/routing/cooldown.py)."""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

from gateway.config import parse_config
from gateway.routing.cooldown import Cooldowns
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


async def test_a_cooldown_that_is_not_shared_stays_in_its_replica() -> None:
    """An in-process engine is each replica's own: its cooldown is never written where the others read."""
    client = aioredis.Redis.from_url(require_shared_redis())
    prefix = f"igw-test-{secrets.token_hex(4)}:"
    try:
        failing, other = Cooldowns(client, prefix), Cooldowns(client, prefix)
        assert await failing.record_failure("local", threshold=1, seconds=30, shared=False)
        assert failing.cooling("local")
        await other.refresh(["local"])
        assert not other.cooling("local") and await client.get(prefix + "cooldown:local") is None
    finally:
        await client.aclose()


def test_only_remote_local_workers_share_their_cooldown() -> None:
    text = """
providers:
  here: {kind: local, models: {tiny: {path: "builtin:tiny-sd"}}}
  there: {kind: local, workers: ["http://127.0.0.1:9"]}
  melious: {kind: melious, base_url: "http://127.0.0.1:9"}
models:
  - {name: m, targets: [{provider: here, model: tiny}, {provider: there, model: tiny}, {provider: melious, model: x}]}
"""
    providers = parse_config(text).providers
    assert [providers[name].shared_cooldown for name in ("here", "there", "melious")] == [False, True, True]
