"""Rate limits shared by every replica: GCRA in one atomic Redis script, or in memory.

GCRA (the generic cell rate algorithm) keeps one number per limit, the theoretical
arrival time: a limit of N per period admits a burst of N, then one every period/N. It
is exact (no window-boundary doubling as with fixed windows), O(1) in memory (unlike a
sliding log), and one script call checks and charges every limit of a request at once,
all or nothing, in one round trip. See docs/reliability.md.

The same check reserves a key's budget (``gateway.accounting``), so that a request is
admitted by its rate limits and its budget together or by neither; ``settle`` corrects
the reservation to the actual cost when the request ends. Each decision carries every
limit's state, for the ``RateLimit-Policy`` and ``RateLimit`` header fields
(draft-ietf-httpapi-ratelimit-headers; see docs/operations.md, "Rate-limit headers").
"""

from __future__ import annotations

import base64
import functools
import math
import time
from collections.abc import Sequence
from decimal import Decimal
from importlib import resources
from typing import Literal, NamedTuple, Protocol

import msgspec
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from gateway.admission.accounting import MICROS, BudgetCheck, Reservation
from gateway.admission.redis_script import DEFAULT_TIMEOUT_S, RedisScript
from gateway.redis_health import RedisHealth
from schemas.canonical import ErrorCode, GatewayError
from schemas.policy import RateLimit

__all__ = ["Decision", "LimitCheck", "Limiter", "MemoryLimiter", "PolicyState", "RedisLimiter", "limit_checks"]

log = structlog.get_logger("gateway.ratelimit")

GCRA_SCRIPT = resources.files("gateway.admission").joinpath("lua/gcra.lua").read_text(encoding="utf-8")
SETTLE_SCRIPT = resources.files("gateway.admission").joinpath("lua/settle.lua").read_text(encoding="utf-8")
# After Redis fails, how long to stay on the fallback before trying Redis again.
REDIS_RETRY_INTERVAL_S = 1.0


class LimitCheck(NamedTuple):
    """One limit a request must pass: ``cost`` units of ``limit`` per ``period_s`` under ``key``."""

    key: str
    limit: int
    period_s: float
    cost: int
    scope: str  # what it limits, for headers, logs and metrics: "key", "model", "provider"
    unit: Literal["requests", "images"] = "requests"
    partition: str = ""  # whose limit it is (the key's or the model's name): the headers' `pk`

    @property
    def policy(self) -> str:
        """The policy's name in the ``RateLimit-Policy`` and ``RateLimit`` fields: ``key-images``."""
        return f"{self.scope}-{self.unit}"

    @property
    def interval_ms(self) -> float:
        return self.period_s * 1000.0 / self.limit


def limit_checks(limits: RateLimit | None, scope: str, name: str, images: int, prefix: str) -> list[LimitCheck]:
    """The checks a request makes against one configured limit (requests, and images since n multiplies cost)."""
    if limits is None:
        return []
    checks = []
    if limits.requests is not None:
        key = f"{prefix}rl:{scope}:{name}:req"
        checks.append(LimitCheck(key, limits.requests, limits.period_s, 1, scope, "requests", name))
    if limits.images is not None:
        key = f"{prefix}rl:{scope}:{name}:img"
        checks.append(LimitCheck(key, limits.images, limits.period_s, images, scope, "images", name))
    return checks


class PolicyState(NamedTuple):
    """One limit after a decision: units left now, and seconds until it is full again."""

    check: LimitCheck
    remaining: int
    reset_s: float

    def policy_item(self) -> str:
        """``"key-images";q=100;w=60;qu="images";pk=:YWxpY2U=:`` (a Structured Fields list member)."""
        check = self.check
        return _policy_item(check.scope, check.unit, check.limit, check.period_s, check.partition)

    def limit_item(self) -> str:
        """``"key-images";r=42;t=30;pk=:YWxpY2U=:``."""
        check = self.check
        remaining, reset = max(0, self.remaining), max(0, math.ceil(self.reset_s))
        return f'"{check.scope}-{check.unit}";r={remaining};t={reset}{_partition(check.partition)}'


@functools.lru_cache(maxsize=4096)
def _policy_item(scope: str, unit: str, limit: int, period_s: float, partition: str) -> str:
    """A policy's ``RateLimit-Policy`` member: the same for every request under it, so made once."""
    window = max(1, math.ceil(period_s))
    return f'"{scope}-{unit}";q={limit};w={window};qu="{unit}"{_partition(partition)}'


@functools.lru_cache(maxsize=4096)
def _partition(partition: str) -> str:
    """The ``pk`` parameter: the name of the key or model the limit belongs to, as a Byte Sequence (never the key)."""
    if not partition:
        return ""
    return f";pk=:{base64.b64encode(partition.encode()).decode('ascii')}:"


_PERIOD_WORD = {"day": "daily", "month": "monthly"}


class Decision(msgspec.Struct, frozen=True):
    """The answer to a set of checks, reported by the limit that decided it.

    ``policies``: every rate limit's state, for the standard header fields. ``budget``:
    the budget that refused the request (``scope`` is then ``budget``), with
    ``budget_left`` micros left; ``reservation``: what an admitted request reserved.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float = 0.0
    scope: str = ""
    policies: tuple[PolicyState, ...] = ()
    budget: BudgetCheck | None = None
    budget_left: int = 0
    reservation: Reservation | None = None

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.limit:
            headers["X-RateLimit-Limit"] = str(self.limit)
            headers["X-RateLimit-Remaining"] = str(max(0, self.remaining))
            headers["X-RateLimit-Reset"] = str(math.ceil(self.reset_s))
            if not self.allowed and self.budget is None:
                headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        if self.policies:
            headers["RateLimit-Policy"] = ", ".join([state.policy_item() for state in self.policies])
            headers["RateLimit"] = ", ".join([state.limit_item() for state in self.policies])
        return headers

    def refusal(self) -> GatewayError:
        if self.budget is not None:
            check, currency = self.budget, self.budget.budget.currency
            left = Decimal(max(0, self.budget_left)) / MICROS
            return GatewayError(
                ErrorCode.INSUFFICIENT_QUOTA,
                f"the {_PERIOD_WORD[check.budget.period]} budget of this key is spent: {left:f} {currency} left of "
                f"{check.budget.amount:g} {currency}, this request needs up to {Decimal(check.cost) / MICROS:f} "
                f"{currency}; it renews in {max(1, math.ceil(self.retry_after_s))} s (UTC {check.budget.period})",
                headers=self.headers(),
            )
        return GatewayError(
            ErrorCode.RATE_LIMITED,
            f"rate limit exceeded ({self.scope}): retry in {max(1, math.ceil(self.retry_after_s))} s",
            retry_after=self.retry_after_s,
            headers=self.headers(),
        )


ALLOWED = Decision(allowed=True, limit=0, remaining=0, reset_s=0.0)


class Limiter(Protocol):
    """Rate limits and budgets, checked and charged together: in memory (``MemoryLimiter``) or in Redis
    (``RedisLimiter``). ``ahead_ms`` and ``spent_micros`` read what the limits and budgets hold without
    charging them (the console's status page)."""

    async def check(self, checks: Sequence[LimitCheck], budgets: Sequence[BudgetCheck] = ()) -> Decision: ...

    async def settle(self, reservation: Reservation, actual: int) -> list[int]:
        """Correct each reserved budget to ``actual`` micros; answers what each period has spent (-1: gone)."""
        ...

    async def ahead_ms(self, keys: Sequence[str]) -> list[float]:
        """How far each limit's theoretical arrival time is ahead of now, in ms (0: full again); charges nothing."""
        ...

    async def spent_micros(self, keys: Sequence[str]) -> list[int]:
        """What each budget counter holds (spent and reserved, micros; 0 when none); charges nothing."""
        ...

    async def aclose(self) -> None: ...


def _decision(
    checks: Sequence[LimitCheck],
    budgets: Sequence[BudgetCheck],
    where: Literal["redis", "memory"],
    reply: Sequence[int | float],
) -> Decision:
    """A decision from the script's reply layout (the in-memory limiter builds the same)."""
    admitted, index, remaining, retry_ms, reset_ms = map(int, reply[:5])
    index -= 1
    states = reply[5 : 5 + 2 * len(checks)]
    policies = tuple(
        PolicyState(check, int(states[2 * i]), states[2 * i + 1] / 1000.0) for i, check in enumerate(checks)
    )
    if index < len(checks) and checks:
        check = checks[index]
        return Decision(
            allowed=bool(admitted),
            limit=check.limit,
            remaining=remaining,
            reset_s=reset_ms / 1000.0,
            retry_after_s=retry_ms / 1000.0,
            scope=check.scope,
            policies=policies,
            reservation=Reservation(tuple(budgets), where) if admitted and budgets else None,
        )
    if admitted:  # budgets only
        return Decision(True, 0, 0, 0.0, reservation=Reservation(tuple(budgets), where))
    tight = min(policies, key=lambda state: state.remaining, default=None)
    return Decision(
        allowed=False,
        limit=tight.check.limit if tight else 0,
        remaining=tight.remaining if tight else 0,
        reset_s=tight.reset_s if tight else 0.0,
        retry_after_s=retry_ms / 1000.0,
        scope="budget",
        policies=policies,
        budget=budgets[index - len(checks)],
        budget_left=remaining,
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
    """The same GCRA and budgets, for one process: the default without Redis, and the fail-open fallback."""

    def __init__(self) -> None:
        self._tats: dict[str, float] = {}
        self._spent: dict[str, tuple[int, int]] = {}  # budget key → (micros spent and reserved, expires at epoch ms)
        self._next_sweep = 0.0

    async def check(self, checks: Sequence[LimitCheck], budgets: Sequence[BudgetCheck] = ()) -> Decision:
        if not checks and not budgets:
            return ALLOWED
        _refuse_impossible(checks)
        now = time.monotonic() * 1000.0
        wall_ms = int(time.time() * 1000)
        self._sweep(now, wall_ms)
        new_tats: list[float] = []
        states: list[float] = []
        unchanged: list[float] = []  # the states if nothing is charged
        refused: list[float] | None = None
        decide, least, reset = 0, math.inf, 0.0
        for index, check in enumerate(checks):
            interval, burst = check.interval_ms, check.interval_ms * check.limit
            # Times relative to now, so that a full bucket compares exactly (no rounding of large clocks).
            ahead = max(self._tats.get(check.key, now) - now, 0.0)
            new_ahead = ahead + interval * check.cost
            if new_ahead > burst + 0.001:  # the same 1 µs of slack as the Redis script
                if refused is None:
                    refused = [0, index + 1, math.floor((burst - ahead) / interval), new_ahead - burst, ahead]
                new_ahead = ahead
            new_tats.append(now + new_ahead)
            remaining = math.floor((burst - new_ahead) / interval)
            states += [remaining, new_ahead]
            unchanged += [math.floor((burst - ahead) / interval), ahead]
            if remaining < least:
                decide, least, reset = index, remaining, new_ahead
        spent = [self._spent.get(budget.key, (0, 0))[0] for budget in budgets]
        for number, budget in enumerate(budgets):
            if refused is None and spent[number] + budget.cost > budget.limit:
                renew = budget.period_end_ms - wall_ms
                refused = [0, len(checks) + number + 1, budget.limit - spent[number], renew, renew]
        if refused is not None:
            return _decision(checks, budgets, "memory", [*refused, *unchanged])
        for check, new_tat in zip(checks, new_tats, strict=True):
            self._tats[check.key] = new_tat
        for number, budget in enumerate(budgets):
            self._spent[budget.key] = (spent[number] + budget.cost, budget.expire_at_ms)
        least_units = 0 if least == math.inf else int(least)
        return _decision(checks, budgets, "memory", [1, decide + 1, least_units, 0, reset, *states])

    async def ahead_ms(self, keys: Sequence[str]) -> list[float]:
        """How far each limit's theoretical arrival time is ahead of now, in ms (0: full again); charges nothing."""
        now = time.monotonic() * 1000.0
        return [max(self._tats.get(key, now) - now, 0.0) for key in keys]

    async def spent_micros(self, keys: Sequence[str]) -> list[int]:
        """What each budget counter holds (spent and reserved, micros; 0 when none); charges nothing."""
        return [self._spent.get(key, (0, 0))[0] for key in keys]

    async def settle(self, reservation: Reservation, actual: int) -> list[int]:
        spent = []
        for budget in reservation.checks:
            if budget.key not in self._spent:
                spent.append(-1)
                continue
            total = self._spent[budget.key][0] + actual - budget.cost
            self._spent[budget.key] = (total, budget.expire_at_ms)
            spent.append(total)
        return spent

    def _sweep(self, now: float, wall_ms: int) -> None:
        """Forget limits that are full again and budgets whose period is over, at most once a minute."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60_000.0
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
        self._spent = {key: entry for key, entry in self._spent.items() if entry[1] > wall_ms}

    async def aclose(self) -> None:
        """Nothing to release."""


class RedisLimiter:
    """GCRA in Redis, shared by every replica; when Redis is away, ``on_failure`` decides.

    The script runs on its own pipelined connection to ``url`` (the hot path, see
    ``gateway/admission/redis_script.py``); ``client``, redis-py's, reads the console's figures. The
    client is shared (cooldowns, dedup, ``/ready``) and belongs to whoever made it (the app's lifespan):
    ``aclose`` closes the script connections only.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        url: str,
        *,
        on_failure: Literal["open", "closed"],
        budgets_on_failure: Literal["open", "closed"] = "closed",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        fallback: MemoryLimiter | None = None,
        health: RedisHealth | None = None,
    ) -> None:
        self.client = client
        self.on_failure = on_failure
        self.budgets_on_failure = budgets_on_failure
        self.fallback = fallback or MemoryLimiter()
        self._script = RedisScript(GCRA_SCRIPT, url, timeout_s=timeout_s)
        self._settle = RedisScript(SETTLE_SCRIPT, url, timeout_s=timeout_s)
        self._down_until = 0.0
        self.health = health or RedisHealth(on_failure)  # shared with the probe (gateway/redis_health.py)

    @property
    def redis_up(self) -> bool:
        return self.health.up

    async def check(self, checks: Sequence[LimitCheck], budgets: Sequence[BudgetCheck] = ()) -> Decision:
        if not checks and not budgets:
            return ALLOWED
        _refuse_impossible(checks)
        if time.monotonic() < self._down_until:
            return await self._without_redis(checks, budgets)
        args: list[float | int] = [len(checks)]
        for check in checks:
            args += [check.interval_ms, check.interval_ms * check.limit, check.cost]
        for budget in budgets:
            args += [budget.limit, budget.cost, budget.period_end_ms, budget.expire_at_ms]
        keys = [check.key for check in checks] + [budget.key for budget in budgets]
        try:
            reply = await self._script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._down_until = time.monotonic() + REDIS_RETRY_INTERVAL_S
            self.health.observe(False, type(exc).__name__)
            return await self._without_redis(checks, budgets)
        self.health.observe(True)
        return _decision(checks, budgets, "redis", reply)

    async def settle(self, reservation: Reservation, actual: int) -> list[int]:
        """Settled where it was reserved; a Redis away keeps the reservation as the charge (logged)."""
        if reservation.where == "memory":
            return await self.fallback.settle(reservation, actual)
        spent = []
        for budget in reservation.checks:
            try:
                spent.append(int(await self._settle(keys=[budget.key], args=[actual - budget.cost])))
            except (RedisError, OSError) as exc:
                log.warning("budget_settle_failed", budget=budget.name, error=type(exc).__name__)
                spent.append(-1)
        return spent

    async def _without_redis(self, checks: Sequence[LimitCheck], budgets: Sequence[BudgetCheck]) -> Decision:
        if self.on_failure == "closed":
            raise GatewayError(ErrorCode.OVERLOADED, "rate limiter unavailable; try again shortly", retry_after=1.0)
        if budgets and self.budgets_on_failure == "closed":
            # What Redis had spent is not known here: admitting on this process's count could pass the budget.
            raise GatewayError(ErrorCode.OVERLOADED, "budget ledger unavailable; try again shortly", retry_after=1.0)
        return await self.fallback.check(checks, budgets)

    async def ahead_ms(self, keys: Sequence[str]) -> list[float]:
        """``MemoryLimiter.ahead_ms`` read from Redis (by Redis's clock, as the script charges); the fallback's
        while Redis is away."""
        if not keys:
            return []
        if time.monotonic() < self._down_until:
            return await self.fallback.ahead_ms(keys)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.time()
                pipe.mget(list(keys))
                (seconds, micros), values = await pipe.execute()
        except (RedisError, OSError):
            return await self.fallback.ahead_ms(keys)
        now = seconds * 1000.0 + micros / 1000.0
        return [max(float(value) - now, 0.0) if value is not None else 0.0 for value in values]

    async def spent_micros(self, keys: Sequence[str]) -> list[int]:
        """``MemoryLimiter.spent_micros`` read from Redis; the fallback's while Redis is away."""
        if not keys:
            return []
        if time.monotonic() < self._down_until:
            return await self.fallback.spent_micros(keys)
        try:
            values = await self.client.mget(list(keys))
        except (RedisError, OSError):
            return await self.fallback.spent_micros(keys)
        return [int(float(value)) if value is not None else 0 for value in values]

    async def aclose(self) -> None:
        await self._script.aclose()
        await self._settle.aclose()
