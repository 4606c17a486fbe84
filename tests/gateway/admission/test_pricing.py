"""Prices, costs, budget periods and their configuration checks (gateway/admission/accounting.py)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import yaml

from gateway.admission.accounting import (
    Cost,
    PriceConfig,
    budget_check,
    cost_of,
    estimate,
    image_price,
    period_bounds,
)
from gateway.admission.auth import hash_key
from gateway.config import ConfigError, GatewayConfig, parse_config
from schemas.canonical import GeneratedImage, ImageRequest, ImageResult


def config(models: list[dict[str, Any]], keys: list[dict[str, Any]] | None = None) -> GatewayConfig:
    raw = {
        "providers": {
            "a": {"kind": "melious", "base_url": "http://127.0.0.1:1"},
            "b": {"kind": "nebul", "base_url": "http://127.0.0.1:2"},
        },
        "models": models,
        "auth": {"keys": keys or []},
    }
    return parse_config(yaml.safe_dump(raw), "<test>")


def config_error(models: list[dict[str, Any]], keys: list[dict[str, Any]] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        config(models, keys)
    return str(caught.value)


def key(name: str = "alice", **fields: Any) -> dict[str, Any]:
    return {"name": name, "hash": hash_key(f"sk-{name}-0123456789"), **fields}


def target(provider: str = "a", **price: Any) -> dict[str, Any]:
    return {"provider": provider, "model": "m", **({"price": price} if price else {})}


def model(*targets: dict[str, Any], name: str = "img") -> dict[str, Any]:
    return {"name": name, "targets": list(targets)}


# --- one image's price ---


def test_price_per_image_megapixel_step_and_quality() -> None:
    price = PriceConfig(per_image=0.01, per_megapixel=0.002, per_step=0.0001, quality={"hd": 2.0})
    # (0.01 + 0.002 x 1.048576 + 0.0001 x 30) x 2, exactly
    assert image_price(price, 1024, 1024, 30, "hd") == Decimal("0.030194304")
    assert image_price(price, 1024, 1024, 30, "standard") == Decimal("0.015097152")  # not listed: factor 1
    assert image_price(price, 1024, 1024, 30, None) == Decimal("0.015097152")


def test_unknown_size_and_steps_take_the_price_defaults() -> None:
    price = PriceConfig(per_megapixel=0.01, per_step=0.001, default_megapixels=2.0, default_steps=4)
    assert image_price(price, None, None, None, None) == Decimal("0.024")
    assert image_price(price, 500, None, None, None) == Decimal("0.024")  # half a size is no size
    assert image_price(price, 1000, 1000, 0, None) == Decimal("0.010")


def test_a_client_cannot_make_a_price_negative() -> None:
    price = PriceConfig(per_image=0.01, per_megapixel=1.0, per_step=0.01)
    assert image_price(price, -1000, -1000, -50, None) == Decimal("1.01")  # no size, no steps: the defaults (1 MP, 0)


def test_prices_are_exact_decimals_not_binary_floats() -> None:
    # 0.1 + 0.2 in floats is 0.30000000000000004; here it is what the operator wrote.
    price = PriceConfig(per_image=0.1, per_step=0.2)
    assert image_price(price, 1, 1, 1, None) == Decimal("0.3")
    assert Cost(Decimal("0.3"), "USD").micros == 300_000


@pytest.mark.parametrize(
    ("amount", "header", "micros"),
    [
        ("0.012", "0.0120 USD", 12_000),
        ("0.01205", "0.0121 USD", 12_050),  # half up, not half even
        ("0.01215", "0.0122 USD", 12_150),
        ("0.00004999", "0.0000 USD", 50),
        ("0.0000005", "0.0000 USD", 1),  # micros round half up too
        ("12.5", "12.5000 USD", 12_500_000),
    ],
)
def test_header_has_four_decimals_and_micros_round_half_up(amount: str, header: str, micros: int) -> None:
    cost = Cost(Decimal(amount), "USD")
    assert cost.header() == header
    assert cost.micros == micros


# --- a request's estimate and its actual cost ---


def result(provider: str, *sizes: tuple[int | None, int | None]) -> ImageResult:
    images = [GeneratedImage(b64_json="AA==", width=w, height=h) for w, h in sizes]
    return ImageResult(images=images, created=0, model="img", provider=provider)


def test_estimate_takes_the_most_expensive_priced_target_times_n() -> None:
    cfg = config([model(target("a", per_image=0.01), target("b", per_image=0.03), target("a"))])
    request = ImageRequest(model="img", n=3)
    assert estimate(cfg.models[0], request) == Cost(Decimal("0.09"), "USD")


def test_estimate_of_an_unpriced_model_is_none() -> None:
    cfg = config([model(target("a"), target("b"))])
    assert estimate(cfg.models[0], ImageRequest(model="img", n=4)) is None


def test_cost_counts_the_images_returned_at_their_actual_size() -> None:
    cfg = config([model(target("a", per_megapixel=1.0), target("b", per_image=5.0))])
    request = ImageRequest(model="img", n=4, width=1000, height=1000)
    # Two images came back (not four), one of them smaller than asked; the other says no size: the request's.
    cost = cost_of(cfg.models[0], request, result("a", (500, 500), (None, None)))
    assert cost == Cost(Decimal("1.25"), "USD")
    # The fallback target answered: its price.
    assert cost_of(cfg.models[0], request, result("b", (1000, 1000))) == Cost(Decimal("5.0"), "USD")


def test_cost_of_an_unpriced_target_is_none_not_zero() -> None:
    cfg = config([model(target("a", per_image=1.0), target("b"))])
    assert cost_of(cfg.models[0], ImageRequest(model="img"), result("b", (64, 64))) is None


def test_a_free_target_costs_zero() -> None:
    cfg = config([model(target("a", per_image=0.0))])
    assert cost_of(cfg.models[0], ImageRequest(model="img"), result("a", (64, 64))) == Cost(Decimal(0), "USD")


# --- budget periods ---

PLUS_2H = dt.timezone(dt.timedelta(hours=2))


@pytest.mark.parametrize(
    ("period", "now", "label", "end"),
    [
        ("day", dt.datetime(2026, 11, 24, 23, 59, 59, tzinfo=dt.UTC), "2026-11-24", dt.datetime(2026, 11, 25)),
        ("day", dt.datetime(2026, 12, 31, 12, 0, tzinfo=dt.UTC), "2026-12-31", dt.datetime(2027, 1, 1)),
        ("month", dt.datetime(2026, 12, 5, tzinfo=dt.UTC), "2026-12", dt.datetime(2027, 1, 1)),
        ("month", dt.datetime(2028, 2, 29, 23, 0, tzinfo=dt.UTC), "2028-02", dt.datetime(2028, 3, 1)),
        # Calendar UTC, whatever the clock's zone: 01:00 in UTC+2 is still the day before in UTC.
        ("day", dt.datetime(2026, 3, 1, 1, 0, tzinfo=PLUS_2H), "2026-02-28", dt.datetime(2026, 3, 1)),
    ],
)
def test_periods_are_calendar_utc(period: Any, now: dt.datetime, label: str, end: dt.datetime) -> None:
    assert period_bounds(period, now) == (label, end.replace(tzinfo=dt.UTC))


def test_budget_check_in_micros_under_the_keys_name_and_period() -> None:
    cfg = config([model(target("a", per_image=0.01))], [key("alice", budget={"amount": 0.1, "period": "day"})])
    now = dt.datetime(2026, 11, 24, 18, 0, tzinfo=dt.UTC)
    check = budget_check(cfg.auth.keys[0], Cost(Decimal("0.03"), "USD"), "igw:", now)
    assert check is not None
    assert (check.key, check.limit, check.cost, check.name) == ("igw:budget:alice:2026-11-24", 100_000, 30_000, "alice")
    end_ms = int(dt.datetime(2026, 11, 25, tzinfo=dt.UTC).timestamp() * 1000)
    assert check.period_end_ms == end_ms and check.expire_at_ms == end_ms + 3_600_000
    assert "sk-alice" not in repr(check)
    assert budget_check(config([model(target())], [key("bob")]).auth.keys[0], Cost(Decimal(1), "USD"), "x:") is None


# --- check-config ---


@pytest.mark.parametrize(
    ("price", "field"),
    [
        ({"per_image": -0.01}, "$.models[0].targets[0].price.per_image"),
        ({"per_megapixel": "cheap"}, "$.models[0].targets[0].price.per_megapixel"),
        ({"per_step": float("nan")}, "$.models[0].targets[0].price.per_step"),
        ({"per_image": 1e30}, "$.models[0].targets[0].price.per_image"),
        ({"quality": {"hd": -2}}, "$.models[0].targets[0].price.quality"),
        ({"currency": "usd"}, "$.models[0].targets[0].price.currency"),
        ({"per_imgae": 0.01}, "$.models[0].targets[0].price"),
    ],
)
def test_bad_price_names_its_field(price: dict[str, Any], field: str) -> None:
    message = config_error([model({"provider": "a", "model": "m", "price": price})])
    assert f"`{field}" in message, message


@pytest.mark.parametrize(
    ("budget", "field"),
    [
        ({"amount": -1}, "$.auth.keys[0].budget.amount"),
        ({"amount": "ten"}, "$.auth.keys[0].budget.amount"),
        ({}, "$.auth.keys[0].budget"),
        ({"amount": 1, "period": "week"}, "$.auth.keys[0].budget.period"),
    ],
)
def test_bad_budget_names_its_field(budget: dict[str, Any], field: str) -> None:
    message = config_error([model(target("a", per_image=0.01))], [key(budget=budget)])
    assert f"`{field}" in message, message


def test_a_budget_in_another_currency_than_a_usable_price_names_the_price() -> None:
    models = [
        model(target("a", per_image=0.01, currency="USD"), name="usd"),
        model(target("a"), target("b", per_image=0.02, currency="EUR"), name="eur"),
    ]
    message = config_error(models, [key("alice", budget={"amount": 1, "currency": "USD"})])
    assert "key 'alice' has a budget in USD" in message and "priced in EUR" in message
    assert "`$.models[1].targets[1].price.currency`" in message
    # A key that may only use the USD model (by an alias too) has no mix.
    models[0]["aliases"] = ["dollars"]
    assert config(models, [key("alice", budget={"amount": 1}, models=["dollars"])]).auth.keys[0].budget is not None
    # Nor does a key without a budget.
    assert config(models, [key("bob")]).auth.keys[0].budget is None
