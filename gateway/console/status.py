"""What the console's status page shows, as plain JSON: one snapshot of this gateway process.

Providers (up, or cooling down until when, with their recent error rate and latency from
``gateway/observability/recent.py``), models and their targets in order, rate-limit use per key (and per
model and provider, read from the limiter through its protocol without charging it), each key's budget
spent in its period, the backends of the gateway's own as their adapters describe them (the local engine's
counters and its models' speed options, images/s between snapshots), and jobs, which say
``available: false`` with the reason until they exist.

The status stream takes a snapshot at most once per ``MIN_INTERVAL_S`` and shares it with every
open page, so any number of them cost one snapshot a second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections import deque
from decimal import Decimal
from typing import Any, Literal

import msgspec

from gateway.admission.accounting import MICROS, Cost, budget_check
from gateway.admission.ratelimit import LimitCheck, limit_checks
from gateway.config import provider_kind
from gateway.state import Gateway
from schemas.policy import RateLimit

__all__ = [
    "MIN_INTERVAL_S",
    "BudgetsAnswer",
    "JobsStatus",
    "LimitsAnswer",
    "LocalBackendStatus",
    "ModelsAnswer",
    "NotAvailable",
    "ProviderStatus",
    "RecentRequest",
    "SpeedOptionsStatus",
    "StatusAnswer",
    "StatusSampler",
]

MIN_INTERVAL_S = 1.0
RATE_WINDOW_S = 10.0  # images/s of the local backend: over the snapshots of the last this many seconds
NOT_YET = "not available in this gateway yet"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class StatusSampler:
    """Builds the snapshot; keeps what images/s needs between two of them."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._lock = asyncio.Lock()
        self._last: dict[str, Any] | None = None
        self._taken = -math.inf
        self._images: dict[str, deque[tuple[float, int]]] = {}

    async def snapshot(self) -> dict[str, Any]:
        """The status, at most ``MIN_INTERVAL_S`` old: what every open stream shares."""
        async with self._lock:
            if self._last is None or time.monotonic() - self._taken >= MIN_INTERVAL_S:
                self._last = await self.take()
                self._taken = time.monotonic()
            return self._last

    async def take(self) -> dict[str, Any]:
        """The status now (the stream shares ``snapshot`` instead)."""
        now = time.time()
        return {
            "time": _iso(now),
            "providers": await self.providers(),
            "models": self.models(),
            "limits": await self.limits(),
            "local": await self.local(),
            "jobs": await self.jobs(),
            "budgets": await self.budgets(),
        }

    async def jobs(self) -> dict[str, Any]:
        jobs = self.gateway.jobs
        if jobs is None:
            return {"available": False, "reason": "async jobs have not started"}
        try:
            return await jobs.summary()
        except Exception as exc:  # an unreachable job store: say so, the rest of the status still shows
            return {"available": False, "reason": f"the job store did not answer ({type(exc).__name__})"}

    async def providers(self) -> list[dict[str, Any]]:
        gateway = self.gateway
        names = list(gateway.config.providers)
        await gateway.cooldowns.refresh(names)  # other replicas' cooldowns too (with Redis)
        found = []
        for name, provider in gateway.config.providers.items():
            remaining = gateway.cooldowns.remaining(name)
            found.append(
                {
                    "name": name,
                    "kind": provider_kind(provider),
                    "state": "cooling_down" if remaining > 0 else "up",
                    "cooling_until": _iso(time.time() + remaining) if remaining > 0 else None,
                    "cooling_remaining_s": round(remaining, 1),
                    "recent": gateway.router.recent.summary(name),
                }
            )
        return found

    def models(self) -> list[dict[str, Any]]:
        return [
            {
                "name": model.name,
                "aliases": list(model.aliases),
                "targets": [{"provider": target.provider, "model": target.model} for target in model.targets],
            }
            for model in self.gateway.config.models
        ]

    async def limits(self) -> dict[str, Any]:
        """Use of every configured limit: each key's (or the default), each model's, each provider's."""
        config = self.gateway.config
        entries: list[tuple[str, str, RateLimit | None]] = [
            ("key", key.name, key.limits or config.auth.default_limits) for key in config.auth.keys
        ]
        entries += [("model", model.name, model.limits) for model in config.models]
        entries += [("provider", name, provider.limits) for name, provider in config.providers.items()]
        checks: list[tuple[str, str, LimitCheck]] = []
        for scope, name, limits in entries:
            checks += [(scope, name, check) for check in limit_checks(limits, scope, name, 1, config.redis.key_prefix)]
        aheads = await self.gateway.admission.limiter.ahead_ms([check.key for _, _, check in checks])
        items = []
        for (scope, name, check), ahead in zip(checks, aheads, strict=True):
            # Units not yet drained back: what this period has used of the limit.
            used = min(check.limit, math.ceil(round(ahead / check.interval_ms, 6)))
            items.append(
                {
                    "scope": scope,
                    "name": name,
                    "unit": "requests" if check.key.endswith(":req") else "images",
                    "used": used,
                    "limit": check.limit,
                    "period_s": check.period_s,
                }
            )
        return {
            "auth_open": not config.auth.keys,
            "keys": [{"name": key.name, "revoked": key.revoked, "models": key.models} for key in config.auth.keys],
            "items": items,
        }

    async def budgets(self) -> dict[str, Any]:
        """Each key's budget in its current period: what it has spent (and reserved for requests under way)."""
        config = self.gateway.config
        now = dt.datetime.now(dt.UTC)
        checks = [
            found
            for key in config.auth.keys
            if key.budget is not None
            and (found := budget_check(key, Cost(Decimal(0), key.budget.currency), config.redis.key_prefix, now))
        ]
        spent = await self.gateway.admission.limiter.spent_micros([check.key for check in checks])
        items = [
            {
                "key": check.name,
                "period": check.budget.period,
                "currency": check.budget.currency,
                "amount": check.limit / MICROS,
                "spent": used / MICROS,
                "renews_at": _iso(check.period_end_ms / 1000),
            }
            for check, used in zip(checks, spent, strict=True)
        ]
        return {"available": True, "reason": None, "items": items}

    async def local(self) -> list[dict[str, Any]]:
        """Each backend of the gateway's own, as its adapter tells it (``Adapter.backend_status``): the local
        provider's engine or workers; every HTTP provider tells nothing beyond its calls."""
        found = []
        for name, adapter in self.gateway.adapters.items():
            state = await adapter.backend_status()
            if state is None:
                continue
            if "images_generated" in state:
                state["images_per_s"] = self._rate(name, state["images_generated"])
            found.append({"provider": name, **state})
        return found

    def _rate(self, provider: str, images: int) -> float | None:
        """Images per second over the last ``RATE_WINDOW_S`` of snapshots; None before there are two."""
        now = time.monotonic()
        history = self._images.setdefault(provider, deque())
        history.append((now, images))
        while len(history) > 2 and now - history[1][0] >= RATE_WINDOW_S:
            history.popleft()
        first_time, first_images = history[0]
        if now - first_time <= 0:
            return None
        return round((images - first_images) / (now - first_time), 3)


# --- the shapes, for the OpenAPI document (the admin API answers these) ---


class RecentSummary(msgspec.Struct):
    """This process's calls to a provider in the last ``window_s`` seconds (latencies in ms; null: no calls)."""

    window_s: float
    calls: int
    errors: int
    error_rate: float | None
    p50_ms: float | None
    p95_ms: float | None


class ProviderStatus(msgspec.Struct):
    """A provider: ``up``, or ``cooling_down`` until ``cooling_until`` (ISO 8601 UTC)."""

    name: str
    kind: str
    state: Literal["up", "cooling_down"]
    cooling_until: str | None
    cooling_remaining_s: float
    recent: RecentSummary


class TargetStatus(msgspec.Struct):
    provider: str
    model: str


class ModelStatus(msgspec.Struct):
    """A model clients may ask for, its aliases, and its targets in the order they are tried."""

    name: str
    aliases: list[str]
    targets: list[TargetStatus]


class ModelsAnswer(msgspec.Struct):
    auth_open: bool  # whether the dialect routes admit clients without a key
    models: list[ModelStatus]


class KeyInfo(msgspec.Struct):
    name: str
    revoked: bool
    models: list[str] | None


class LimitUse(msgspec.Struct):
    """What a configured rate limit has used: ``used`` of ``limit`` units per ``period_s`` (null: unknown)."""

    scope: Literal["key", "model", "provider"]
    name: str
    unit: Literal["requests", "images"]
    used: int | None
    limit: int
    period_s: float


class LimitsAnswer(msgspec.Struct):
    auth_open: bool
    keys: list[KeyInfo]
    items: list[LimitUse]


class SpeedOptionsStatus(msgspec.Struct):
    """What a loaded model runs with (docs/local_backend.md, "Speed options"): its ``dtype``, ``quantize`` (``fp8``,
    ``fp8_weight_only``: the denoiser's linear layers in float8; null: none), a step ``cache``
    (its kind and fields: ``first_block:0.05``, ``mag:threshold=0.06,...``; null: none), ``compile`` (its mode,
    ``whole:`` before it when the whole denoiser is compiled; null: eager), ``fuse_qkv``, ``channels_last``."""

    dtype: str
    quantize: str | None = None
    cache: str | None = None
    compile: str | None = None
    fuse_qkv: bool = False
    channels_last: bool = False


class LocalBackendStatus(msgspec.Struct, omit_defaults=True):
    """A local provider. In process: its engine's counters (``batch_sizes``: images per pipeline call → calls;
    ``models``: each model's ``ready`` or why not); on remote workers: each worker URL's health. ``options``:
    each loaded model's speed options (the workers' as they report them)."""

    provider: str
    remote: bool
    started: bool | None = None
    device: str | None = None
    queue_depth: int | None = None
    running: int | None = None
    batches: int | None = None
    batch_sizes: dict[str, int] | None = None
    images_generated: int | None = None
    images_per_s: float | None = None
    requests_refused: int | None = None
    requests_dropped: int | None = None
    models: dict[str, str] | None = None
    options: dict[str, SpeedOptionsStatus] | None = None
    workers: dict[str, bool] | None = None


class NotAvailable(msgspec.Struct):
    """A part of the status this gateway does not have yet."""

    available: bool
    reason: str


class JobsStatus(msgspec.Struct):
    """Async jobs: queued or running in the queue (every replica's with Redis), running in this process,
    and how many entered each status in this process since it started; ``available: false`` with the
    reason when the job store does not answer."""

    available: bool
    reason: str | None = None
    store: str | None = None
    waiting: int | None = None
    running_here: int | None = None
    by_status_here: dict[str, int] | None = None


class BudgetUse(msgspec.Struct):
    """A key's budget (``auth.keys[].budget``) in its current UTC period: ``spent`` of ``amount``
    (spent and reserved for requests under way; null: unknown), until ``renews_at``."""

    key: str
    period: Literal["day", "month"]
    currency: str
    amount: float
    spent: float | None
    renews_at: str


class BudgetsAnswer(msgspec.Struct):
    available: bool
    reason: str | None
    items: list[BudgetUse]


class RecentRequest(msgspec.Struct):
    """One recent dialect request (``/admin/api/requests/{id}``): ``cost`` as ``X-Gateway-Cost`` writes it,
    null when unpriced or failed; ``energy_kwh`` null when unknown."""

    dialect: str
    model: str
    provider: str
    outcome: str
    images: int
    attempts: int
    cost: str | None
    energy_kwh: float | None
    energy_method: str | None
    duration_ms: float


class StatusAnswer(msgspec.Struct):
    """Everything the status page shows."""

    access: Literal["admin_key", "loopback"]
    time: str
    providers: list[ProviderStatus]
    models: list[ModelStatus]
    limits: LimitsAnswer
    local: list[LocalBackendStatus]
    jobs: JobsStatus
    budgets: BudgetsAnswer
