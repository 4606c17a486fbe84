"""The NebulaBlock dialect against its documents (seeds/nebulablock-gitbook.txt, nebulablock.md),
DIALECTS.md and docs/errors.md."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import nebul
from schemas.canonical import (
    ErrorCode,
    GatewayError,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    InputImage,
    Operation,
    ResponseFormat,
    Timings,
)
from schemas.nebulablock import ERRORS, SERVERLESS, V1
from tests.schemas.test_dialect import refusal


def png(width: int, height: int, grey: int = 0x80) -> bytes:
    """A real PNG (8-bit greyscale, one shade), built with the standard library."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress((b"\x00" + bytes([grey]) * width) * height)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


IMAGE = png(8, 8)
MASK = png(8, 8, grey=0xFF)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- the documents' examples, verbatim ---

TEXT_TO_IMAGE_CURL = b"""{
    "model": "stabilityai/stable-diffusion-xl-base-1.0",
    "prompt": "insert your prompt here",
    "num_steps": 25,
    "guidance_scale": 9,
    "width": 1024,
    "height": 1024,
    "negative_prompt": null
}"""
IMAGE_TO_IMAGE_CURL = """{
    "model":"black-forest-labs/FLUX.1-Fill-dev",
    "prompt": "a red baseball cap",
    "num_steps": 40,
    "guidance_scale": 4.5,
    "width": 1024,
    "height": 1024,
    "image": "/9j/4\u2026/Z",
    "mask": "/9j/4\u2026ACgD/9k="
}"""
SERVERLESS_EXAMPLE_RESPONSE = json.loads("""{
    "model": "black-forest-labs/FLUX.1-schnell",
    "object": "list",
    "data": [
        {
            "timings": {
                "inference": 13.366829872131348
            },
            "index": 0,
            "b64_json": "sdj23kjjk2..."
        }
    ],
    "message": "Image generated successfully",
    "status": "success"
}""")
V1_CURL = b"""{
    "model": "dall-e-3",
    "prompt": "A serene mountain lake at sunset",
    "n": 1,
    "size": "1024x1024",
    "quality": "hd",
    "style": "natural"
  }"""
V1_EXAMPLE_RESPONSE = json.loads("""{
  "status": "success",
  "data": {
    "images": [
      {
        "url": "https://storage.nebulablock.com/generated/abc123.png",
        "b64_json": null
      }
    ],
    "usage": {
      "images_generated": 1,
      "resolution": "1024x1024"
    }
  }
}""")
ERROR_EXAMPLE_RESPONSE = json.loads("""{
  "status": "error",
  "error": {
    "code": "content_policy_violation",
    "message": "Your request was rejected as it violates our content policy",
    "details": {
      "reason": "Contains prohibited content"
    }
  }
}""")


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def shape(value: Any) -> Any:
    """Field names and nesting, in order, without the values."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(item) for item in value]
    return None


def wire(struct_: msgspec.Struct) -> Any:
    return json.loads(msgspec.json.encode(struct_))


def raises(endpoint: Any, payload: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        endpoint.decode_json(payload if isinstance(payload, bytes) else body(payload))
    return info.value


# --- serverless: /api/v1/images/generation ---


def test_serverless_text_to_image_curl_decodes() -> None:
    assert SERVERLESS.decode_json(TEXT_TO_IMAGE_CURL) == ImageRequest(
        model="stabilityai/stable-diffusion-xl-base-1.0",
        prompt="insert your prompt here",
        width=1024,
        height=1024,
        steps=25,
        guidance=9.0,
        response_format=ResponseFormat.B64_JSON,
    )


def test_serverless_image_to_image_curl_decodes_with_a_real_image() -> None:
    payload = json.loads(IMAGE_TO_IMAGE_CURL) | {"image": b64(IMAGE), "mask": b64(MASK)}
    assert SERVERLESS.decode_json(body(payload)) == ImageRequest(
        model="black-forest-labs/FLUX.1-Fill-dev",
        prompt="a red baseball cap",
        operation=Operation.EDIT,
        width=1024,
        height=1024,
        steps=40,
        guidance=4.5,
        response_format=ResponseFormat.B64_JSON,
        images=(IMAGE,),
        mask=MASK,
    )


def test_serverless_image_to_image_curl_as_printed_is_refused() -> None:
    # The document's base64 is truncated with an ellipsis: "/9j/4…/Z" is not base64.
    error = raises(SERVERLESS, IMAGE_TO_IMAGE_CURL.encode())
    assert (error.code, error.param, error.status) == (ErrorCode.INVALID_REQUEST, "image", 400)
    assert "base64" in error.message


def test_serverless_accepts_a_data_url() -> None:
    payload = {"model": "m", "prompt": "p", "image": "data:image/png;base64," + b64(IMAGE)}
    assert SERVERLESS.decode_json(body(payload)).images == (IMAGE,)


def test_serverless_minimal_request() -> None:
    assert SERVERLESS.decode_json(body({"model": "m", "prompt": "p"})) == ImageRequest(
        model="m", prompt="p", response_format=ResponseFormat.B64_JSON
    )


@pytest.mark.parametrize(
    ("payload", "code", "param"),
    [
        ({"model": "m"}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"model": "m", "prompt": ""}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"model": "m", "prompt": "  "}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"model": "m", "prompt": ["a", "cat"]}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"prompt": "p"}, ErrorCode.INVALID_REQUEST, "model"),
        ({"model": "", "prompt": "p"}, ErrorCode.INVALID_REQUEST, "model"),
        ({"model": "m", "prompt": "p", "num_steps": "many"}, ErrorCode.INVALID_REQUEST, "num_steps"),
        ({"model": "m", "prompt": "p", "num_steps": 0}, ErrorCode.INVALID_REQUEST, "num_steps"),
        ({"model": "m", "prompt": "p", "guidance_scale": "high"}, ErrorCode.INVALID_REQUEST, "guidance_scale"),
        ({"model": "m", "prompt": "p", "guidance_scale": -1}, ErrorCode.INVALID_REQUEST, "guidance_scale"),
        ({"model": "m", "prompt": "p", "width": "1024"}, ErrorCode.INVALID_SIZE, "width"),
        ({"model": "m", "prompt": "p", "width": 4096}, ErrorCode.INVALID_SIZE, "width"),
        ({"model": "m", "prompt": "p", "height": 0}, ErrorCode.INVALID_SIZE, "height"),
        ({"model": "m", "prompt": "p", "image": 5}, ErrorCode.INVALID_REQUEST, "image"),
        ({"model": "m", "prompt": "p", "image": "not base64!"}, ErrorCode.INVALID_REQUEST, "image"),
        ({"model": "m", "prompt": "p", "image": b64(b"hello, not an image")}, ErrorCode.INVALID_REQUEST, "image"),
        ({"model": "m", "prompt": "p", "image": b64(IMAGE), "mask": "%%%"}, ErrorCode.INVALID_REQUEST, "mask"),
        ({"model": "m", "prompt": "p", "image": b64(IMAGE), "mask": b64(b"GIF89a")}, ErrorCode.INVALID_REQUEST, "mask"),
        ({"model": "m", "prompt": "p", "mask": b64(MASK)}, ErrorCode.INVALID_REQUEST, "mask"),
        ([], ErrorCode.INVALID_REQUEST, None),
        (b"model=m&prompt=p", ErrorCode.INVALID_REQUEST, None),
    ],
)
def test_serverless_bad_requests(payload: Any, code: ErrorCode, param: str | None) -> None:
    error = raises(SERVERLESS, payload)
    assert (error.code, error.param, error.status) == (code, param, 400)


def serverless_result(**changes: Any) -> ImageResult:
    fields: dict[str, Any] = {
        "images": [GeneratedImage(b64_json="sdj23kjjk2...")],
        "created": 1700000000,
        "model": "flux-schnell",
        "timings": Timings(inference=13.366829872131348, total=14.0),
    }
    return ImageResult(**(fields | changes))


def test_serverless_response_is_the_documented_one() -> None:
    request = SERVERLESS.decode_json(body({"model": "black-forest-labs/FLUX.1-schnell", "prompt": "p"}))
    encoded = wire(SERVERLESS.encode_result(serverless_result(), request))
    assert encoded == SERVERLESS_EXAMPLE_RESPONSE
    assert shape(encoded) == shape(SERVERLESS_EXAMPLE_RESPONSE)


def test_serverless_response_carries_the_timing_on_every_image() -> None:
    request = SERVERLESS.decode_json(body({"model": "m", "prompt": "p"}))
    result = serverless_result(images=[GeneratedImage(data=IMAGE), GeneratedImage(data=MASK)])
    encoded = wire(SERVERLESS.encode_result(result, request))
    assert [(item["index"], item["timings"]["inference"]) for item in encoded["data"]] == [
        (0, 13.366829872131348),
        (1, 13.366829872131348),
    ]
    assert [base64.b64decode(item["b64_json"]) for item in encoded["data"]] == [IMAGE, MASK]


def test_serverless_response_never_has_a_null_timing() -> None:
    request = SERVERLESS.decode_json(body({"model": "m", "prompt": "p"}))
    encoded = wire(SERVERLESS.encode_result(serverless_result(timings=Timings()), request))
    assert encoded["data"][0]["timings"] == {"inference": 0.0}


def test_serverless_example_response_decodes() -> None:
    request = SERVERLESS.decode_json(TEXT_TO_IMAGE_CURL)
    result = SERVERLESS.decode_response(body(SERVERLESS_EXAMPLE_RESPONSE), request)
    assert [(image.b64_json, image.width, image.height) for image in result.images] == [("sdj23kjjk2...", 1024, 1024)]
    assert result.timings.inference == 13.366829872131348
    assert result.model == "stabilityai/stable-diffusion-xl-base-1.0"


def test_serverless_decode_takes_the_longest_inference_and_orders_by_index() -> None:
    answer = {
        "model": "m",
        "object": "list",
        "data": [
            {"timings": {"inference": 1.5}, "index": 1, "b64_json": "second"},
            {"timings": {"inference": 4.25}, "index": 0, "b64_json": "first"},
        ],
        "message": "Image generated successfully",
        "status": "success",
    }
    result = SERVERLESS.decode_response(body(answer), ImageRequest(model="m", prompt="p"))
    assert [image.b64_json for image in result.images] == ["first", "second"]
    assert result.timings.inference == 4.25


def test_serverless_decode_without_timings() -> None:
    answer = {"data": [{"index": 0, "b64_json": "x"}]}
    result = SERVERLESS.decode_response(body(answer), ImageRequest(model="m", prompt="p"))
    assert result.timings.inference is None


def test_serverless_decode_refuses_an_undocumented_answer() -> None:
    with pytest.raises(GatewayError) as info:
        SERVERLESS.decode_response(b'{"images": []}', ImageRequest(model="m", prompt="p"))
    assert info.value.code is ErrorCode.UPSTREAM_ERROR


def test_serverless_outbound_edit() -> None:
    request = ImageRequest(model="m", prompt="p", operation=Operation.EDIT, images=(IMAGE,), mask=MASK, guidance=3.5)
    assert wire(SERVERLESS.from_canonical(request)) == {
        "model": "m",
        "prompt": "p",
        "guidance_scale": 3.5,
        "image": b64(IMAGE),
        "mask": b64(MASK),
    }


# --- base64 inputs: the client's text goes on to NebulaBlock as it came (issue 15) ---

B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def off_canon(data: bytes) -> str:
    """Base64 that decodes to ``data`` but that no encoder writes: the last character's unused low bits
    set. Text passed on as it came keeps them; text decoded and encoded again loses them."""
    text = b64(data)
    assert len(data) % 3, "needs unused bits"
    body, padding = text.rstrip("="), "=" * text.count("=")
    last = B64_ALPHABET[B64_ALPHABET.index(body[-1]) | 1]
    odd = body[:-1] + last + padding
    assert odd != text and base64.b64decode(odd, validate=True) == data
    return odd


# Both with unused bits in their last base64 character.
PICTURE = IMAGE if len(IMAGE) % 3 else IMAGE + b"\x00"
STENCIL = MASK if len(MASK) % 3 else MASK + b"\x00"


def test_serverless_edit_goes_to_nebulablock_with_the_clients_base64_undecoded() -> None:
    image, mask = off_canon(PICTURE), off_canon(STENCIL)
    request = SERVERLESS.decode_json(body({"model": "m", "prompt": "p", "image": image, "mask": mask}))
    inputs = [item for item in (*request.images, request.mask) if item is not None]
    seen = [(item.size, item.head()[:8]) for item in inputs]  # read from the text: its length, its first bytes
    assert seen == [(len(PICTURE), PICTURE[:8]), (len(STENCIL), STENCIL[:8])]
    outbound = SERVERLESS.from_canonical(request)
    assert (outbound.image, outbound.mask) == (image, mask)  # a decode and encode would write b64(PICTURE)
    assert not any(item.decoded for item in inputs)  # and none happened: no bytes were made


def test_serverless_data_url_goes_on_as_its_base64() -> None:
    text = off_canon(PICTURE)
    request = SERVERLESS.decode_json(body({"model": "m", "prompt": "p", "image": "data:image/png;base64," + text}))
    assert SERVERLESS.from_canonical(request).image == text
    assert not request.images[0].decoded


def test_serverless_base64_input_goes_to_a_multipart_provider_as_its_bytes() -> None:
    request = SERVERLESS.decode_json(
        body({"model": "m", "prompt": "p", "image": off_canon(PICTURE), "mask": off_canon(STENCIL)})
    )
    outbound = nebul.EDITS.from_canonical(request)
    assert (outbound.image, outbound.mask) == ([PICTURE], STENCIL)
    assert request.images[0].decoded and request.mask is not None and request.mask.decoded  # decoded once, kept


def test_bytes_input_goes_to_nebulablock_encoded_once() -> None:
    request = ImageRequest(model="m", prompt="p", operation=Operation.EDIT, images=(InputImage(PICTURE),))
    first = SERVERLESS.from_canonical(request).image
    assert first == b64(PICTURE) and SERVERLESS.from_canonical(request).image is first


@pytest.mark.parametrize(
    ("request_", "code", "param"),
    [
        (
            ImageRequest(model="m", prompt="p", operation=Operation.VARIATION, images=(IMAGE,)),
            ErrorCode.OPERATION_NOT_SUPPORTED,
            None,
        ),
        (
            ImageRequest(model="m", prompt="p", operation=Operation.EDIT, images=(IMAGE, MASK)),
            ErrorCode.INVALID_REQUEST,
            "image",
        ),
        (ImageRequest(model="m", prompt="p", operation=Operation.EDIT), ErrorCode.INVALID_REQUEST, "image"),
        (ImageRequest(model="m", prompt="p", n=2), ErrorCode.INVALID_REQUEST, "n"),
        (ImageRequest(model="m", prompt="p", width=4096, height=1024), ErrorCode.INVALID_SIZE, "size"),
    ],
)
def test_serverless_outbound_refuses_what_it_cannot_carry(
    request_: ImageRequest, code: ErrorCode, param: str | None
) -> None:
    with pytest.raises(GatewayError) as info:
        SERVERLESS.from_canonical(request_)
    assert (info.value.code, info.value.param) == (code, param)


# --- v1: /v1/images/generate ---


def test_v1_curl_decodes() -> None:
    assert V1.decode_json(V1_CURL) == ImageRequest(
        model="dall-e-3",
        prompt="A serene mountain lake at sunset",
        n=1,
        width=1024,
        height=1024,
        quality="hd",
        style="natural",
        response_format=ResponseFormat.URL,
    )


def test_v1_defaults() -> None:
    assert V1.decode_json(body({"model": "sdxl", "prompt": "p"})) == ImageRequest(
        model="sdxl", prompt="p", quality="standard", style="natural", response_format=ResponseFormat.URL
    )


def test_v1_base64_and_negative_prompt() -> None:
    payload = {"model": "sdxl", "prompt": "p", "negative_prompt": "blur", "response_format": "b64_json", "n": 10}
    request = V1.decode_json(body(payload))
    assert (request.negative_prompt, request.response_format, request.n) == ("blur", ResponseFormat.B64_JSON, 10)


@pytest.mark.parametrize(
    ("payload", "code", "param"),
    [
        ({"model": "m"}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"model": "m", "prompt": ""}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"model": "m", "prompt": "\t"}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"model": "m", "prompt": 7}, ErrorCode.INVALID_PROMPT, "prompt"),
        ({"prompt": "p"}, ErrorCode.INVALID_REQUEST, "model"),
        ({"model": 3, "prompt": "p"}, ErrorCode.INVALID_REQUEST, "model"),
        ({"model": "m", "prompt": "p", "n": 11}, ErrorCode.INVALID_REQUEST, "n"),
        ({"model": "m", "prompt": "p", "n": 0}, ErrorCode.INVALID_REQUEST, "n"),
        ({"model": "m", "prompt": "p", "n": "1"}, ErrorCode.INVALID_REQUEST, "n"),
        ({"model": "m", "prompt": "p", "size": "big"}, ErrorCode.INVALID_SIZE, "size"),
        ({"model": "m", "prompt": "p", "size": "1024*1024"}, ErrorCode.INVALID_SIZE, "size"),
        ({"model": "m", "prompt": "p", "size": "auto"}, ErrorCode.INVALID_SIZE, "size"),
        ({"model": "m", "prompt": "p", "size": "4096x4096"}, ErrorCode.INVALID_SIZE, "size"),
        ({"model": "m", "prompt": "p", "size": "0x0"}, ErrorCode.INVALID_SIZE, "size"),
        ({"model": "m", "prompt": "p", "size": 1024}, ErrorCode.INVALID_SIZE, "size"),
        ({"model": "m", "prompt": "p", "quality": "ultra"}, ErrorCode.INVALID_REQUEST, "quality"),
        ({"model": "m", "prompt": "p", "style": "anime"}, ErrorCode.INVALID_REQUEST, "style"),
        ({"model": "m", "prompt": "p", "response_format": "png"}, ErrorCode.INVALID_REQUEST, "response_format"),
        (b"", ErrorCode.INVALID_REQUEST, None),
    ],
)
def test_v1_bad_requests(payload: Any, code: ErrorCode, param: str | None) -> None:
    error = raises(V1, payload)
    assert (error.code, error.param, error.status) == (code, param, 400)


def test_v1_response_is_the_documented_one() -> None:
    request = V1.decode_json(V1_CURL)
    result = ImageResult(
        images=[GeneratedImage(url="https://storage.nebulablock.com/generated/abc123.png")],
        created=1700000000,
        model="dall-e-3",
    )
    encoded = wire(V1.encode_result(result, request))
    assert encoded == V1_EXAMPLE_RESPONSE
    assert shape(encoded) == shape(V1_EXAMPLE_RESPONSE)


def test_v1_base64_response_keeps_both_keys() -> None:
    request = V1.decode_json(body({"model": "m", "prompt": "p", "response_format": "b64_json"}))
    result = ImageResult(images=[GeneratedImage(data=IMAGE)] * 2, created=1700000000, model="m")
    encoded = wire(V1.encode_result(result, request))
    assert shape(encoded) == [
        ("status", None),
        (
            "data",
            [
                ("images", [[("url", None), ("b64_json", None)]] * 2),
                ("usage", [("images_generated", None), ("resolution", None)]),
            ],
        ),
    ]
    assert encoded["data"]["images"][0] == {"url": None, "b64_json": b64(IMAGE)}
    # No size asked for and none on the image: read it from the PNG itself.
    assert encoded["data"]["usage"] == {"images_generated": 2, "resolution": "8x8"}


@pytest.mark.parametrize(
    ("image", "size", "resolution"),
    [
        (GeneratedImage(url="u", width=768, height=512), "1024x1024", "768x512"),
        (GeneratedImage(url="u"), "1024x1024", "1024x1024"),
        (GeneratedImage(url="u"), None, ""),
    ],
)
def test_v1_resolution_from_the_image_or_the_request(image: GeneratedImage, size: str | None, resolution: str) -> None:
    payload = {"model": "m", "prompt": "p"} | ({"size": size} if size else {})
    request = V1.decode_json(body(payload))
    result = ImageResult(images=[image], created=1700000000, model="m")
    assert wire(V1.encode_result(result, request))["data"]["usage"]["resolution"] == resolution


def test_v1_example_response_decodes() -> None:
    request = V1.decode_json(V1_CURL)
    result = V1.decode_response(body(V1_EXAMPLE_RESPONSE), request)
    assert [(image.url, image.b64_json, image.width, image.height) for image in result.images] == [
        ("https://storage.nebulablock.com/generated/abc123.png", None, 1024, 1024)
    ]
    assert result.usage.images_generated == 1
    assert wire(V1.encode_result(result, request)) == V1_EXAMPLE_RESPONSE


def test_v1_decode_with_an_odd_resolution_keeps_the_request_size() -> None:
    answer = {
        "status": "success",
        "data": {"images": [{"url": "u", "b64_json": None}], "usage": {"images_generated": 1, "resolution": "large"}},
    }
    result = V1.decode_response(body(answer), ImageRequest(model="m", prompt="p", width=512, height=512))
    assert (result.images[0].width, result.images[0].height) == (512, 512)


def test_v1_outbound_falls_back_on_its_own_defaults() -> None:
    request = ImageRequest(model="m", prompt="p", quality="auto", style="anime", width=512, height=768)
    assert wire(V1.from_canonical(request)) == {"model": "m", "prompt": "p", "size": "512x768"}


@pytest.mark.parametrize(
    ("request_", "code", "param"),
    [
        (
            ImageRequest(model="m", prompt="p", operation=Operation.EDIT, images=(IMAGE,)),
            ErrorCode.OPERATION_NOT_SUPPORTED,
            None,
        ),
        (ImageRequest(model="m", prompt="p", n=11), ErrorCode.INVALID_REQUEST, "n"),
        (ImageRequest(model="m", prompt="p", width=32, height=32), ErrorCode.INVALID_SIZE, "size"),
    ],
)
def test_v1_outbound_refuses_what_it_cannot_carry(request_: ImageRequest, code: ErrorCode, param: str | None) -> None:
    with pytest.raises(GatewayError) as info:
        V1.from_canonical(request_)
    assert (info.value.code, info.value.param) == (code, param)


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
    rendered = json.loads(ERRORS.render(GatewayError(code, "it went wrong")))
    assert shape(rendered) == shape(ERROR_EXAMPLE_RESPONSE)
    assert rendered["status"] == "error"
    assert (rendered["error"]["code"], rendered["error"]["message"]) == (wire_code, "it went wrong")
    assert rendered["error"]["details"]["reason"]
    parsed = ERRORS.parse(code.http_status, body(rendered), retry_after=2.0)
    assert (parsed.code, parsed.message, parsed.status, parsed.retry_after) == (
        code,
        "it went wrong",
        code.http_status,
        2.0,
    )


def test_errors_cover_the_whole_taxonomy() -> None:
    for code in ErrorCode:
        assert ERRORS.parse(code.http_status, ERRORS.render(GatewayError(code, "m"))).code is code


def test_documented_error_response_parses_and_renders_back() -> None:
    parsed = ERRORS.parse(400, body(ERROR_EXAMPLE_RESPONSE))
    assert (parsed.code, parsed.message) == (
        ErrorCode.CONTENT_POLICY,
        "Your request was rejected as it violates our content policy",
    )
    rendered = json.loads(ERRORS.render(parsed))
    assert shape(rendered) == shape(ERROR_EXAMPLE_RESPONSE)
    assert rendered["error"]["code"] == "content_policy_violation"
    assert rendered["error"]["message"] == ERROR_EXAMPLE_RESPONSE["error"]["message"]


def test_bad_request_renders_in_the_nebulablock_envelope() -> None:
    rendered = json.loads(ERRORS.render(raises(V1, {"model": "m", "prompt": "p", "size": "big"})))
    assert shape(rendered) == shape(ERROR_EXAMPLE_RESPONSE)
    assert rendered["error"]["code"] == "invalid_size"
    assert "size" in rendered["error"]["message"]
    assert "size" in rendered["error"]["details"]["reason"]


def test_error_with_only_a_reason_keeps_it_as_the_message() -> None:
    answer = {"status": "error", "error": {"code": "invalid_size", "message": "", "details": {"reason": "too big"}}}
    parsed = ERRORS.parse(400, body(answer))
    assert (parsed.code, parsed.message) == (ErrorCode.INVALID_SIZE, "too big")


@pytest.mark.parametrize(
    ("status", "payload", "code"),
    [
        (429, b'{"status": "error", "error": {"code": "slow_down", "message": "later"}}', ErrorCode.RATE_LIMITED),
        (400, b'{"status": "error", "error": {"code": "nope", "message": "bad"}}', ErrorCode.INVALID_REQUEST),
        (403, b'{"status": "error", "error": {"code": "forbidden", "details": null}}', ErrorCode.UNAUTHORIZED),
        (503, b"<html>Service Unavailable</html>", ErrorCode.OVERLOADED),
        (502, b"", ErrorCode.UPSTREAM_ERROR),
        (504, b'{"detail": "Gateway Timeout"}', ErrorCode.UPSTREAM_TIMEOUT),
        (401, b"null", ErrorCode.UNAUTHORIZED),
    ],
)
def test_errors_fall_back_on_the_status(status: int, payload: bytes, code: ErrorCode) -> None:
    parsed = ERRORS.parse(status, payload, retry_after=1.0)
    assert (parsed.code, parsed.retry_after) == (code, 1.0)
    assert parsed.message


# --- canonical -> wire -> canonical keeps what each endpoint can carry ---

MODELS = st.text(min_size=1, max_size=40)
PROMPTS = st.text(min_size=1, max_size=60).filter(lambda text: not text.isspace())
OPTIONAL_TEXT = st.none() | st.text(max_size=30)
SIDES = st.integers(min_value=64, max_value=2048)
PICTURES = st.sampled_from([IMAGE, MASK, png(3, 5)])


@st.composite
def serverless_requests(draw: st.DrawFn) -> ImageRequest:
    edit = draw(st.booleans())
    return ImageRequest(
        model=draw(MODELS),
        prompt=draw(PROMPTS),
        operation=Operation.EDIT if edit else Operation.GENERATE,
        negative_prompt=draw(OPTIONAL_TEXT),
        width=draw(st.none() | SIDES),
        height=draw(st.none() | SIDES),
        steps=draw(st.none() | st.integers(min_value=1, max_value=1000)),
        guidance=draw(st.none() | st.floats(min_value=0, max_value=100, allow_nan=False)),
        response_format=ResponseFormat.B64_JSON,
        images=(draw(PICTURES),) if edit else (),
        mask=draw(st.none() | PICTURES) if edit else None,
    )


@st.composite
def v1_requests(draw: st.DrawFn) -> ImageRequest:
    size = draw(st.none() | st.tuples(SIDES, SIDES))
    return ImageRequest(
        model=draw(MODELS),
        prompt=draw(PROMPTS),
        negative_prompt=draw(OPTIONAL_TEXT),
        n=draw(st.integers(min_value=1, max_value=10)),
        width=size[0] if size else None,
        height=size[1] if size else None,
        quality=draw(st.sampled_from(["standard", "hd"])),
        style=draw(st.sampled_from(["natural", "vivid", "artistic"])),
        response_format=draw(st.sampled_from(ResponseFormat)),
    )


@settings(max_examples=50, deadline=None, database=None)
@given(serverless_requests())
def test_serverless_round_trip(request: ImageRequest) -> None:
    assert SERVERLESS.decode_json(msgspec.json.encode(SERVERLESS.from_canonical(request))) == request


@settings(max_examples=50, deadline=None, database=None)
@given(v1_requests())
def test_v1_round_trip(request: ImageRequest) -> None:
    assert V1.decode_json(msgspec.json.encode(V1.from_canonical(request))) == request


# --- validation: the field named in NebulaBlock's own names, what it may hold ---


@pytest.mark.parametrize(
    ("endpoint", "patch", "code", "message"),
    [
        (SERVERLESS, {"num_steps": "many"}, "invalid_request", "`num_steps` must be an integer of at least 1"),
        (SERVERLESS, {"num_steps": 0}, "invalid_request", "`num_steps` must be an integer of at least 1"),
        (SERVERLESS, {"guidance_scale": -1}, "invalid_request", "`guidance_scale` must be a number of at least 0"),
        (SERVERLESS, {"width": 5000}, "invalid_size", "`width` must be an integer from 64 to 2048"),
        (SERVERLESS, {"image": 5}, "invalid_request", "`image` must be a base64 JPEG or PNG image"),
        (SERVERLESS, {"prompt": ""}, "invalid_prompt", "`prompt` must be a text that is not empty or only spaces"),
        (
            V1,
            {"size": "huge"},
            "invalid_size",
            "`size` must be WIDTHxHEIGHT in pixels, 64 to 2048 a side, e.g. 1024x1024",
        ),
        (V1, {"style": "anime"}, "invalid_request", "`style` must be one of artistic, natural, vivid"),
        (V1, {"quality": "ultra"}, "invalid_request", "`quality` must be one of hd, standard"),
        (V1, {"n": 11}, "invalid_request", "`n` must be an integer from 1 to 10"),
        (V1, {"model": None}, "invalid_request", "`model` is required: a non-empty string"),
    ],
)
def test_validation_names_the_field_and_what_it_may_hold(
    endpoint: Any, patch: dict[str, Any], code: str, message: str
) -> None:
    body = {key: value for key, value in {"model": "m", "prompt": "a cat", **patch}.items() if value is not None}
    error = refusal(endpoint, body)
    rendered = json.loads(ERRORS.render(error))["error"]
    assert (rendered["code"], rendered["message"]) == (code, message)
    assert rendered["details"]["reason"].endswith(f"(`{error.param}`)")


def test_a_models_step_limit_names_num_steps() -> None:
    """A limit checked after decoding (the local backend's ``steps``) is NebulaBlock's ``num_steps``."""
    later = GatewayError(ErrorCode.INVALID_REQUEST, "model 'sdxl' takes 1 to 8 steps, not 50", param="steps")
    rendered = json.loads(ERRORS.render(SERVERLESS.client_error(later)))["error"]
    assert rendered["message"] == "`num_steps`: model 'sdxl' takes 1 to 8 steps, not 50"
    assert rendered["details"]["reason"] == "Request has a missing or invalid value (`num_steps`)"
