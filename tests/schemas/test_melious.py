"""The Melious dialect against its document (seeds/melious.txt) and docs/errors.md.

Also home of two helpers the other dialect tests share: ``shape`` (field names and
nesting of a JSON value) and ``documented_errors`` (the table of docs/errors.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import melious
from schemas.canonical import (
    EnvironmentImpact,
    ErrorCode,
    GatewayError,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ResponseFormat,
)
from tests.schemas.test_dialect import refusal

ERRORS_MD = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def shape(value: Any) -> Any:
    """The field names and nesting of a JSON value, with every leaf value dropped."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return None


@dataclass(frozen=True)
class DocumentedError:
    """One row of the table in docs/errors.md."""

    code: ErrorCode
    status: int
    melious: str
    openai_type: str
    openai_code: str
    block: str


def documented_errors() -> list[DocumentedError]:
    """Every row of the code table in docs/errors.md, read from the document itself."""
    rows = []
    for line in ERRORS_MD.read_text().splitlines():
        cells = [re.findall(r"`([^`]+)`", cell) for cell in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not cells[0]:
            continue
        status = int(line.split("|")[2])
        (canonical,), (melious_code,), (openai_type, openai_code), (block,) = cells[0], cells[3], cells[4], cells[5]
        rows.append(DocumentedError(ErrorCode(canonical), status, melious_code, openai_type, openai_code, block))
    return rows


def test_the_error_table_is_read_whole() -> None:
    assert {row.code for row in documented_errors()} == set(ErrorCode)


# --- requests: every example in the document ---

PROMPT = "A serene mountain landscape at sunset with a reflective lake"
# The body the Python and JavaScript SDK examples send (the SDK leaves out what the call does not name).
SDK_EXAMPLE = {"model": "flux-schnell", "prompt": PROMPT, "size": "1024x1024", "n": 1}
CURL_EXAMPLE = b"""{
"model": "flux-schnell",
"prompt": "A serene mountain landscape at sunset with a reflective lake",
"size": "1024x1024",
"n": 1
}"""
BASE64_EXAMPLE = {
    "model": "flux-schnell",
    "prompt": "A futuristic cityscape",
    "size": "1024x1024",
    "response_format": "b64_json",
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            json.dumps(SDK_EXAMPLE).encode(),
            ImageRequest(model="flux-schnell", prompt=PROMPT, n=1, width=1024, height=1024),
            id="sdk",
        ),
        pytest.param(
            CURL_EXAMPLE,
            ImageRequest(model="flux-schnell", prompt=PROMPT, n=1, width=1024, height=1024),
            id="curl",
        ),
        pytest.param(
            json.dumps(BASE64_EXAMPLE).encode(),
            ImageRequest(
                model="flux-schnell",
                prompt="A futuristic cityscape",
                width=1024,
                height=1024,
                response_format=ResponseFormat.B64_JSON,
            ),
            id="base64",
        ),
        pytest.param(
            b'{"prompt": "a cat"}',
            ImageRequest(
                model="flux-schnell",
                prompt="a cat",
                n=1,
                width=1024,
                height=1024,
                response_format=ResponseFormat.URL,
            ),
            id="defaults",
        ),
        pytest.param(
            b'{"prompt": "a cat", "model": "sdxl-lightning-4step", "n": 4, "size": "720x1280", "user": "u-1"}',
            ImageRequest(model="sdxl-lightning-4step", prompt="a cat", n=4, width=720, height=1280, user="u-1"),
            id="every-field",
        ),
    ],
)
def test_documented_requests_decode(body: bytes, expected: ImageRequest) -> None:
    assert melious.GENERATIONS.decode_json(body) == expected


@pytest.mark.parametrize("size", melious.SIZES)
def test_every_documented_size_decodes(size: str) -> None:
    width, height = map(int, size.split("x"))
    request = melious.GENERATIONS.decode_json(json.dumps({"prompt": "p", "size": size}).encode())
    assert (request.width, request.height) == (width, height)


# --- responses ---

DOCUMENTED_RESPONSE = b"""{
"created": 1699999999,
"data": [
{
"url": "https://..../generated-image.png"
}
],
"environment_impact": {
"carbon_g_co2": 2.5,
"water_liters": 0.01,
"energy_kwh": 0.005,
"renewable_percent": 85,
"provider_id": "nebius",
"location": "NL"
}
}"""
IMPACT = EnvironmentImpact(
    carbon_g_co2=2.5, water_liters=0.01, energy_kwh=0.005, renewable_percent=85, provider_id="nebius", location="NL"
)
REQUEST = ImageRequest(model="flux-schnell", prompt=PROMPT, width=1024, height=1024)


def encode(request: ImageRequest, result: ImageResult) -> Any:
    return json.loads(msgspec.json.encode(melious.GENERATIONS.encode_result(result, request)))


def test_url_result_encodes_to_the_documented_shape() -> None:
    result = ImageResult(
        images=[GeneratedImage(url="https://img/1.png")],
        created=1699999999,
        model="flux-schnell",
        environment_impact=IMPACT,
    )
    encoded = encode(REQUEST, result)
    assert shape(encoded) == shape(json.loads(DOCUMENTED_RESPONSE))
    assert encoded["data"] == [{"url": "https://img/1.png"}]
    assert encoded["environment_impact"] == json.loads(DOCUMENTED_RESPONSE)["environment_impact"]


def test_b64_result_encodes_b64_json_only() -> None:
    request = msgspec.structs.replace(REQUEST, response_format=ResponseFormat.B64_JSON)
    result = ImageResult(images=[GeneratedImage(data=b"png bytes")], created=1, model="flux-schnell")
    encoded = encode(request, result)
    assert encoded == {"created": 1, "data": [{"b64_json": "cG5nIGJ5dGVz"}]}


def test_documented_response_decodes() -> None:
    result = melious.GENERATIONS.decode_response(DOCUMENTED_RESPONSE, REQUEST)
    assert result.created == 1699999999
    assert result.model == "flux-schnell"
    assert result.environment_impact == IMPACT
    assert [(image.url, image.b64_json, image.width, image.height) for image in result.images] == [
        ("https://..../generated-image.png", None, 1024, 1024)
    ]


def test_undocumented_response_is_upstream_error() -> None:
    with pytest.raises(GatewayError) as info:
        melious.GENERATIONS.decode_response(b'{"images": []}', REQUEST)
    assert info.value.code is ErrorCode.UPSTREAM_ERROR


# --- bad input ---


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        pytest.param(b'{"model": "flux-schnell"}', ErrorCode.INVALID_PROMPT, "prompt", id="missing-prompt"),
        pytest.param(b'{"prompt": ""}', ErrorCode.INVALID_PROMPT, "prompt", id="empty-prompt"),
        pytest.param(b'{"prompt": "  \\n "}', ErrorCode.INVALID_PROMPT, "prompt", id="blank-prompt"),
        pytest.param(b'{"prompt": 42}', ErrorCode.INVALID_PROMPT, "prompt", id="prompt-not-text"),
        pytest.param(b'{"prompt": "p", "n": "2"}', ErrorCode.INVALID_REQUEST, "n", id="n-not-int"),
        pytest.param(b'{"prompt": "p", "n": 0}', ErrorCode.INVALID_REQUEST, "n", id="n-zero"),
        pytest.param(b'{"prompt": "p", "n": 5}', ErrorCode.INVALID_REQUEST, "n", id="n-over-4"),
        pytest.param(b'{"prompt": "p", "size": "1024x1023"}', ErrorCode.INVALID_SIZE, "size", id="size-not-offered"),
        pytest.param(b'{"prompt": "p", "size": "auto"}', ErrorCode.INVALID_SIZE, "size", id="size-auto"),
        pytest.param(b'{"prompt": "p", "response_format": "png"}', ErrorCode.INVALID_REQUEST, "response_format"),
        pytest.param(b'{"prompt": "p", "user": 7}', ErrorCode.INVALID_REQUEST, "user", id="user-not-text"),
        pytest.param(b'["prompt"]', ErrorCode.INVALID_REQUEST, None, id="not-an-object"),
        pytest.param(b'{"prompt": ', ErrorCode.INVALID_REQUEST, None, id="not-json"),
    ],
)
def test_bad_requests_are_refused(body: bytes, code: ErrorCode, param: str | None) -> None:
    with pytest.raises(GatewayError) as info:
        melious.GENERATIONS.decode_json(body)
    assert (info.value.code, info.value.param, info.value.status) == (code, param, 400)


def test_outbound_refuses_what_melious_cannot_do() -> None:
    with pytest.raises(GatewayError) as info:
        melious.GENERATIONS.from_canonical(msgspec.structs.replace(REQUEST, width=640, height=480))
    assert (info.value.code, info.value.param) == (ErrorCode.INVALID_SIZE, "size")
    with pytest.raises(GatewayError) as info:
        melious.GENERATIONS.from_canonical(msgspec.structs.replace(REQUEST, n=5))
    assert (info.value.code, info.value.param) == (ErrorCode.INVALID_REQUEST, "n")


# --- errors ---


@pytest.mark.parametrize("row", documented_errors(), ids=lambda row: row.code.value)
def test_errors_render_the_documented_envelope(row: DocumentedError) -> None:
    rendered = json.loads(melious.ERRORS.render(GatewayError(row.code, "what went wrong", param="size")))
    assert rendered == {"error": {"code": row.melious, "message": "what went wrong"}}


def read_back(melious_code: str) -> ErrorCode:
    """The canonical code a Melious code is read as: the first row of the table that spells it so."""
    return next(row.code for row in documented_errors() if row.melious == melious_code)


def test_every_invalid_value_is_the_documented_code() -> None:
    """seeds/melious.txt names VALIDATION_INVALID_VALUE for "Invalid size or parameter", and no other."""
    for code in (ErrorCode.INVALID_REQUEST, ErrorCode.INVALID_PROMPT, ErrorCode.INVALID_SIZE):
        rendered = json.loads(melious.ERRORS.render(GatewayError(code, "m")))
        assert rendered["error"]["code"] == "VALIDATION_INVALID_VALUE"
    assert read_back("VALIDATION_INVALID_VALUE") is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("row", documented_errors(), ids=lambda row: row.code.value)
def test_errors_parse_every_documented_code(row: DocumentedError) -> None:
    body = json.dumps({"error": {"code": row.melious, "message": "upstream said no"}}).encode()
    error = melious.ERRORS.parse(row.status, body, retry_after=3.0)
    assert (error.code, error.message, error.status, error.retry_after) == (
        read_back(row.melious),
        "upstream said no",
        row.status,
        3.0,
    )


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda code: code.value)
def test_errors_round_trip(code: ErrorCode) -> None:
    """Canonical → Melious → canonical keeps the code, up to the codes Melious spells alike."""
    wire = json.loads(melious.ERRORS.render(GatewayError(code, "m")))["error"]["code"]
    error = melious.ERRORS.parse(code.http_status, melious.ERRORS.render(GatewayError(code, "m")))
    assert (error.code, error.message) == (read_back(wire), "m")


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        pytest.param(429, b'{"error": {"code": "SOMETHING_NEW", "message": "slow down"}}', ErrorCode.RATE_LIMITED),
        pytest.param(404, b'{"error": {"code": "SOMETHING_NEW", "message": "?"}}', ErrorCode.MODEL_NOT_FOUND),
        pytest.param(503, b"<html>Service Unavailable</html>", ErrorCode.OVERLOADED),
        pytest.param(500, b"", ErrorCode.UPSTREAM_ERROR),
        pytest.param(401, b'{"detail": "no"}', ErrorCode.UNAUTHORIZED),
    ],
)
def test_errors_fall_back_on_the_status(status: int, body: bytes, code: ErrorCode) -> None:
    assert melious.ERRORS.parse(status, body, retry_after=1.5).code is code


# --- property: canonical → wire → JSON → canonical keeps what Melious carries ---

prompts = st.text(min_size=1).filter(lambda text: re.search(r"\S", text) is not None)


@st.composite
def melious_requests(draw: st.DrawFn) -> ImageRequest:
    width, height = map(int, draw(st.sampled_from(melious.SIZES)).split("x"))
    return ImageRequest(
        model=draw(st.text()),
        prompt=draw(prompts),
        n=draw(st.integers(1, melious.MAX_N)),
        width=width,
        height=height,
        response_format=draw(st.sampled_from(ResponseFormat)),
        user=draw(st.none() | st.text()),
    )


@settings(max_examples=50)
@given(melious_requests())
def test_canonical_round_trips_through_the_wire(request: ImageRequest) -> None:
    body = msgspec.json.encode(melious.GENERATIONS.from_canonical(request))
    assert melious.GENERATIONS.decode_json(body) == request


# --- validation: the documented code, the field named, what it may hold ---

SIZE_WORDS = "one of 512x512, 768x768, 1024x1024, 1024x768, 768x1024, 1280x720, 720x1280"


@pytest.mark.parametrize(
    ("patch", "param", "message"),
    [
        pytest.param({"size": "256x256"}, "size", f"`size` must be {SIZE_WORDS}", id="size"),
        pytest.param({"size": 512}, "size", f"`size` must be {SIZE_WORDS}", id="size-type"),
        pytest.param(
            {"prompt": None},
            "prompt",
            "`prompt` is required: a text that is not empty or only spaces",
            id="prompt-missing",
        ),
        pytest.param(
            {"prompt": 42}, "prompt", "`prompt` must be a text that is not empty or only spaces", id="prompt-type"
        ),
        pytest.param(
            {"prompt": "  "}, "prompt", "`prompt` must be a text that is not empty or only spaces", id="prompt-blank"
        ),
        pytest.param({"n": 5}, "n", "`n` must be an integer from 1 to 4", id="n-range"),
        pytest.param({"n": "two"}, "n", "`n` must be an integer from 1 to 4", id="n-type"),
        pytest.param(
            {"response_format": "gif"},
            "response_format",
            "`response_format` must be one of b64_json, url",
            id="response_format",
        ),
        pytest.param({"user": 7}, "user", "`user` must be a string", id="user-type"),
    ],
)
def test_every_invalid_value_answers_the_documented_code_naming_the_field(
    patch: dict[str, Any], param: str, message: str
) -> None:
    body = {key: value for key, value in {"prompt": "a cat", **patch}.items() if value is not None}
    error = refusal(melious.GENERATIONS, body)
    assert (error.param, error.message) == (param, message)
    assert json.loads(melious.ERRORS.render(error)) == {
        "error": {"code": "VALIDATION_INVALID_VALUE", "message": message}
    }
    assert error.status == 400
