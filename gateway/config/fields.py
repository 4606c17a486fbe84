"""What every part of the config is made of: its errors, its limits, its units, and prices and budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default.yaml")
# Names the config file for server worker processes started by `image-gateway serve --workers N`.
CONFIG_ENV = "IMAGE_GATEWAY_CONFIG"
DEFAULT_MAX_BODY_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 128 * 1024 * 1024
DEFAULT_MAX_INPUT_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_INFLIGHT_BODY_BYTES = 512 * 1024 * 1024

Seconds = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
# Watt-hours one image takes, for providers that report no energy of their own (an estimate).
WattHours = Annotated[float, msgspec.Meta(gt=0, le=100_000)]
MAX_PRESIGNED_TTL_S = 7 * 86400  # SigV4's limit on a presigned URL


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the field.

    ``errors`` holds every problem found (one line each), so that one run of
    ``check-config`` shows them all instead of one per edit.
    """

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [message]


class FieldValueError(ValueError):
    """A check in a ``__post_init__`` that knows its field: the error's path then names the field, not the struct."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# The most any price, factor or budget may be: keeps micros exact in Redis (below 2^53).
MAX_AMOUNT = 1e9
# A budget's counter lives this long past its period, so that a request admitted just
# before the period ends still finds its reservation to settle.
SETTLE_GRACE_S = 3600
Amount = Annotated[float, msgspec.Meta(ge=0, le=MAX_AMOUNT)]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]  # ISO 4217 style: USD, EUR, CHF


class PriceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A target's price for one image: ``(per_image + per_megapixel x MP + per_step x steps) x quality[q]``.

    The size is the returned image's, else the request's, else ``default_megapixels``;
    the steps are the request's, else ``default_steps``; a quality not in ``quality``
    has factor 1.
    """

    currency: Currency = "USD"
    per_image: Amount = 0.0
    per_megapixel: Amount = 0.0
    per_step: Amount = 0.0
    quality: dict[str, Amount] = {}
    default_megapixels: Amount = 1.0
    default_steps: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 0


class BudgetConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a key may spend per calendar UTC ``day`` or ``month``, in ``currency``."""

    amount: Amount
    period: Literal["day", "month"] = "month"
    currency: Currency = "USD"
