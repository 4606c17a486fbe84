"""What each image cost: prices per target, the cost of a request, and budgets per key.

A target's ``price`` (``PriceConfig``) gives one image's price as
``(per_image + per_megapixel x megapixels + per_step x steps) x quality factor`` in its
``currency``; a request's cost is the sum over the images actually returned, at their
actual size. Amounts are computed exactly (``Decimal`` from the configured numbers) and
accounted in millionths of the currency unit (``micros``, rounded half up), so that a
budget is spent to the cent across replicas with integer arithmetic in Redis. The
``X-Gateway-Cost`` header shows 4 decimals, rounded half up.

A key's ``budget`` (``BudgetConfig``) is an amount per calendar UTC day or month. Admission
reserves n x the estimated price of one image at the most expensive priced target of the
model, in the same atomic check as the rate limits (``gateway.ratelimit``); the request's
end settles the actual cost (a failed request gives the whole reservation back). A model
with no priced target is admitted without a reservation and counted as unpriced.
See docs/operations.md, "Pricing" and "Budgets".
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Literal, NamedTuple

from gateway.config.fields import BudgetConfig, PriceConfig
from schemas.canonical import ImageRequest, ImageResult

if TYPE_CHECKING:
    from gateway.config import InboundKey, ModelConfig, TargetConfig

__all__ = [
    "BudgetCheck",
    "BudgetConfig",
    "Cost",
    "PriceConfig",
    "budget_check",
    "cost_of",
    "estimate",
    "image_price",
    "to_micros",
]

MICROS = 1_000_000  # accounting unit: a millionth of the currency unit

# A budget's counter lives this long past its period, so that a request admitted just
# before the period ends still finds its reservation to settle.
SETTLE_GRACE_S = 3600

_MEGAPIXEL = Decimal(1_000_000)
_HEADER_PLACES = Decimal("0.0001")
_MICRO_PLACES = Decimal("0.000001")


def _decimal(value: float) -> Decimal:
    """The number as written in the config (0.1 is 0.1, not its binary approximation)."""
    return Decimal(repr(value))


def to_micros(amount: Decimal) -> int:
    return int((amount * MICROS).to_integral_value(rounding=ROUND_HALF_UP))


class Cost(NamedTuple):
    """An exact amount of money."""

    amount: Decimal
    currency: str

    @property
    def micros(self) -> int:
        return to_micros(self.amount)

    def header(self) -> str:
        """``0.0120 USD``: 4 decimals, rounded half up."""
        return f"{self.amount.quantize(_HEADER_PLACES, rounding=ROUND_HALF_UP)} {self.currency}"

    def __str__(self) -> str:
        return f"{self.amount.quantize(_MICRO_PLACES, rounding=ROUND_HALF_UP)} {self.currency}"


def image_price(
    price: PriceConfig, width: int | None, height: int | None, steps: int | None, quality: str | None
) -> Decimal:
    """The price of one image of that size, steps and quality (never below zero, whatever a client sends)."""
    if width is not None and height is not None and width > 0 and height > 0:
        megapixels = Decimal(width * height) / _MEGAPIXEL
    else:
        megapixels = _decimal(price.default_megapixels)
    base = (
        _decimal(price.per_image)
        + _decimal(price.per_megapixel) * megapixels
        + _decimal(price.per_step) * max(0, steps if steps is not None else price.default_steps)
    )
    factor = _decimal(price.quality[quality]) if quality is not None and quality in price.quality else Decimal(1)
    return base * factor


def estimate(model: ModelConfig, request: ImageRequest) -> Cost | None:
    """n x one image's price at the most expensive priced target of ``model`` (None: no target is priced).

    The most expensive, not the first: whichever target ends up serving (fallbacks
    included), the reservation covers it, so a budget is never overrun.
    """
    best: Cost | None = None
    for target in model.targets:
        if target.price is None:
            continue
        one = image_price(target.price, request.width, request.height, request.steps, request.quality)
        if best is None or one * request.n > best.amount:
            best = Cost(one * request.n, target.price.currency)
    return best


def served_target(model: ModelConfig, provider: str) -> TargetConfig | None:
    """The target that answered: the first of the model's targets on that provider."""
    return next((target for target in model.targets if target.provider == provider), None)


def cost_of(model: ModelConfig, request: ImageRequest, result: ImageResult) -> Cost | None:
    """What the answer cost: each returned image at its actual size; None when the serving target is unpriced."""
    target = served_target(model, result.provider)
    if target is None or target.price is None:
        return None
    total = sum(
        (
            image_price(
                target.price,
                image.width or request.width,
                image.height or request.height,
                request.steps,
                request.quality,
            )
            for image in result.images
        ),
        Decimal(0),
    )
    return Cost(total, target.price.currency)


# --- budgets ---


class BudgetCheck(NamedTuple):
    """Reserve ``cost`` micros of a key's budget of ``limit`` micros for the period stored under ``key``."""

    key: str
    limit: int
    cost: int
    period_end_ms: int  # when the period ends (epoch ms, UTC)
    expire_at_ms: int  # when its counter is dropped: the period's end plus the settle grace
    name: str  # the inbound key's name (never the key)
    budget: BudgetConfig


def period_bounds(period: Literal["day", "month"], now: dt.datetime) -> tuple[str, dt.datetime]:
    """The period ``now`` falls in: its label (``2026-11-24`` or ``2026-11``) and when it ends (UTC)."""
    now = now.astimezone(dt.UTC)
    if period == "day":
        start = dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC)
        return start.strftime("%Y-%m-%d"), start + dt.timedelta(days=1)
    days = calendar.monthrange(now.year, now.month)[1]
    start = dt.datetime(now.year, now.month, 1, tzinfo=dt.UTC)
    return start.strftime("%Y-%m"), start + dt.timedelta(days=days)


def budget_check(key: InboundKey, cost: Cost, prefix: str, now: dt.datetime | None = None) -> BudgetCheck | None:
    """The check reserving ``cost`` against the key's budget in this period (None: the key has no budget)."""
    budget = key.budget
    if budget is None:
        return None
    label, end = period_bounds(budget.period, now or dt.datetime.now(dt.UTC))
    end_ms = int(end.timestamp() * 1000)
    return BudgetCheck(
        key=f"{prefix}budget:{key.name}:{label}",
        limit=to_micros(_decimal(budget.amount)),
        cost=cost.micros,
        period_end_ms=end_ms,
        expire_at_ms=end_ms + SETTLE_GRACE_S * 1000,
        name=key.name,
        budget=budget,
    )


class Reservation(NamedTuple):
    """Budget reserved at admission, to be settled when the request ends; ``where`` it was reserved."""

    checks: Sequence[BudgetCheck]
    where: Literal["redis", "memory"]


# --- configuration checks ---
