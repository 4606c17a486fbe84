"""Rate limits shared by every replica: GCRA in one atomic Redis script, or in memory.

GCRA (the generic cell rate algorithm) keeps one number per limit, the theoretical
arrival time: a limit of N per period admits a burst of N, then one every period/N. It
is exact (no window-boundary doubling as with fixed windows), O(1) in memory (unlike a
sliding log), and one script call checks and charges every limit of a request at once,
all or nothing, in one round trip. See docs/reliability.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from importlib import resources
from typing import Literal, NamedTuple, Protocol

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.redis_health import RedisHealth
from gateway.redis_script import DEFAULT_TIMEOUT_S, RedisScript
from schemas.canonical import ErrorCode, GatewayError
from schemas.policy import RateLimit

__all__ = ["Decision", "LimitCheck", "Limiter", "MemoryLimiter", "RedisLimiter", "limit_checks"]


GCRA_SCRIPT = resources.files("gateway").joinpath("lua/gcra.lua").read_text(encoding="utf-8")
# After Redis fails, how long to stay on the fallback before trying Redis again.
REDIS_RETRY_INTERVAL_S = 1.0


class LimitCheck(NamedTuple):
    """One limit a request must pass: ``cost`` units of ``limit`` per ``period_s`` under ``key``."""

    key: str
    limit: int
    period_s: float
    cost: int
    scope: str  # what it limits, for headers, logs and metrics: "key", "model", "provider"

    @property
    def interval_ms(self) -> float:
        return self.period_s * 1000.0 / self.limit


def limit_checks(limits: RateLimit | None, scope: str, name: str, images: int, prefix: str) -> list[LimitCheck]:
    """The checks a request makes against one configured limit (requests, and images since n multiplies cost)."""
    if limits is None:
        return []
    checks = []
    if limits.requests is not None:
        checks.append(LimitCheck(f"{prefix}rl:{scope}:{name}:req", limits.requests, limits.period_s, 1, scope))
    if limits.images is not None:
        checks.append(LimitCheck(f"{prefix}rl:{scope}:{name}:img", limits.images, limits.period_s, images, scope))
    return checks


class Decision(msgspec.Struct, frozen=True):
    """The answer to a set of checks, reported by the limit that decided it."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float = 0.0
    scope: str = ""

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers

    def refusal(self) -> GatewayError:
        return GatewayError(
            ErrorCode.RATE_LIMITED,
            f"rate limit exceeded ({self.scope}): retry in {max(1, math.ceil(self.retry_after_s))} s",
            retry_after=self.retry_after_s,
            headers=self.headers(),
        )


ALLOWED = Decision(allowed=True, limit=0, remaining=0, reset_s=0.0)


class Limiter(Protocol):
    async def check(self, checks: Sequence[LimitCheck]) -> Decision: ...

    async def aclose(self) -> None: ...


def _decision(
    checks: Sequence[LimitCheck], admitted: int, index: int, remaining: int, retry_ms: float, reset_ms: float
) -> Decision:
    check = checks[index]
    return Decision(
        allowed=bool(admitted),
        limit=check.limit,
        remaining=remaining,
        reset_s=reset_ms / 1000.0,
        retry_after_s=retry_ms / 1000.0,
        scope=check.scope,
    )


def _refuse_impossible(checks: Sequence[LimitCheck]) -> None:
    """A request costing more than a whole limit would wait forever: say so instead of 'retry later'."""
    for check in checks:
        if check.cost > check.limit:
            raise GatewayError(
                ErrorCode.INVALID_REQUEST,
                f"asks for {check.cost} units where the {check.scope} limit allows {check.limit} per "
                f"{check.period_s:g} s",
                param="n",
            )


class MemoryLimiter:
    """The same GCRA, for one process: the default without Redis, and the fail-open fallback."""

    def __init__(self) -> None:
        self._tats: dict[str, float] = {}
        self._next_sweep = 0.0

    async def check(self, checks: Sequence[LimitCheck]) -> Decision:
        if not checks:
            return ALLOWED
        _refuse_impossible(checks)
        now = time.monotonic() * 1000.0
        self._sweep(now)
        new_tats: list[float] = []
        decide, least, reset = 0, math.inf, 0.0
        for index, check in enumerate(checks):
            interval, burst = check.interval_ms, check.interval_ms * check.limit
            # Times relative to now, so that a full bucket compares exactly (no rounding of large clocks).
            ahead = max(self._tats.get(check.key, now) - now, 0.0)
            new_ahead = ahead + interval * check.cost
            if new_ahead > burst + 0.001:  # the same 1 µs of slack as the Redis script
                remaining = math.floor((burst - ahead) / interval)
                return _decision(checks, 0, index, remaining, new_ahead - burst, ahead)
            new_tats.append(now + new_ahead)
            remaining = math.floor((burst - new_ahead) / interval)
            if remaining < least:
                decide, least, reset = index, remaining, new_ahead
        for check, new_tat in zip(checks, new_tats, strict=True):
            self._tats[check.key] = new_tat
        return _decision(checks, 1, decide, int(least), 0.0, reset)

    def _sweep(self, now: float) -> None:
        """Forget limits that are full again, at most once a minute."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60_000.0
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}

    async def aclose(self) -> None:
        """Nothing to release."""


class RedisLimiter:
    """GCRA in Redis, shared by every replica; when Redis is away, ``on_failure`` decides.

    The script runs on its own pipelined connection to ``url`` (the hot path, see
    ``gateway/redis_script.py``); ``client``, redis-py's, serves cooldowns and ``/ready``.
    ``aclose`` closes both.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        url: str,
        *,
        on_failure: Literal["open", "closed"],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        fallback: MemoryLimiter | None = None,
        health: RedisHealth | None = None,
    ) -> None:
        self.client = client
        self.on_failure = on_failure
        self.fallback = fallback or MemoryLimiter()
        self._script = RedisScript(GCRA_SCRIPT, url, timeout_s=timeout_s)
        self._down_until = 0.0
        self.health = health or RedisHealth(on_failure)  # shared with the probe (gateway/redis_health.py)

    @property
    def redis_up(self) -> bool:
        return self.health.up

    async def check(self, checks: Sequence[LimitCheck]) -> Decision:
        if not checks:
            return ALLOWED
        _refuse_impossible(checks)
        if time.monotonic() < self._down_until:
            return await self._without_redis(checks)
        args: list[float | int] = []
        for check in checks:
            args += [check.interval_ms, check.interval_ms * check.limit, check.cost]
        try:
            reply = await self._script(keys=[check.key for check in checks], args=args)
        except (RedisError, OSError) as exc:
            self._down_until = time.monotonic() + REDIS_RETRY_INTERVAL_S
            self.health.observe(False, type(exc).__name__)
            return await self._without_redis(checks)
        self.health.observe(True)
        admitted, index, remaining, retry_ms, reset_ms = (int(value) for value in reply)
        return _decision(checks, admitted, index - 1, remaining, retry_ms, reset_ms)

    async def _without_redis(self, checks: Sequence[LimitCheck]) -> Decision:
        if self.on_failure == "closed":
            raise GatewayError(ErrorCode.OVERLOADED, "rate limiter unavailable; try again shortly", retry_after=1.0)
        return await self.fallback.check(checks)

    async def aclose(self) -> None:
        await self._script.aclose()
        await self.client.aclose()
