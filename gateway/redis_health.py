"""Whether the configured Redis answers, whatever the gateway uses it for.

The rate limiter notices a lost Redis on its next call, but a gateway with no limits
(Redis only for cooldowns) would call it rarely or never, so ``image_gateway_redis_up``
would stay 1 and the Redis-down alert could not fire. A probe task pings Redis every
``redis.probe_interval_s`` from the app's lifespan; the probe and the limiter report to
one ``RedisHealth``, which moves the gauge and logs each transition once
(``redis_unavailable`` at error level, then ``redis_recovered``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from redis.exceptions import RedisError

from gateway import metrics

__all__ = ["RedisHealth", "RedisProbe", "start_probe"]

log = structlog.get_logger("gateway.redis_health")


class RedisHealth:
    """The last known reachability of the configured Redis; every observer reports here."""

    def __init__(self, on_failure: str = "open") -> None:
        self.on_failure = on_failure
        self.up = True
        metrics.REDIS_UP.set(1)

    def observe(self, up: bool, error: str = "") -> None:
        """Record one contact with Redis; a change from the last one is logged and shown in the gauge."""
        if up == self.up:
            return
        self.up = up
        metrics.REDIS_UP.set(1 if up else 0)
        if up:
            log.warning("redis_recovered")
        else:
            log.error("redis_unavailable", policy=self.on_failure, error=error)


class RedisProbe:
    """A task that pings Redis every ``interval_s`` and reports to ``health``."""

    def __init__(self, health: RedisHealth, client: Any, interval_s: float) -> None:
        self.health = health
        self.client = client
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def probe(self) -> bool:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            self.health.observe(False, type(exc).__name__)
            return False
        self.health.observe(True)
        return True

    async def _run(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self.interval_s)

    def start(self) -> RedisProbe:
        self._task = asyncio.create_task(self._run(), name="redis-probe")
        return self

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def start_probe(limiter: Any, client: Any, interval_s: float) -> RedisProbe | None:
    """The running probe of ``client`` (None without a Redis), reporting to the limiter's ``health``."""
    if client is None:
        return None
    health = getattr(limiter, "health", None) or RedisHealth()
    return RedisProbe(health, client, interval_s).start()
