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
from typing import Any

import structlog
from redis.exceptions import RedisError

from gateway.observability import metrics
from gateway.shutdown import cancel_and_wait

__all__ = ["EvictingRedis", "RedisHealth", "RedisProbe", "check_eviction_policy", "resume_cancel", "start_probe"]

log = structlog.get_logger("gateway.redis_health")

NOEVICTION = "noeviction"


class EvictingRedis(RuntimeError):
    """The configured Redis may evict keys, and ``redis.evicting_policy`` is ``refuse``: the gateway does not start."""


async def check_eviction_policy(client: Any, evicting_policy: str) -> str | None:
    """Read the Redis's ``maxmemory_policy`` (``INFO memory``, which managed Redis services allow where ``CONFIG``
    is often renamed away) and refuse one that evicts: jobs, job records, budgets and limits live there, and an
    evicted job answers 404 with nothing logged. With ``evicting_policy: warn`` it is logged at error level.

    Returns the policy read (None when Redis did not answer: ``redis.on_failure`` applies, and it is read
    again at the next start). Raises ``EvictingRedis`` to refuse.
    """
    try:
        info = await client.info("memory")
    except (RedisError, OSError) as exc:
        log.warning("redis_policy_unchecked", error=type(exc).__name__, detail="Redis did not answer at start")
        return None
    policy = str(info.get("maxmemory_policy", "") or "")
    if not policy or policy == NOEVICTION:
        return policy or None
    message = (
        f"the configured Redis runs maxmemory-policy {policy}: it would evict accepted jobs, job records, budgets"
        f" and limits without a trace. Run it with `maxmemory-policy noeviction` (and AOF persistence:"
        f" deploy/compose.yaml, deploy/k8s/redis.yaml), or set `redis.evicting_policy: warn` to serve anyway"
    )
    if evicting_policy == "refuse":
        log.error("redis_evicting", policy=policy, setting="redis.evicting_policy", detail=message)
        raise EvictingRedis(message)
    log.error("redis_evicting", policy=policy, setting="redis.evicting_policy: warn", detail=message)
    return policy


class RedisHealth:
    """The last known reachability of the configured Redis; every observer reports here."""

    def __init__(self, on_failure: str = "open") -> None:
        self.on_failure = on_failure
        self.up = True
        self.seen = False  # whether Redis has answered once in this process (/ready: gateway/readiness.py)
        metrics.REDIS_UP.set(1)

    def observe(self, up: bool, error: str = "") -> None:
        """Record one contact with Redis; a change from the last one is logged and shown in the gauge."""
        self.seen = self.seen or up
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
        self._stopping = False

    async def probe(self) -> bool:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            # A cancel that lands as redis-py's read timeout fires comes back as its TimeoutError (a
            # RedisError): the cancel is not swallowed with it, or the probe would ping on for good.
            resume_cancel()
            self.health.observe(False, type(exc).__name__)
            return False
        self.health.observe(True)
        return True

    async def _run(self) -> None:
        while not self._stopping:
            await self.probe()
            await asyncio.sleep(self.interval_s)

    def start(self) -> RedisProbe:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="redis-probe")
        return self

    async def aclose(self, timeout_s: float = 1.0) -> None:
        """Stop the probe; waits at most ``timeout_s`` for it, and never swallows the caller's own cancel."""
        task, self._task = self._task, None
        self._stopping = True
        if not await cancel_and_wait(task, timeout_s):
            log.error("redis_probe_not_stopped", detail=f"still in a Redis call after {timeout_s:g} s; left behind")


def resume_cancel() -> None:
    """Raise CancelledError when the current task was asked to stop and a library turned that into an error.

    ``asyncio.timeout`` (redis-py's reads, 3.11) raises TimeoutError when its deadline and a cancel
    from outside meet; the task's ``cancelling()`` count still says it was cancelled.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def start_probe(limiter: Any, client: Any, interval_s: float) -> RedisProbe | None:
    """The running probe of ``client`` (None without a Redis), reporting to the limiter's ``health``."""
    if client is None:
        return None
    health = getattr(limiter, "health", None) or RedisHealth()
    return RedisProbe(health, client, interval_s).start()
