"""Cooldowns: a provider that keeps failing is skipped for a while, by every replica.

Failures are counted in each process; when a provider reaches its threshold, this
process cools it down and, with Redis configured, writes the cooldown there (with its
expiry) so that the other replicas skip it too. Replicas read Redis at most once per
``REFRESH_S``, so the hot path usually pays nothing for this. A provider that each
replica runs itself (in-process local models) is cooled down in that process alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

__all__ = ["Cooldowns"]

log = structlog.get_logger("gateway.cooldown")

REFRESH_S = 1.0


class Cooldowns:
    """Consecutive failures per provider, and until when each provider is cooled down."""

    def __init__(self, client: aioredis.Redis | None = None, key_prefix: str = "igw:") -> None:
        self._client = client
        self._prefix = f"{key_prefix}cooldown:"
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}  # wall-clock seconds, comparable across replicas
        self._refreshed: dict[str, float] = {}  # per provider: a model's request never waits on another's refresh

    def cooling(self, provider: str) -> bool:
        return self._until.get(provider, 0.0) > time.time()

    def remaining(self, provider: str) -> float:
        """Seconds until ``provider``'s cooldown ends; 0 when it is not cooling down."""
        return max(0.0, self._until.get(provider, 0.0) - time.time())

    def record_success(self, provider: str) -> None:
        self._failures.pop(provider, None)

    async def record_failure(self, provider: str, threshold: int, seconds: float, *, shared: bool = True) -> bool:
        """Count a failure; True when it starts a cooldown (``shared``: on every replica)."""
        count = self._failures.get(provider, 0) + 1
        self._failures[provider] = count
        if count < threshold or self.cooling(provider):
            return False
        await self.cool_down(provider, seconds, shared=shared, failures=count)
        return True

    async def cool_down(self, provider: str, seconds: float, *, shared: bool = True, **why: object) -> None:
        """Skip ``provider`` for ``seconds`` from now, here and (with Redis, when ``shared``) on every replica."""
        self._failures.pop(provider, None)
        self._until[provider] = time.time() + seconds
        log.warning("provider_cooled_down", provider=provider, seconds=seconds, shared=shared, **why)
        if self._client is not None and shared:
            try:
                await self._client.set(self._prefix + provider, self._until[provider], px=int(seconds * 1000))
            except (RedisError, OSError):
                log.warning("cooldown_not_shared", provider=provider)

    async def refresh(self, providers: Sequence[str]) -> None:
        """Learn the other replicas' cooldowns for ``providers``: one MGET of those not read in the last REFRESH_S."""
        if self._client is None:
            return
        now = time.monotonic()
        due = [provider for provider in providers if now - self._refreshed.get(provider, -REFRESH_S) >= REFRESH_S]
        if not due:
            return
        for provider in due:
            self._refreshed[provider] = now
        providers = due
        try:
            values = await self._client.mget([self._prefix + provider for provider in providers])
        except (RedisError, OSError):
            return  # the limiter reports Redis's state; cooldowns stay local meanwhile
        for provider, value in zip(providers, values, strict=True):
            if value is not None:
                self._until[provider] = max(self._until.get(provider, 0.0), float(value))
