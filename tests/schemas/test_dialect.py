"""What every dialect shares: validation messages in the client's words, and its field names.

Per-dialect cases live beside each dialect's tests; this file holds the helper they use
and the checks that hold for every endpoint of every dialect.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
import pytest

from schemas import melious, nebul, nebulablock, openai, pomelo
from schemas.canonical import ErrorCode, GatewayError
from schemas.dialect import (
    RETRY_AFTER_MAX_S,
    BodyKind,
    Endpoint,
    bounded_retry_after,
    describe_type,
    error_answer,
    parse_retry_after,
)

ENDPOINTS: list[Endpoint[Any, Any]] = [
    melious.GENERATIONS,
    nebul.GENERATIONS,
    nebul.EDITS,
    nebul.VARIATIONS,
    openai.GENERATIONS,
    openai.EDITS,
    openai.VARIATIONS,
    pomelo.MIDJOURNEY,
    pomelo.FLUX,
    nebulablock.SERVERLESS,
    nebulablock.V1,
]
# What a message to a client never shows: msgspec's wording, JSON paths, regexes.
INTERNALS = ("Expected `", "enum", "regex", "$.", "^(", "\\d", "`str`", "`int`", "Object missing")


def assert_plain(message: str) -> None:
    """``message`` is written for a client: no validator internals."""
    for internal in INTERNALS:
        assert internal not in message, f"{internal!r} in {message!r}"


def refusal(endpoint: Endpoint[Any, Any], body: bytes | Mapping[str, Any]) -> GatewayError:
    """The error ``endpoint`` raises decoding ``body`` (raw JSON bytes, or fields as JSON or a form)."""
    with pytest.raises(GatewayError) as info:
        if isinstance(body, bytes):
            endpoint.decode_json(body)
        elif endpoint.body_kind is BodyKind.MULTIPART:
            endpoint.decode_form(body)
        else:
            endpoint.decode_json(json.dumps(body).encode())
    assert_plain(info.value.message)
    return info.value


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.dialect}{e.path}")
def test_every_field_is_described_in_words(endpoint: Endpoint[Any, Any]) -> None:
    wire_names = {field.encode_name for field in msgspec.structs.fields(endpoint.request_type)}
    assert set(endpoint.field_rules) == wire_names
    for field, rule in endpoint.field_rules.items():
        assert rule and rule != "a valid value", f"{field}: {rule!r}"
        assert_plain(rule)


def test_a_pattern_without_words_is_refused_where_it_is_declared() -> None:
    """A regex is no answer for a client: a patterned string must say in words what it takes."""
    with pytest.raises(TypeError, match="description"):
        describe_type(msgspec.inspect.type_info(Annotated[str, msgspec.Meta(pattern="^a+$")]))
    described = Annotated[str, msgspec.Meta(pattern="^a+$", description="one or more a's")]
    assert describe_type(msgspec.inspect.type_info(described)) == "one or more a's"


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e.body_kind is BodyKind.JSON], ids=lambda e: e.path)
@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{not json", "Request body is not valid JSON (at byte 1)"),
        (b'{"prompt": "a"', "Request body is not valid JSON (it ends too early)"),
        (b"", "Request body is not valid JSON (it ends too early)"),
        (b"[]", "Request body must be a JSON object"),
        (b'"prompt"', "Request body must be a JSON object"),
        (b"42", "Request body must be a JSON object"),
    ],
)
def test_a_body_that_is_not_a_json_object(endpoint: Endpoint[Any, Any], raw: bytes, words: str) -> None:
    error = refusal(endpoint, raw)
    assert (error.code, error.message, error.param) == (ErrorCode.INVALID_REQUEST, words, None)


@pytest.mark.parametrize(
    ("endpoint", "canonical", "wire"),
    [
        (nebulablock.SERVERLESS, "steps", "num_steps"),
        (nebulablock.SERVERLESS, "guidance", "guidance_scale"),
        (nebulablock.SERVERLESS, "size", "width/height"),
        (pomelo.MIDJOURNEY, "n", "num_outputs"),
        (pomelo.MIDJOURNEY, "size", "width/height"),
        (pomelo.FLUX, "size", "aspect_ratio"),
        (melious.GENERATIONS, "size", "size"),
        (nebul.GENERATIONS, "guidance", "guidance"),
    ],
)
def test_a_later_refusal_names_the_clients_own_field(endpoint: Endpoint[Any, Any], canonical: str, wire: str) -> None:
    """A model's own limit (checked after decoding, in canonical names) reaches the client in its names."""
    error = endpoint.client_error(GatewayError(ErrorCode.INVALID_REQUEST, "model 'm' takes at most 8", param=canonical))
    label = "/".join(f"`{name}`" for name in wire.split("/"))
    assert (error.param, error.message) == (wire, f"{label}: model 'm' takes at most 8")


def test_a_message_that_names_its_field_is_kept() -> None:
    error = GatewayError(ErrorCode.INVALID_REQUEST, "`mask` needs an `image` to paint into", param="mask")
    assert nebulablock.SERVERLESS.client_error(error).message == "`mask` needs an `image` to paint into"
    assert melious.GENERATIONS.client_error(GatewayError(ErrorCode.UPSTREAM_ERROR, "no")).message == "no"
    unknown = GatewayError(ErrorCode.MODEL_NOT_FOUND, "model 'x' is not served here", param="model")
    assert melious.GENERATIONS.client_error(unknown).message == "model 'x' is not served here"
    steps = GatewayError(ErrorCode.INVALID_REQUEST, "Flux.1 takes 1 to 50 steps", param="steps")
    assert pomelo.FLUX.client_error(steps).message == "Flux.1 takes 1 to 50 steps"
    assert nebulablock.SERVERLESS.client_error(steps).message == "`num_steps`: Flux.1 takes 1 to 50 steps"


@pytest.mark.parametrize(
    ("said", "read"),
    [("7", 7.0), (" 2.5 ", 2.5), ("0", 0.0), ("99999999", RETRY_AFTER_MAX_S), ("9" * 32, RETRY_AFTER_MAX_S),
     (None, None), ("", None), ("inf", None), ("nan", None), ("-1", None), ("1e3", None), ("1_0", None),
     ("+5", None), ("9" * 400, None), ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)  # fmt: skip
def test_retry_after_is_read_strictly(said: str | None, read: float | None) -> None:
    assert parse_retry_after(said) == read


@pytest.mark.parametrize(("said", "read"), [(3.0, 3.0), (1e12, RETRY_AFTER_MAX_S), (float("inf"), None),
                                            (float("nan"), None), (-1.0, None), (None, None)])  # fmt: skip
def test_a_wait_given_as_a_number_is_bounded(said: float | None, read: float | None) -> None:
    assert bounded_retry_after(said) == read


def test_a_wait_that_is_not_finite_is_never_rendered() -> None:
    error = GatewayError(ErrorCode.RATE_LIMITED, "slow down", retry_after=float("inf"))
    assert "Retry-After" not in error_answer(error, melious.ERRORS).headers
