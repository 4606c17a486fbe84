"""schemas.imageforms: the one rule for each image's form, and base64 carried as a slice of the upstream's answer.

A provider answer read with slices must give every client dialect the same bytes as the
same answer read into strings; bodies a slice cannot carry (an escape, a non-ASCII byte)
and bodies of the wrong shape go the ordinary way, with the ordinary errors.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import melious, nebul, nebulablock, openai, worker
from schemas.canonical import (
    ErrorCode,
    GatewayError,
    GeneratedImage,
    ImageRequest,
    InputImage,
    ResponseFormat,
    decode_hook,
    encode_hook,
)
from schemas.dialect import Endpoint
from schemas.imageforms import CHUNK, Conversion, Pieces, conversion, encode_answer, sliceable

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # every byte value: base64 with '+' and '/'
B64 = [base64.b64encode(PNG + bytes([i])).decode() for i in range(3)]
REQUEST = ImageRequest(model="m", n=3, width=1024, height=1024, response_format=ResponseFormat.B64_JSON)


def upstream_bodies() -> dict[str, tuple[Endpoint[Any, Any], dict[str, Any]]]:
    """One base64 answer of each provider that answers base64, as it documents it."""
    items = [{"b64_json": text} for text in B64]
    return {
        "melious": (melious.GENERATIONS, {"created": 1700000000, "data": items}),
        "nebul": (nebul.GENERATIONS, {"created": 1700000000, "data": [{**i, "url": None} for i in items]}),
        "nebulablock": (
            nebulablock.SERVERLESS,
            {"model": "m", "object": "list", "data": [{"index": n, **i} for n, i in enumerate(items)]},
        ),
        "nebulablock-v1": (
            nebulablock.V1,
            {
                "status": "success",
                "data": {"images": [{"url": None, **i} for i in items], "usage": {"images_generated": 3}},
            },
        ),
    }


CLIENTS = [melious.GENERATIONS, nebul.GENERATIONS, openai.GENERATIONS, nebulablock.SERVERLESS, nebulablock.V1]


@pytest.mark.parametrize("provider", list(upstream_bodies()))
def test_a_sliced_answer_gives_every_client_the_same_bytes(provider: str) -> None:
    endpoint, answer = upstream_bodies()[provider]
    body = bytearray(json.dumps(answer).encode())
    sliced = endpoint.decode_response(body, REQUEST, slices=True)
    assert all(isinstance(image.b64_json, msgspec.Raw) for image in sliced.images)  # not decoded into str
    for client in CLIENTS:
        copied = endpoint.decode_response(bytes(body), REQUEST)
        sliced = endpoint.decode_response(body, REQUEST, slices=True)
        before = msgspec.json.encode(client.encode_result(copied, REQUEST))
        assert msgspec.json.encode(client.encode_result(sliced, REQUEST)) == before
        assert json.loads(before)  # and it is JSON holding the upstream's text
        assert all(text in before.decode() for text in B64)


def test_a_slice_gives_the_same_bytes_and_text_when_asked() -> None:
    endpoint, answer = upstream_bodies()["melious"]
    images = endpoint.decode_response(json.dumps(answer).encode(), REQUEST, slices=True).images
    assert [image.as_bytes() for image in images] == [base64.b64decode(text) for text in B64]
    assert [image.as_b64() for image in images] == B64
    assert [image.as_json_b64() for image in images] == B64  # once text, stays text


@pytest.mark.parametrize("text", ["abc\\/def", "caf\u00e9"])
def test_a_body_a_slice_cannot_carry_is_read_into_strings(text: str) -> None:
    body = json.dumps({"created": 1, "data": [{"b64_json": text}]}, ensure_ascii=False).encode()
    assert not sliceable(body)
    image = melious.GENERATIONS.decode_response(body, REQUEST, slices=True).images[0]
    assert image.b64_json == json.loads(body)["data"][0]["b64_json"]


@pytest.mark.parametrize(
    ("provider", "broken"),
    [
        ("melious", {"created": 1, "data": [{"b64_json": 12}]}),
        ("melious", {"created": 1, "data": [{"b64_json": {"x": 1}}]}),
        ("nebulablock", {"data": [{"index": 0, "b64_json": None}]}),  # required there
        ("nebulablock", {"data": [{"index": 0}]}),
    ],
)
def test_a_wrong_shape_is_the_same_upstream_error_with_slices(provider: str, broken: dict[str, Any]) -> None:
    endpoint = upstream_bodies()[provider][0]
    body = json.dumps(broken).encode()
    errors = []
    for slices in (False, True):
        with pytest.raises(GatewayError) as caught:
            endpoint.decode_response(body, REQUEST, slices=slices)
        errors.append(caught.value.code)
    assert errors == [ErrorCode.UPSTREAM_ERROR, ErrorCode.UPSTREAM_ERROR]


def test_null_where_allowed_is_no_image_text() -> None:
    body = json.dumps({"created": 1, "data": [{"url": "https://x/1.png", "b64_json": None}]}).encode()
    image = nebul.GENERATIONS.decode_response(body, REQUEST, slices=True).images[0]
    assert (image.url, image.b64_json) == ("https://x/1.png", None)


@pytest.mark.parametrize(
    ("image", "wanted", "expected"),
    [
        (GeneratedImage(url="https://p/1.png"), ResponseFormat.B64_JSON, Conversion.FETCH),
        (GeneratedImage(url="https://p/1.png"), ResponseFormat.URL, Conversion.KEEP),
        (GeneratedImage(data=PNG), ResponseFormat.URL, Conversion.STORE),
        (GeneratedImage(b64_json=B64[0]), ResponseFormat.URL, Conversion.STORE),
        (GeneratedImage(data=PNG), ResponseFormat.B64_JSON, Conversion.KEEP),
        (GeneratedImage(b64_json=B64[0]), ResponseFormat.B64_JSON, Conversion.KEEP),
    ],
)
def test_one_rule_decides_each_images_form(image: GeneratedImage, wanted: ResponseFormat, expected: Conversion) -> None:
    assert conversion(image, wanted) is expected


def heavy_answer() -> tuple[bytearray, list[str]]:
    texts = [base64.b64encode(PNG * (30 + 80 * i) + bytes([i])).decode() for i in range(3)]  # 0.4 to 2.6 MB
    return bytearray(json.dumps({"created": 1, "data": [{"b64_json": t} for t in texts]}).encode()), texts


@pytest.mark.parametrize("client", CLIENTS)
def test_a_heavy_answer_in_pieces_is_the_same_bytes(client: Endpoint[Any, Any]) -> None:
    body, texts = heavy_answer()
    before = msgspec.json.encode(
        client.encode_result(melious.GENERATIONS.decode_response(bytes(body), REQUEST), REQUEST)
    )
    wire = client.encode_result(melious.GENERATIONS.decode_response(body, REQUEST, slices=True), REQUEST)
    answer = encode_answer(wire)
    assert isinstance(answer, Pieces)
    slices = [part for part in answer.parts if isinstance(part, memoryview)]
    assert [bytes(part) for part in slices] == [f'"{t}"'.encode() for t in texts]  # views, not copies
    assert all(part.obj is not None for part in slices)
    assert bytes(answer) == before and len(answer) == len(before)
    assert b"".join(bytes(chunk) for chunk in answer.chunks()) == before
    assert max(len(chunk) for chunk in answer.chunks()) <= CHUNK
    assert msgspec.json.encode(wire) == before  # the wire Struct holds its slices again


def test_a_light_answer_is_plain_bytes() -> None:
    endpoint, answer = upstream_bodies()["melious"]
    result = endpoint.decode_response(json.dumps(answer).encode(), REQUEST, slices=True)
    assert isinstance(encode_answer(openai.GENERATIONS.encode_result(result, REQUEST)), bytes)


class _Frozen(msgspec.Struct, frozen=True):
    b64_json: Any


def test_a_frozen_answer_keeps_its_slices_and_is_written_whole() -> None:
    body, texts = heavy_answer()
    image = melious.GENERATIONS.decode_response(body, REQUEST, slices=True).images[0]
    wire = _Frozen(b64_json=image.as_json_b64())
    assert encode_answer(wire) == msgspec.json.encode({"b64_json": texts[0]})


# --------------------------------------------------------------------------- input images (requests)


def python_b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error is one
        return None


@settings(max_examples=3000, deadline=None, database=None)
@given(st.text(alphabet="AQw09+/=-_ \n\u00e9", max_size=14))
def test_input_base64_is_checked_as_python_decodes_it(text: str) -> None:
    """The check without a decode takes exactly what ``b64decode(validate=True)`` takes (its excess
    padding after a whole group included), and the text stands for the same bytes."""
    expected = python_b64(text)
    try:
        image = InputImage.from_b64(text)
    except ValueError:
        assert expected is None
        return
    assert expected is not None
    assert (image.size, image.head(), image.decoded) == (len(expected), expected[:48], False)
    assert python_b64(image.as_b64()) == expected and image.as_bytes() == expected


@pytest.mark.parametrize("text", ["AAAA====", "AAAAAA==", "AAAAAAA=", "AAAA", "", "QUJD"])
def test_input_base64_edge_cases(text: str) -> None:
    image = InputImage.from_b64(text)
    assert image.as_bytes() == base64.b64decode(text, validate=True)
    assert image.size == len(image.as_bytes())


@pytest.mark.parametrize("text", ["AAAAA=", "AAAAAA=", "AAAAAA===", "AA==A", "=", "==AA", "AAA", "AA AA", "AA\nAA"])
def test_input_base64_refusals(text: str) -> None:
    assert python_b64(text) is None
    with pytest.raises(ValueError, match="base64"):
        InputImage.from_b64(text)


def test_an_input_image_written_down_reads_back_whatever_its_form() -> None:
    """The worker protocol (JSON) and the job queue (msgpack) carry an input in its held form: the JSON
    is the same whether the image is held as bytes or as base64 text, and each reads back equal."""
    as_text = ImageRequest(model="m", images=(InputImage.from_b64(B64[1]),), mask=InputImage.from_b64(B64[2]))
    as_bytes = ImageRequest(model="m", images=(PNG + b"\x01",), mask=PNG + b"\x02")
    assert worker.encode_request(as_text) == worker.encode_request(as_bytes)
    assert not as_text.images[0].decoded  # the text went into the JSON as it is
    for request in (as_text, as_bytes):
        assert worker.decode_request(worker.encode_request(request)) == as_bytes
        queued = msgspec.msgpack.encode(request, enc_hook=encode_hook)
        assert msgspec.msgpack.decode(queued, type=ImageRequest, dec_hook=decode_hook) == as_bytes


def test_a_worker_request_with_bad_base64_is_refused() -> None:
    body = worker.encode_request(ImageRequest(model="m", images=(PNG,))).replace(b'["iVBOR', b'["%VBOR')
    with pytest.raises(GatewayError) as raised:
        worker.decode_request(body)
    assert raised.value.code is ErrorCode.INVALID_REQUEST and "base64" in raised.value.message


def test_an_input_image_never_shows_its_content() -> None:
    assert repr(InputImage.from_b64(B64[0])) == f"InputImage(base64, {len(PNG) + 1} bytes)"
    assert repr(InputImage(PNG)) == f"InputImage(bytes, {len(PNG)} bytes)"
