"""Admission on its own: the body budget, input bounds, model access and rate limits, in memory."""

from __future__ import annotations

import base64

import pytest

from gateway.admission.auth import Authenticator, hash_key
from gateway.admission.gate import Admission, BodyBudget
from gateway.admission.ratelimit import MemoryLimiter
from schemas.canonical import ErrorCode, GatewayError, ImageRequest, InputImage, Operation
from tests.gateway.fakes import config


def admission(**sections: object) -> Admission:
    cfg = config(
        {"a": {}},
        [{"name": "m", "aliases": ["alias"], "targets": [{"provider": "a", "model": "x"}], "limits": {"images": 3}}],
        **sections,
    )
    return Admission(cfg, Authenticator(cfg.auth), MemoryLimiter())


def test_the_body_budget_refuses_what_would_pass_it_and_takes_back_what_is_given() -> None:
    budget = BodyBudget(100)
    assert budget.take(60) is None and budget.take(41) is ErrorCode.OVERLOADED and budget.used == 60
    budget.give(60)
    assert budget.take(100) is None and budget.used == 100


def test_one_holder_gets_its_share_of_the_body_budget_and_others_the_rest() -> None:
    budget = BodyBudget(100, share=0.4, max_body=10)
    assert budget.take(40, "a") is None
    assert budget.take(1, "a") is ErrorCode.RATE_LIMITED  # past its share: its own excess, not everyone's
    assert budget.take(40, "b") is None and budget.take(20, "c") is None
    assert budget.take(1, "d") is ErrorCode.OVERLOADED and budget.used == 100
    budget.give(40, "a")
    assert budget.by_holder == {"b": 40, "c": 20} and budget.take(30, "a") is None
    assert BodyBudget(100, share=0.01, max_body=25).per_holder == 25  # one whole body always fits


def test_keys_are_checked_from_the_headers() -> None:
    gate = admission(auth={"keys": [{"name": "team", "hash": hash_key("secret-1")}]})
    assert gate.authorize({"authorization": "Bearer secret-1"}).name == "team"  # type: ignore[union-attr]
    with pytest.raises(GatewayError) as raised:
        gate.authorize({"authorization": "Bearer wrong"})
    assert raised.value.code is ErrorCode.UNAUTHORIZED


def test_inputs_beyond_the_configured_bounds_are_refused() -> None:
    gate = admission(server={"max_input_images": 1, "max_input_image_bytes": 10})
    with pytest.raises(GatewayError) as raised:
        gate.check_inputs(ImageRequest(model="m", operation=Operation.EDIT, images=(b"1", b"2")))
    assert raised.value.param == "image"
    with pytest.raises(GatewayError) as raised:
        gate.check_inputs(ImageRequest(model="m", operation=Operation.EDIT, images=(b"1",), mask=b"x" * 11))
    assert raised.value.param == "mask" and raised.value.status == 413


def test_base64_inputs_are_measured_without_decoding() -> None:
    gate = admission(server={"max_input_image_bytes": 10})
    fits, over = InputImage.from_b64(base64.b64encode(b"x" * 10).decode()), InputImage.from_b64("eHh4eHh4eHh4eHg=")
    gate.check_inputs(ImageRequest(model="m", operation=Operation.EDIT, images=(fits,)))
    with pytest.raises(GatewayError) as raised:
        gate.check_inputs(ImageRequest(model="m", operation=Operation.EDIT, images=(fits,), mask=over))
    assert (raised.value.param, raised.value.status) == ("mask", 413)  # 11 bytes: over by one
    assert not fits.decoded and not over.decoded


def test_a_prompt_over_the_configured_length_is_refused_naming_its_field() -> None:
    gate = admission(server={"max_prompt_chars": 5})
    gate.check_inputs(ImageRequest(model="m", prompt="12345", negative_prompt="12345"))
    for field, request in [
        ("prompt", ImageRequest(model="m", prompt="123456")),
        ("negative_prompt", ImageRequest(model="m", prompt="ok", negative_prompt="123456")),
    ]:
        with pytest.raises(GatewayError) as raised:
            gate.check_inputs(request)
        assert (raised.value.code, raised.value.param, raised.value.status) == (ErrorCode.INVALID_PROMPT, field, 400)
        assert raised.value.message == f"`{field}` is 6 characters long; at most 5 are allowed"


async def test_a_key_limited_to_other_models_is_told_model_not_found() -> None:
    cfg_keys = {"keys": [{"name": "narrow", "hash": hash_key("k1"), "models": ["other"]}]}
    gate = admission(auth=cfg_keys)
    key = gate.authorize({"authorization": "Bearer k1"})
    with pytest.raises(GatewayError) as raised:
        await gate.admit(key, ImageRequest(model="alias"), gate.config.models[0])
    assert raised.value.code is ErrorCode.MODEL_NOT_FOUND


async def test_the_models_image_limit_counts_n() -> None:
    gate = admission()
    model = gate.config.models[0]
    decision = await gate.admit(None, ImageRequest(model="m", n=2), model)
    assert decision.allowed and decision.remaining == 1
    with pytest.raises(GatewayError) as raised:
        await gate.admit(None, ImageRequest(model="m", n=2), model)
    assert raised.value.code is ErrorCode.RATE_LIMITED and raised.value.retry_after
