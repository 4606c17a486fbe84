"""The Pomelo dialect against its document (seeds/pomelo.txt), DIALECTS.md and docs/errors.md."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.canonical import (
    ErrorCode,
    GatewayError,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    Operation,
    ResponseFormat,
)
from schemas.pomelo import ERRORS, FLUX, MIDJOURNEY, aspect_ratio_for_size, size_for_aspect_ratio
from tests.schemas.test_dialect import refusal

# --- the document's examples, verbatim ---

MIDJOURNEY_EXAMPLE_REQUEST = {
    "prompt": "A serene mountain landscape with a lake at sunset, photorealistic",
    "style": "scenic",
    "width": 1024,
    "height": 768,
    "model": "5",
    "num_outputs": 2,
}
MIDJOURNEY_EXAMPLE_RESPONSE = json.loads("""
{ "status": "success", "images": [ { "url": "https://storage.pomeloapi.example.com/images/abc123.png",
"id": "img_abc123", "created_at": "2023-06-15T10:30:45Z" }, { "url":
"https://storage.pomeloapi.example.com/images/def456.png", "id": "img_def456", "created_at": "2023-06-15T10:30:45Z" }
], "prompt": "A serene mountain landscape with a lake at sunset, photorealistic", "model": "5" }
""")
FLUX_EXAMPLE_REQUEST = {
    "prompt": "A futuristic cityscape with flying cars and holographic billboards",
    "negative_prompt": "blurry, low quality, distorted",
    "style": "digital-art",
    "steps": 40,
    "aspect_ratio": "16:9",
}
FLUX_EXAMPLE_RESPONSE = json.loads("""
{ "id": "gen_789xyz", "created": 1678901234, "images": [ { "url":
"https://storage.pomeloapi.example.com/images/789xyz.png", "width": 1024, "height": 576 } ], "prompt":
"A futuristic cityscape with flying cars and holographic billboards", "model": "flux.1", "seed": 42105,
"status": "complete" }
""")
# 2023-06-15T10:30:45Z, the document's created_at.
DOC_CREATED = 1686825045


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def shape(value: Any) -> Any:
    """Field names and nesting, in order, without the values."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(item) for item in value]
    return None


def wire(struct: msgspec.Struct) -> Any:
    return json.loads(msgspec.json.encode(struct))


def raises(endpoint: Any, payload: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        endpoint.decode_json(payload if isinstance(payload, bytes) else body(payload))
    return info.value


# --- Midjourney ---


def test_midjourney_example_request_decodes() -> None:
    assert MIDJOURNEY.decode_json(body(MIDJOURNEY_EXAMPLE_REQUEST)) == ImageRequest(
        model="5",
        prompt="A serene mountain landscape with a lake at sunset, photorealistic",
        n=2,
        width=1024,
        height=768,
        style="scenic",
        response_format=ResponseFormat.URL,
    )


def test_midjourney_defaults() -> None:
    assert MIDJOURNEY.decode_json(body({"prompt": "a cat"})) == ImageRequest(
        model="5", prompt="a cat", n=1, width=512, height=512, response_format=ResponseFormat.URL
    )


def midjourney_result(count: int = 2) -> ImageResult:
    return ImageResult(
        images=[GeneratedImage(url=f"https://cdn.example/{i}.png") for i in range(count)],
        created=DOC_CREATED,
        model="midjourney-5",
    )


def test_midjourney_response_has_the_documented_shape() -> None:
    request = MIDJOURNEY.decode_json(body(MIDJOURNEY_EXAMPLE_REQUEST))
    encoded = wire(MIDJOURNEY.encode_result(midjourney_result(), request))
    assert shape(encoded) == shape(MIDJOURNEY_EXAMPLE_RESPONSE)
    assert encoded["status"] == "success"
    assert encoded["prompt"] == MIDJOURNEY_EXAMPLE_REQUEST["prompt"]
    assert encoded["model"] == "5"
    assert [image["created_at"] for image in encoded["images"]] == ["2023-06-15T10:30:45Z"] * 2


def test_midjourney_image_ids_are_stable_and_distinct() -> None:
    request = MIDJOURNEY.decode_json(body({"prompt": "a cat"}))
    first = wire(MIDJOURNEY.encode_result(midjourney_result(3), request))
    again = wire(MIDJOURNEY.encode_result(midjourney_result(3), request))
    ids = [image["id"] for image in first["images"]]
    assert ids == [image["id"] for image in again["images"]]
    assert len(set(ids)) == 3
    assert all(image_id.startswith("img_") for image_id in ids)


def test_midjourney_example_response_decodes() -> None:
    request = MIDJOURNEY.decode_json(body(MIDJOURNEY_EXAMPLE_REQUEST))
    result = MIDJOURNEY.decode_response(body(MIDJOURNEY_EXAMPLE_RESPONSE), request)
    assert [image.url for image in result.images] == [
        "https://storage.pomeloapi.example.com/images/abc123.png",
        "https://storage.pomeloapi.example.com/images/def456.png",
    ]
    assert all((image.width, image.height) == (1024, 768) for image in result.images)
    assert result.created == DOC_CREATED
    assert result.model == "5"


def test_midjourney_outbound_applies_defaults_and_maps_n() -> None:
    request = ImageRequest(model="5", prompt="a cat", n=3)
    assert wire(MIDJOURNEY.from_canonical(request)) == {"prompt": "a cat", "num_outputs": 3}


@pytest.mark.parametrize(
    ("request_", "code", "param"),
    [
        (ImageRequest(model="5", prompt="a cat", n=5), ErrorCode.INVALID_REQUEST, "n"),
        (ImageRequest(model="5", prompt="a cat", width=4096, height=4096), ErrorCode.INVALID_SIZE, "size"),
        (
            ImageRequest(model="5", prompt="a cat", operation=Operation.EDIT, images=(b"x",)),
            ErrorCode.OPERATION_NOT_SUPPORTED,
            None,
        ),
    ],
)
def test_midjourney_outbound_refuses_what_it_cannot_carry(
    request_: ImageRequest, code: ErrorCode, param: str | None
) -> None:
    with pytest.raises(GatewayError) as info:
        MIDJOURNEY.from_canonical(request_)
    assert (info.value.code, info.value.param) == (code, param)


@pytest.mark.parametrize(
    ("payload", "code", "param"),
    [
        ({"style": "raw"}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"prompt": ""}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"prompt": "   "}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"prompt": 42}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"prompt": "a cat", "num_outputs": 5}, ErrorCode.INVALID_REQUEST, "num_outputs"),
        ({"prompt": "a cat", "num_outputs": 0}, ErrorCode.INVALID_REQUEST, "num_outputs"),
        ({"prompt": "a cat", "num_outputs": "two"}, ErrorCode.INVALID_REQUEST, "num_outputs"),
        ({"prompt": "a cat", "width": 4096}, ErrorCode.INVALID_SIZE, "width"),
        ({"prompt": "a cat", "height": 32}, ErrorCode.INVALID_SIZE, "height"),
        ({"prompt": "a cat", "width": "wide"}, ErrorCode.INVALID_SIZE, "width"),
        ({"prompt": "a cat", "model": ""}, ErrorCode.INVALID_REQUEST, "model"),
        ({"prompt": "a cat", "style": 3}, ErrorCode.INVALID_REQUEST, "style"),
        (["a cat"], ErrorCode.INVALID_REQUEST, None),
        (b"{not json", ErrorCode.INVALID_REQUEST, None),
    ],
)
def test_midjourney_bad_requests(payload: Any, code: ErrorCode, param: str | None) -> None:
    error = raises(MIDJOURNEY, payload)
    assert (error.code, error.param, error.status) == (code, param, 400)


# --- Flux.1 ---


def test_flux_example_request_decodes() -> None:
    assert FLUX.decode_json(body(FLUX_EXAMPLE_REQUEST)) == ImageRequest(
        model="flux.1",
        prompt="A futuristic cityscape with flying cars and holographic billboards",
        negative_prompt="blurry, low quality, distorted",
        width=1024,
        height=576,
        steps=40,
        style="digital-art",
        response_format=ResponseFormat.URL,
    )


def test_flux_defaults() -> None:
    assert FLUX.decode_json(body({"prompt": "a cat"})) == ImageRequest(
        model="flux.1", prompt="a cat", width=1024, height=1024, steps=30, response_format=ResponseFormat.URL
    )


@pytest.mark.parametrize(
    ("ratio", "size"),
    [
        ("1:1", (1024, 1024)),
        ("16:9", (1024, 576)),
        ("9:16", (576, 1024)),
        ("4:3", (1024, 768)),
        ("3:4", (768, 1024)),
        ("32:18", (1024, 576)),
        ("3:2", (1024, 704)),  # 682.7 rounds to 704
        ("21:9", (1024, 448)),  # 438.9 rounds to 448
        ("1:9999", (64, 1024)),  # never below one step
    ],
)
def test_aspect_ratio_to_pixels(ratio: str, size: tuple[int, int]) -> None:
    assert size_for_aspect_ratio(ratio) == size


@pytest.mark.parametrize(
    ("size", "ratio"),
    [((1024, 576), "16:9"), ((576, 1024), "9:16"), ((1024, 768), "4:3"), ((512, 512), "1:1"), ((None, None), "1:1")],
)
def test_pixels_to_aspect_ratio(size: tuple[int | None, int | None], ratio: str) -> None:
    assert aspect_ratio_for_size(*size) == ratio


def flux_result(**changes: Any) -> ImageResult:
    fields: dict[str, Any] = {
        "images": [
            GeneratedImage(url="https://storage.pomeloapi.example.com/images/789xyz.png", width=1024, height=576)
        ],
        "created": 1678901234,
        "model": "black-forest-labs/FLUX.1-schnell",
        "id": "gen_789xyz",
        "seed": 42105,
    }
    return ImageResult(**(fields | changes))


def test_flux_response_is_the_documented_one() -> None:
    request = FLUX.decode_json(body({"prompt": FLUX_EXAMPLE_RESPONSE["prompt"], "aspect_ratio": "16:9"}))
    encoded = wire(FLUX.encode_result(flux_result(), request))
    assert encoded == FLUX_EXAMPLE_RESPONSE
    assert shape(encoded) == shape(FLUX_EXAMPLE_RESPONSE)


def test_flux_example_response_decodes_and_encodes_back() -> None:
    request = FLUX.decode_json(body(FLUX_EXAMPLE_REQUEST))
    result = FLUX.decode_response(body(FLUX_EXAMPLE_RESPONSE), request)
    assert (result.id, result.seed, result.created, result.model) == ("gen_789xyz", 42105, 1678901234, "flux.1")
    assert [(image.url, image.width, image.height) for image in result.images] == [
        ("https://storage.pomeloapi.example.com/images/789xyz.png", 1024, 576)
    ]
    assert wire(FLUX.encode_result(result, request)) == FLUX_EXAMPLE_RESPONSE


@pytest.mark.parametrize(
    ("result", "request_seed", "seed"),
    [
        (flux_result(seed=7), 3, 7),
        (flux_result(seed=None, images=[GeneratedImage(url="u", seed=11)]), 3, 11),
        (flux_result(seed=None, images=[GeneratedImage(url="u")]), 3, 3),
        (flux_result(seed=None, images=[]), None, 0),
    ],
)
def test_flux_always_returns_the_seed(result: ImageResult, request_seed: int | None, seed: int) -> None:
    request = ImageRequest(model="flux.1", prompt="a cat", seed=request_seed)
    assert wire(FLUX.encode_result(result, request))["seed"] == seed


def test_flux_generation_id_has_the_prefix() -> None:
    request = ImageRequest(model="flux.1", prompt="a cat", width=1024, height=1024)
    assert wire(FLUX.encode_result(flux_result(id="abc"), request))["id"] == "gen_abc"
    derived = wire(FLUX.encode_result(flux_result(id=None), request))["id"]
    assert derived.startswith("gen_")
    assert derived == wire(FLUX.encode_result(flux_result(id=None), request))["id"]


def test_flux_image_size_falls_back_on_the_request() -> None:
    request = FLUX.decode_json(body({"prompt": "a cat", "aspect_ratio": "9:16"}))
    encoded = wire(FLUX.encode_result(flux_result(images=[GeneratedImage(url="u")]), request))
    assert encoded["images"] == [{"url": "u", "width": 576, "height": 1024}]


def test_flux_outbound() -> None:
    request = ImageRequest(model="flux-dev", prompt="a cat", width=1280, height=720, seed=5, steps=20)
    assert wire(FLUX.from_canonical(request)) == {"prompt": "a cat", "seed": 5, "steps": 20, "aspect_ratio": "16:9"}
    assert wire(FLUX.from_canonical(ImageRequest(model="flux.1", prompt="a cat"))) == {"prompt": "a cat"}


@pytest.mark.parametrize(
    ("request_", "code", "param"),
    [
        (ImageRequest(model="flux.1", prompt="a cat", n=2), ErrorCode.INVALID_REQUEST, "n"),
        (ImageRequest(model="flux.1", prompt="a cat", steps=51), ErrorCode.INVALID_REQUEST, "steps"),
        (ImageRequest(model="flux.1", prompt="a cat", steps=0), ErrorCode.INVALID_REQUEST, "steps"),
        (
            ImageRequest(model="flux.1", prompt="a cat", operation=Operation.VARIATION, images=(b"x",)),
            ErrorCode.OPERATION_NOT_SUPPORTED,
            None,
        ),
    ],
)
def test_flux_outbound_refuses_what_it_cannot_carry(request_: ImageRequest, code: ErrorCode, param: str | None) -> None:
    with pytest.raises(GatewayError) as info:
        FLUX.from_canonical(request_)
    assert (info.value.code, info.value.param) == (code, param)


@pytest.mark.parametrize(
    ("payload", "code", "param"),
    [
        ({"steps": 30}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"prompt": ""}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"prompt": "\n\t"}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"prompt": None}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"prompt": "a cat", "steps": 51}, ErrorCode.INVALID_REQUEST, "steps"),
        ({"prompt": "a cat", "steps": 0}, ErrorCode.INVALID_REQUEST, "steps"),
        ({"prompt": "a cat", "steps": 2.5}, ErrorCode.INVALID_REQUEST, "steps"),
        ({"prompt": "a cat", "seed": "lucky"}, ErrorCode.INVALID_REQUEST, "seed"),
        ({"prompt": "a cat", "negative_prompt": ["blurry"]}, ErrorCode.INVALID_REQUEST, "negative_prompt"),
        *(
            ({"prompt": "a cat", "aspect_ratio": ratio}, ErrorCode.INVALID_SIZE, "aspect_ratio")
            for ratio in ("wide", "16x9", "16:", ":9", "0:9", "16:0", "-16:9", "1.5:1", "16:9:1", " 16:9", "")
        ),
        ({"prompt": "a cat", "aspect_ratio": 1.78}, ErrorCode.INVALID_SIZE, "aspect_ratio"),
    ],
)
def test_flux_bad_requests(payload: Any, code: ErrorCode, param: str | None) -> None:
    error = raises(FLUX, payload)
    assert (error.code, error.param, error.status) == (code, param, 400)


# --- errors ---


@pytest.mark.parametrize(
    ("code", "wire_code"),
    [
        (ErrorCode.INVALID_REQUEST, "invalid_request"),
        (ErrorCode.INVALID_PROMPT, "invalid_prompt"),
        (ErrorCode.INVALID_SIZE, "invalid_size"),
        (ErrorCode.CONTENT_POLICY, "content_policy_violation"),
        (ErrorCode.UNAUTHORIZED, "unauthorized"),
        (ErrorCode.MODEL_NOT_FOUND, "model_not_found"),
        (ErrorCode.OPERATION_NOT_SUPPORTED, "operation_not_supported"),
        (ErrorCode.INSUFFICIENT_QUOTA, "insufficient_quota"),
        (ErrorCode.RATE_LIMITED, "rate_limit_exceeded"),
        (ErrorCode.UPSTREAM_ERROR, "upstream_error"),
        (ErrorCode.UPSTREAM_TIMEOUT, "timeout"),
        (ErrorCode.OVERLOADED, "overloaded"),
        (ErrorCode.INTERNAL, "internal_error"),
    ],
)
def test_errors_render_and_parse_every_code(code: ErrorCode, wire_code: str) -> None:
    rendered = ERRORS.render(GatewayError(code, "it went wrong", param="size"))
    assert json.loads(rendered) == {"status": "error", "error": {"code": wire_code, "message": "it went wrong"}}
    parsed = ERRORS.parse(code.http_status, rendered, retry_after=2.0)
    assert (parsed.code, parsed.message, parsed.status, parsed.retry_after) == (
        code,
        "it went wrong",
        code.http_status,
        2.0,
    )


def test_errors_cover_the_whole_taxonomy() -> None:
    for code in ErrorCode:
        assert ERRORS.parse(code.http_status, ERRORS.render(GatewayError(code, "m"))).code is code


def test_bad_request_renders_in_the_pomelo_envelope() -> None:
    rendered = json.loads(ERRORS.render(raises(FLUX, {"prompt": "a cat", "aspect_ratio": "wide"})))
    assert shape(rendered) == [("status", None), ("error", [("code", None), ("message", None)])]
    assert rendered["error"]["code"] == "invalid_size"
    assert "aspect_ratio" in rendered["error"]["message"]


@pytest.mark.parametrize(
    ("status", "payload", "code"),
    [
        (429, b'{"status": "error", "error": {"code": "slow_down", "message": "later"}}', ErrorCode.RATE_LIMITED),
        (400, b'{"status": "error", "error": {"code": "nope", "message": "bad"}}', ErrorCode.INVALID_REQUEST),
        (503, b"<html>Service Unavailable</html>", ErrorCode.OVERLOADED),
        (500, b"", ErrorCode.UPSTREAM_ERROR),
        (404, b'{"detail": "Not Found"}', ErrorCode.MODEL_NOT_FOUND),
        (402, b"[]", ErrorCode.INSUFFICIENT_QUOTA),
    ],
)
def test_errors_fall_back_on_the_status(status: int, payload: bytes, code: ErrorCode) -> None:
    parsed = ERRORS.parse(status, payload, retry_after=1.0)
    assert (parsed.code, parsed.retry_after) == (code, 1.0)
    assert parsed.message


def test_error_without_message_keeps_its_code() -> None:
    parsed = ERRORS.parse(400, b'{"status": "error", "error": {"code": "invalid_size"}}')
    assert (parsed.code, parsed.message) == (ErrorCode.INVALID_SIZE, "invalid_size")


# --- canonical -> wire -> canonical keeps what the endpoint can carry ---

PROMPTS = st.text(min_size=1, max_size=60).filter(lambda text: not text.isspace())
OPTIONAL_TEXT = st.none() | st.text(max_size=30)
SIDES = st.integers(min_value=64, max_value=2048)
# Pixel sizes an aspect ratio expresses exactly: 1024 by a multiple of 64, either way round.
FLUX_SIZES = st.sampled_from(sorted({(1024, 64 * k) for k in range(1, 17)} | {(64 * k, 1024) for k in range(1, 17)}))

MIDJOURNEY_REQUESTS = st.builds(
    ImageRequest,
    model=st.text(min_size=1, max_size=20),
    prompt=PROMPTS,
    n=st.integers(min_value=1, max_value=4),
    width=SIDES,
    height=SIDES,
    style=OPTIONAL_TEXT,
    response_format=st.just(ResponseFormat.URL),
)


@st.composite
def flux_requests(draw: st.DrawFn) -> ImageRequest:
    width, height = draw(FLUX_SIZES)
    return ImageRequest(
        model="flux.1",
        prompt=draw(PROMPTS),
        negative_prompt=draw(OPTIONAL_TEXT),
        width=width,
        height=height,
        steps=draw(st.integers(min_value=1, max_value=50)),
        seed=draw(st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        style=draw(OPTIONAL_TEXT),
        response_format=ResponseFormat.URL,
    )


@settings(max_examples=50, deadline=None, database=None)
@given(MIDJOURNEY_REQUESTS)
def test_midjourney_round_trip(request: ImageRequest) -> None:
    assert MIDJOURNEY.decode_json(msgspec.json.encode(MIDJOURNEY.from_canonical(request))) == request


@settings(max_examples=50, deadline=None, database=None)
@given(flux_requests())
def test_flux_round_trip(request: ImageRequest) -> None:
    assert FLUX.decode_json(msgspec.json.encode(FLUX.from_canonical(request))) == request


@settings(max_examples=50, deadline=None, database=None)
@given(st.integers(min_value=1, max_value=9999), st.integers(min_value=1, max_value=9999))
def test_any_aspect_ratio_gives_a_1024_long_side_and_64_steps(across: int, down: int) -> None:
    width, height = size_for_aspect_ratio(f"{across}:{down}")
    assert max(width, height) == 1024
    assert min(width, height) % 64 == 0
    # The long side stays the long side (a near-square ratio may round up to a square).
    if across >= down:
        assert width >= height
    else:
        assert height >= width


# --- validation: the field named, what it may hold, NebulaBlock's codes ---


@pytest.mark.parametrize(
    ("endpoint", "patch", "code", "message"),
    [
        (MIDJOURNEY, {"width": 5000}, "invalid_size", "`width` must be an integer from 64 to 2048"),
        (MIDJOURNEY, {"height": "tall"}, "invalid_size", "`height` must be an integer from 64 to 2048"),
        (MIDJOURNEY, {"num_outputs": 5}, "invalid_request", "`num_outputs` must be an integer from 1 to 4"),
        (MIDJOURNEY, {"prompt": 3}, "invalid_prompt", "`prompt` must be a text that is not empty or only spaces"),
        (
            FLUX,
            {"aspect_ratio": "wide"},
            "invalid_size",
            "`aspect_ratio` must be a ratio WIDTH:HEIGHT of whole numbers, e.g. 1:1, 16:9, 4:3",
        ),
        (FLUX, {"steps": 51}, "invalid_request", "`steps` must be an integer from 1 to 50"),
        (FLUX, {"seed": "lucky"}, "invalid_request", "`seed` must be an integer"),
        (FLUX, {"negative_prompt": 1}, "invalid_request", "`negative_prompt` must be a string"),
    ],
)
def test_validation_names_the_field_and_what_it_may_hold(
    endpoint: Any, patch: dict[str, Any], code: str, message: str
) -> None:
    error = refusal(endpoint, {"prompt": "a cat", **patch})
    assert json.loads(ERRORS.render(error)) == {"status": "error", "error": {"code": code, "message": message}}
