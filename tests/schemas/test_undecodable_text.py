"""Text that is not text, in every dialect: bytes that are not UTF-8, lone surrogates, nesting without end.

Each is a 400 ``invalid_request`` naming the field where it can be told, never an
exception that escapes the dialect (which the gateway would answer as a 500).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas import melious, nebul, nebulablock, openai, pomelo
from schemas.canonical import ErrorCode, GatewayError
from schemas.dialect import Endpoint

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108020000009077"
    "53de0000000c4944415478da63f8ffff3f0005fe02fea7d6a4d00000000049454e44ae426082"
)

# (endpoint, a valid body, a string field of that body besides the prompt)
JSON_ENDPOINTS: dict[str, tuple[Endpoint[Any, Any], dict[str, Any], str]] = {
    "melious": (melious.GENERATIONS, {"prompt": "ok", "size": "512x512"}, "size"),
    "nebul": (nebul.GENERATIONS, {"prompt": "ok", "model": "m"}, "model"),
    "openai": (openai.GENERATIONS, {"prompt": "ok", "model": "m"}, "model"),
    "pomelo-midjourney": (pomelo.MIDJOURNEY, {"prompt": "ok", "model": "5"}, "model"),
    "pomelo-flux": (pomelo.FLUX, {"prompt": "ok", "aspect_ratio": "1:1"}, "aspect_ratio"),
    "nebulablock-serverless": (
        nebulablock.SERVERLESS,
        {"prompt": "ok", "model": "m", "width": 512, "height": 512},
        "model",
    ),
    "nebulablock-v1": (nebulablock.V1, {"prompt": "ok", "model": "m"}, "model"),
}


def with_bytes(body: dict[str, Any], field: str, bad: bytes) -> bytes:
    return json.dumps({**body, field: "x@@y"}).encode().replace(b"@@", bad)


def refusal(call: Any, *args: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call(*args)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize("dialect", list(JSON_ENDPOINTS))
@pytest.mark.parametrize("bad", [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"])
def test_json_text_that_is_not_utf8_names_its_field(dialect: str, bad: bytes) -> None:
    endpoint, body, other = JSON_ENDPOINTS[dialect]
    endpoint.decode_json(json.dumps(body).encode())  # the body itself is fine
    for field in ("prompt", other):
        error = refusal(endpoint.decode_json, with_bytes(body, field, bad))
        assert error.code is ErrorCode.INVALID_REQUEST
        assert error.param == field and f"`{field}`" in str(error) and "UTF-8" in str(error)


@pytest.mark.parametrize("dialect", list(JSON_ENDPOINTS))
def test_json_that_cannot_be_read_at_all(dialect: str) -> None:
    endpoint, body, _ = JSON_ENDPOINTS[dialect]
    text = json.dumps(body)
    for raw in (
        b"\xff" + text.encode(),  # outside any string: no field to name
        b"[" * 100_000 + b"]" * 100_000,
        text[:-1].encode() + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        json.dumps({**body, "prompt": "\ud800"}).encode(),  # a lone surrogate, as a \u escape
        json.dumps({**body, "prompt": "a\udc00b"}).encode(),
    ):
        assert refusal(endpoint.decode_json, raw).code in (ErrorCode.INVALID_REQUEST, ErrorCode.INVALID_PROMPT)


@pytest.mark.parametrize("endpoint", [nebul.EDITS, openai.EDITS])
def test_multipart_text_as_bytes_is_decoded_or_refused_by_name(endpoint: Endpoint[Any, Any]) -> None:
    form = {"model": "m", "prompt": b"a hat", "image": [PNG], "mask": PNG}
    assert endpoint.decode_form(form).prompt == "a hat"  # text parts may come as their raw bytes
    for field in ("prompt", "model"):
        error = refusal(endpoint.decode_form, {**form, field: b"\xff\xfe"})
        assert error.code is ErrorCode.INVALID_REQUEST and error.param == field


def test_multipart_file_fields_stay_bytes() -> None:
    request = nebul.EDITS.decode_form({"model": "m", "prompt": "p", "image": [PNG], "mask": PNG})
    assert request.images == (PNG,)
    assert request.mask == PNG
