"""The Nebul dialect against its document (seeds/nebul.txt) and docs/errors.md.

Also home of what the OpenAI-family tests reuse: image bytes, the multipart helpers
(``multipart_body``, ``parse_form``: a form as the gateway's route hands it over) and
the request strategies.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, cast

import httpx
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
    Operation,
    ResponseFormat,
    Usage,
)
from tests.schemas.test_dialect import refusal
from tests.schemas.test_melious import DocumentedError, documented_errors, shape

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00\x2f\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00"
NOT_AN_IMAGE = b"GIF89a: not one of ours"

Form = dict[str, Any]


def multipart_body(data: Mapping[str, Any], files: list[tuple[str, tuple[str, bytes, str]]]) -> tuple[str, bytes]:
    """The content type and body an HTTP client sends for ``data=``/``files=``."""
    request = httpx.Request("POST", "http://gateway.test/", data=dict(data), files=files)
    return request.headers["content-type"], request.read()


def parse_form(content_type: str, body: bytes) -> Form:
    """A multipart body as the gateway's route hands it to ``decode_form``.

    Text fields as ``str``; ``image`` and ``image[]`` merged into one ``list[bytes]``;
    ``mask`` as ``bytes``.
    """
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    form: Form = {}
    for part in message.iter_parts():
        name = str(part.get_param("name", header="content-disposition"))
        payload = cast(bytes, part.get_payload(decode=True))
        if name in ("image", "image[]"):
            form.setdefault("image", []).append(payload)
        elif part.get_filename() is not None:
            form[name] = payload
        else:
            form[name] = payload.decode()
    return form


def form_of(fields: nebul.MultipartFields) -> Form:
    """``multipart_fields`` output as the route's form dict, without going through bytes."""
    data, files = fields
    form: Form = dict(data)
    form["image"] = [content for name, (_, content, _) in files if name == "image"]
    form.update({name: content for name, (_, content, _) in files if name == "mask"})
    return form


# --- requests: every example in the document ---

CAT = "A photo of a cat sitting on a windowsill at sunset"
HAT = "Add a red hat to the person in the image"


def test_generation_example_decodes() -> None:
    payload = {"model": "<IMAGE_MODEL_ID>", "prompt": CAT, "n": 1, "response_format": "b64_json"}
    assert nebul.GENERATIONS.decode_json(json.dumps(payload).encode()) == ImageRequest(
        model="<IMAGE_MODEL_ID>", prompt=CAT, n=1, response_format=ResponseFormat.B64_JSON
    )


def test_generation_defaults() -> None:
    assert nebul.GENERATIONS.decode_json(b'{"prompt": "a cat"}') == ImageRequest(
        model=nebul.DEFAULT_MODEL,
        prompt="a cat",
        operation=Operation.GENERATE,
        n=1,
        width=None,
        height=None,
        guidance=None,
        quality=None,
        background=None,
        output_format=None,
        response_format=ResponseFormat.B64_JSON,
        user=None,
    )


def test_generation_with_every_field_decodes() -> None:
    payload = {
        "prompt": "a cat",
        "model": "black-forest-labs/FLUX.1-Kontext-dev",
        "n": 3,
        "size": "1536x1024",
        "quality": "high",
        "background": "transparent",
        "output_format": "webp",
        "response_format": "url",
        "guidance": 3.5,
        "user": "u-1",
    }
    assert nebul.GENERATIONS.decode_json(json.dumps(payload).encode()) == ImageRequest(
        model="black-forest-labs/FLUX.1-Kontext-dev",
        prompt="a cat",
        n=3,
        width=1536,
        height=1024,
        guidance=3.5,
        quality="high",
        background="transparent",
        output_format="webp",
        response_format=ResponseFormat.URL,
        user="u-1",
    )


def test_edit_example_decodes() -> None:
    files = [("image", ("original.png", PNG, "image/png"))]
    data = {"prompt": HAT, "model": "<IMAGE_EDIT_MODEL_ID>", "n": 1, "response_format": "b64_json"}
    form = parse_form(*multipart_body(data, files))
    assert form == {
        "prompt": HAT,
        "model": "<IMAGE_EDIT_MODEL_ID>",
        "n": "1",
        "response_format": "b64_json",
        "image": [PNG],
    }
    assert nebul.EDITS.decode_form(form) == ImageRequest(
        model="<IMAGE_EDIT_MODEL_ID>",
        prompt=HAT,
        operation=Operation.EDIT,
        n=1,
        response_format=ResponseFormat.B64_JSON,
        images=(PNG,),
    )


def test_edit_example_with_mask_and_several_images_decodes() -> None:
    files = [
        ("image", ("original.png", PNG, "image/png")),
        ("image[]", ("second.jpg", JPEG, "image/jpeg")),
        ("mask", ("mask.png", PNG, "image/png")),
    ]
    data = {"prompt": HAT, "model": "m", "n": 2, "size": "1024x1024", "guidance": "2.5", "output_format": "jpeg"}
    assert nebul.EDITS.decode_form(parse_form(*multipart_body(data, files))) == ImageRequest(
        model="m",
        prompt=HAT,
        operation=Operation.EDIT,
        n=2,
        width=1024,
        height=1024,
        guidance=2.5,
        output_format="jpeg",
        response_format=ResponseFormat.B64_JSON,
        images=(PNG, JPEG),
        mask=PNG,
    )


def test_variation_example_decodes() -> None:
    files = {"image": ("original.png", PNG, "image/png")}
    data = {"model": "<IMAGE_VARIATION_MODEL_ID>", "n": 1, "response_format": "b64_json"}
    form = parse_form(*multipart_body(data, list(files.items())))
    assert nebul.VARIATIONS.decode_form(form) == ImageRequest(
        model="<IMAGE_VARIATION_MODEL_ID>",
        operation=Operation.VARIATION,
        n=1,
        response_format=ResponseFormat.B64_JSON,
        images=(PNG,),
    )


def test_variation_defaults_and_uses_the_first_image() -> None:
    assert nebul.VARIATIONS.decode_form({"image": [WEBP, NOT_AN_IMAGE]}) == ImageRequest(
        model=nebul.DEFAULT_MODEL,
        operation=Operation.VARIATION,
        response_format=ResponseFormat.B64_JSON,
        images=(WEBP,),
    )


def test_endpoints_name_their_path_body_and_operation() -> None:
    assert [
        (e.dialect, e.path, e.body_kind.value, e.operation) for e in (nebul.GENERATIONS, nebul.EDITS, nebul.VARIATIONS)
    ] == [
        ("nebul", "/v1/images/generations", "json", Operation.GENERATE),
        ("nebul", "/v1/images/edits", "multipart", Operation.EDIT),
        ("nebul", "/v1/images/variations", "multipart", Operation.VARIATION),
    ]


# --- responses ---

DOCUMENTED_RESPONSE = b"""{
"created": 1731500000,
"data": [
{
"b64_json": "<BASE64_IMAGE_DATA>",
"url": null
}
],
"background": "auto",
"output_format": "png",
"size": "auto",
"quality": "auto",
"usage": {
"prompt_tokens": 0,
"total_tokens": 0
}
}"""
ENDPOINTS: list[nebul.NebulEndpoint[Any]] = [nebul.GENERATIONS, nebul.EDITS, nebul.VARIATIONS]
B64_REQUEST = ImageRequest(model="m", prompt="p", response_format=ResponseFormat.B64_JSON)


def encode(endpoint: Any, request: ImageRequest, result: ImageResult) -> Any:
    return json.loads(msgspec.json.encode(endpoint.encode_result(result, request)))


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.path)
def test_b64_result_encodes_to_the_documented_response(endpoint: Any) -> None:
    result = ImageResult(images=[GeneratedImage(b64_json="<BASE64_IMAGE_DATA>")], created=1731500000, model="m")
    assert encode(endpoint, B64_REQUEST, result) == json.loads(DOCUMENTED_RESPONSE)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.path)
def test_url_result_keeps_both_keys(endpoint: Any) -> None:
    request = ImageRequest(model="m", prompt="p", width=1024, height=768, quality="hd", background="opaque")
    result = ImageResult(
        images=[GeneratedImage(url="https://img/1.png", b64_json="unused"), GeneratedImage(url="https://img/2.png")],
        created=5,
        model="m",
        usage=Usage(prompt_tokens=7, total_tokens=9),
    )
    encoded = encode(endpoint, msgspec.structs.replace(request, output_format="webp"), result)
    assert shape(encoded) == shape(json.loads(DOCUMENTED_RESPONSE)) | {"data": [{"b64_json": None, "url": None}] * 2}
    assert encoded == {
        "created": 5,
        "data": [{"b64_json": None, "url": "https://img/1.png"}, {"b64_json": None, "url": "https://img/2.png"}],
        "background": "opaque",
        "output_format": "webp",
        "size": "1024x768",
        "quality": "hd",
        "usage": {"prompt_tokens": 7, "total_tokens": 9},
    }


def test_bytes_are_encoded_as_base64() -> None:
    result = ImageResult(images=[GeneratedImage(data=PNG)], created=1, model="m")
    assert encode(nebul.EDITS, B64_REQUEST, result)["data"] == [
        {"b64_json": base64.b64encode(PNG).decode(), "url": None}
    ]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.path)
def test_documented_response_decodes(endpoint: Any) -> None:
    request = ImageRequest(model="m", prompt="p", width=512, height=512)
    result = endpoint.decode_response(DOCUMENTED_RESPONSE, request)
    assert result == ImageResult(
        images=[GeneratedImage(b64_json="<BASE64_IMAGE_DATA>", width=512, height=512, media_type="image/png")],
        created=1731500000,
        model="m",
        usage=Usage(prompt_tokens=0, total_tokens=0),
    )


def test_url_response_decodes_with_its_format() -> None:
    body = {
        "created": 1,
        "data": [{"b64_json": None, "url": "https://nebul/1.jpg"}],
        "background": "auto",
        "output_format": "jpeg",
        "size": "auto",
        "quality": "auto",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    result = nebul.GENERATIONS.decode_response(json.dumps(body).encode(), ImageRequest(model="m", prompt="p"))
    assert result.images == [GeneratedImage(url="https://nebul/1.jpg", media_type="image/jpeg")]
    assert result.usage == Usage(prompt_tokens=3, total_tokens=3)


def test_undocumented_response_is_upstream_error() -> None:
    with pytest.raises(GatewayError) as info:
        nebul.GENERATIONS.decode_response(b'{"status": "ok"}', B64_REQUEST)
    assert info.value.code is ErrorCode.UPSTREAM_ERROR


# --- bad input ---


def refused(call: Callable[[], object]) -> tuple[ErrorCode, str | None, int]:
    with pytest.raises(GatewayError) as info:
        call()
    return info.value.code, info.value.param, info.value.status


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        pytest.param(b'{"model": "m"}', ErrorCode.INVALID_PROMPT, "prompt", id="missing-prompt"),
        pytest.param(b'{"prompt": ""}', ErrorCode.INVALID_PROMPT, "prompt", id="empty-prompt"),
        pytest.param(b'{"prompt": " \\t"}', ErrorCode.INVALID_PROMPT, "prompt", id="blank-prompt"),
        pytest.param(b'{"prompt": ["a"]}', ErrorCode.INVALID_PROMPT, "prompt", id="prompt-not-text"),
        pytest.param(b'{"prompt": "p", "model": ""}', ErrorCode.INVALID_REQUEST, "model", id="empty-model"),
        pytest.param(b'{"prompt": "p", "n": "2"}', ErrorCode.INVALID_REQUEST, "n", id="n-not-int"),
        pytest.param(b'{"prompt": "p", "n": 1.5}', ErrorCode.INVALID_REQUEST, "n", id="n-fraction"),
        pytest.param(b'{"prompt": "p", "n": 0}', ErrorCode.INVALID_REQUEST, "n", id="n-zero"),
        pytest.param(b'{"prompt": "p", "n": 11}', ErrorCode.INVALID_REQUEST, "n", id="n-over-10"),
        pytest.param(b'{"prompt": "p", "size": "big"}', ErrorCode.INVALID_SIZE, "size", id="size-word"),
        pytest.param(b'{"prompt": "p", "size": "0x512"}', ErrorCode.INVALID_SIZE, "size", id="size-zero"),
        pytest.param(b'{"prompt": "p", "size": "1024*1024"}', ErrorCode.INVALID_SIZE, "size", id="size-star"),
        pytest.param(b'{"prompt": "p", "size": 1024}', ErrorCode.INVALID_SIZE, "size", id="size-number"),
        pytest.param(b'{"prompt": "p", "response_format": "png"}', ErrorCode.INVALID_REQUEST, "response_format"),
        pytest.param(b'{"prompt": "p", "output_format": "gif"}', ErrorCode.INVALID_REQUEST, "output_format"),
        pytest.param(b'{"prompt": "p", "guidance": "high"}', ErrorCode.INVALID_REQUEST, "guidance", id="guidance-text"),
        pytest.param(b'{"prompt": "p", "guidance": -1}', ErrorCode.INVALID_REQUEST, "guidance", id="guidance-negative"),
        pytest.param(b'{"prompt": "p", "quality": 5}', ErrorCode.INVALID_REQUEST, "quality", id="quality-number"),
        pytest.param(b"prompt=p", ErrorCode.INVALID_REQUEST, None, id="not-json"),
    ],
)
def test_bad_generation_requests_are_refused(body: bytes, code: ErrorCode, param: str | None) -> None:
    assert refused(lambda: nebul.GENERATIONS.decode_json(body)) == (code, param, 400)


EDIT_FORM: Form = {"model": "m", "prompt": "p", "image": [PNG]}


@pytest.mark.parametrize(
    ("changes", "code", "param"),
    [
        pytest.param({"image": None}, ErrorCode.INVALID_REQUEST, "image", id="missing-image"),
        pytest.param({"image": []}, ErrorCode.INVALID_REQUEST, "image", id="no-image"),
        pytest.param({"image": [NOT_AN_IMAGE]}, ErrorCode.INVALID_REQUEST, "image", id="image-not-an-image"),
        pytest.param({"image": [PNG, b""]}, ErrorCode.INVALID_REQUEST, "image", id="second-image-empty"),
        pytest.param({"mask": NOT_AN_IMAGE}, ErrorCode.INVALID_REQUEST, "mask", id="mask-not-an-image"),
        pytest.param({"model": None}, ErrorCode.INVALID_REQUEST, "model", id="missing-model"),
        pytest.param({"prompt": None}, ErrorCode.INVALID_PROMPT, "prompt", id="missing-prompt"),
        pytest.param({"prompt": ""}, ErrorCode.INVALID_PROMPT, "prompt", id="empty-prompt"),
        pytest.param({"n": "two"}, ErrorCode.INVALID_REQUEST, "n", id="n-not-a-number"),
        pytest.param({"n": "11"}, ErrorCode.INVALID_REQUEST, "n", id="n-over-10"),
        pytest.param({"n": "0"}, ErrorCode.INVALID_REQUEST, "n", id="n-zero"),
        pytest.param({"size": "huge"}, ErrorCode.INVALID_SIZE, "size", id="bad-size"),
        pytest.param({"guidance": "strong"}, ErrorCode.INVALID_REQUEST, "guidance", id="guidance-text"),
        pytest.param({"response_format": "jpeg"}, ErrorCode.INVALID_REQUEST, "response_format"),
    ],
)
def test_bad_edit_forms_are_refused(changes: Form, code: ErrorCode, param: str | None) -> None:
    form = {key: value for key, value in (EDIT_FORM | changes).items() if value is not None}
    assert refused(lambda: nebul.EDITS.decode_form(form)) == (code, param, 400)


@pytest.mark.parametrize(
    ("form", "code", "param"),
    [
        pytest.param({"model": "m"}, ErrorCode.INVALID_REQUEST, "image", id="missing-image"),
        pytest.param({"image": []}, ErrorCode.INVALID_REQUEST, "image", id="no-image"),
        pytest.param({"image": [NOT_AN_IMAGE]}, ErrorCode.INVALID_REQUEST, "image", id="not-an-image"),
        pytest.param({"image": [PNG], "n": "99"}, ErrorCode.INVALID_REQUEST, "n", id="n-over-10"),
        pytest.param({"image": [PNG], "size": "512"}, ErrorCode.INVALID_SIZE, "size", id="bad-size"),
    ],
)
def test_bad_variation_forms_are_refused(form: Form, code: ErrorCode, param: str | None) -> None:
    assert refused(lambda: nebul.VARIATIONS.decode_form(form)) == (code, param, 400)


# --- outbound ---


def test_generation_request_leaves_out_what_was_not_asked() -> None:
    request = ImageRequest(model="m", prompt="p", n=2, width=1024, height=768, quality="hd")
    body = json.loads(msgspec.json.encode(nebul.GENERATIONS.from_canonical(request)))
    assert body == {"n": 2, "size": "1024x768", "response_format": "url", "quality": "hd", "prompt": "p", "model": "m"}


def test_edit_multipart_fields() -> None:
    request = ImageRequest(
        model="m", prompt="p", operation=Operation.EDIT, guidance=0.1, user="u", images=(PNG, JPEG, WEBP), mask=PNG
    )
    data, files = nebul.EDITS.multipart_fields(nebul.EDITS.from_canonical(request))
    assert data == {
        "n": "1",
        "size": "auto",
        "response_format": "url",
        "guidance": "0.1",
        "user": "u",
        "model": "m",
        "prompt": "p",
    }
    assert files == [
        ("image", ("image.png", PNG, "image/png")),
        ("image", ("image-1.jpg", JPEG, "image/jpeg")),
        ("image", ("image-2.webp", WEBP, "image/webp")),
        ("mask", ("mask.png", PNG, "image/png")),
    ]


def test_variation_sends_one_image() -> None:
    request = ImageRequest(model="m", operation=Operation.VARIATION, images=(JPEG, PNG))
    data, files = nebul.VARIATIONS.multipart_fields(nebul.VARIATIONS.from_canonical(request))
    assert data == {"n": "1", "size": "auto", "response_format": "url", "model": "m"}
    assert files == [("image", ("image.jpg", JPEG, "image/jpeg"))]


def test_outbound_multipart_survives_a_real_body() -> None:
    request = ImageRequest(model="m", prompt="a\r\nb", operation=Operation.EDIT, n=3, images=(PNG, JPEG), mask=PNG)
    body = multipart_body(*nebul.EDITS.multipart_fields(nebul.EDITS.from_canonical(request)))
    assert nebul.EDITS.decode_form(parse_form(*body)) == request


@pytest.mark.parametrize(
    ("endpoint", "request_", "param"),
    [
        pytest.param(nebul.GENERATIONS, ImageRequest(model="m", prompt="p", n=11), "n", id="n-over-10"),
        pytest.param(
            nebul.EDITS, ImageRequest(model="m", prompt="p", operation=Operation.EDIT), "image", id="no-image"
        ),
        pytest.param(nebul.VARIATIONS, ImageRequest(model="m", operation=Operation.VARIATION), "image", id="no-image"),
    ],
)
def test_outbound_refuses_what_nebul_cannot_do(endpoint: Any, request_: ImageRequest, param: str) -> None:
    assert refused(lambda: endpoint.from_canonical(request_)) == (ErrorCode.INVALID_REQUEST, param, 400)


# --- errors ---


@pytest.mark.parametrize("row", documented_errors(), ids=lambda row: row.code.value)
def test_errors_render_the_documented_envelope(row: DocumentedError) -> None:
    rendered = json.loads(nebul.ERRORS.render(GatewayError(row.code, "what went wrong", param="size")))
    assert rendered == {
        "error": {"message": "what went wrong", "type": row.openai_type, "param": "size", "code": row.openai_code}
    }


def test_errors_render_a_null_param() -> None:
    rendered = json.loads(nebul.ERRORS.render(GatewayError(ErrorCode.INTERNAL, "oops")))
    assert rendered == {"error": {"message": "oops", "type": "server_error", "param": None, "code": "internal_error"}}


@pytest.mark.parametrize("row", documented_errors(), ids=lambda row: row.code.value)
def test_errors_parse_every_documented_code(row: DocumentedError) -> None:
    body = {"error": {"message": "upstream said no", "type": row.openai_type, "param": "n", "code": row.openai_code}}
    error = nebul.ERRORS.parse(row.status, json.dumps(body).encode(), retry_after=2.0)
    assert (error.code, error.message, error.param, error.status, error.retry_after) == (
        row.code,
        "upstream said no",
        "n",
        row.status,
        2.0,
    )


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda code: code.value)
def test_errors_round_trip(code: ErrorCode) -> None:
    error = nebul.ERRORS.parse(code.http_status, nebul.ERRORS.render(GatewayError(code, "m", param="prompt")))
    assert (error.code, error.message, error.param) == (code, "m", "prompt")


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        pytest.param(
            429, b'{"error": {"message": "m", "type": "t", "param": null, "code": "new"}}', ErrorCode.RATE_LIMITED
        ),
        pytest.param(
            401,
            b'{"error": {"message": "bad key", "type": "invalid_request_error", "code": null}}',
            ErrorCode.UNAUTHORIZED,
        ),
        pytest.param(404, b'{"error": {"message": "no such model"}}', ErrorCode.MODEL_NOT_FOUND),
        pytest.param(400, b'{"error": "plain text"}', ErrorCode.INVALID_REQUEST),
        pytest.param(503, b"<html>Service Unavailable</html>", ErrorCode.OVERLOADED),
        pytest.param(504, b"", ErrorCode.UPSTREAM_TIMEOUT),
        pytest.param(500, b"Internal Server Error", ErrorCode.UPSTREAM_ERROR),
    ],
)
def test_errors_fall_back_on_the_status(status: int, body: bytes, code: ErrorCode) -> None:
    error = nebul.ERRORS.parse(status, body, retry_after=4.0)
    assert (error.code, error.retry_after) == (code, 4.0)


# --- property: canonical → wire → body → canonical keeps what Nebul carries ---

prompts = st.text(min_size=1).filter(lambda text: re.search(r"\S", text) is not None)
images = st.sampled_from([PNG[:8], JPEG[:3], WEBP[:12]]).flatmap(lambda head: st.binary(max_size=24).map(head.__add__))
sides = st.integers(1, 99_999)


@st.composite
def nebul_requests(draw: st.DrawFn, operation: Operation) -> ImageRequest:
    """Canonical requests with only what a Nebul ``operation`` request can carry."""
    size = draw(st.none() | st.tuples(sides, sides))
    inputs: dict[str, Any] = {}
    if operation is not Operation.VARIATION:
        inputs["prompt"] = draw(prompts)
    if operation is Operation.EDIT:
        inputs["images"] = tuple(draw(st.lists(images, min_size=1, max_size=3)))
        inputs["mask"] = draw(st.none() | images)
    if operation is Operation.VARIATION:
        inputs["images"] = (draw(images),)
    return ImageRequest(
        model=draw(st.text(min_size=1)),
        operation=operation,
        n=draw(st.integers(1, nebul.MAX_N)),
        width=size and size[0],
        height=size and size[1],
        guidance=draw(st.none() | st.floats(min_value=0, allow_nan=False, allow_infinity=False)),
        quality=draw(st.none() | st.text()),
        background=draw(st.none() | st.text()),
        output_format=draw(st.none() | st.sampled_from(["png", "jpeg", "webp"])),
        response_format=draw(st.sampled_from(ResponseFormat)),
        user=draw(st.none() | st.text()),
        **inputs,
    )


@settings(max_examples=50)
@given(nebul_requests(Operation.GENERATE))
def test_generation_round_trips_through_json(request: ImageRequest) -> None:
    body = msgspec.json.encode(nebul.GENERATIONS.from_canonical(request))
    assert nebul.GENERATIONS.decode_json(body) == request


@settings(max_examples=50)
@given(nebul_requests(Operation.EDIT))
def test_edit_round_trips_through_multipart(request: ImageRequest) -> None:
    form = form_of(nebul.EDITS.multipart_fields(nebul.EDITS.from_canonical(request)))
    assert nebul.EDITS.decode_form(form) == request


@settings(max_examples=50)
@given(nebul_requests(Operation.VARIATION))
def test_variation_round_trips_through_multipart(request: ImageRequest) -> None:
    form = form_of(nebul.VARIATIONS.multipart_fields(nebul.VARIATIONS.from_canonical(request)))
    assert nebul.VARIATIONS.decode_form(form) == request


# --- validation: the field named, what it may hold, the OpenAI envelope's code ---

SIZE_WORDS = "`size` must be auto or WIDTHxHEIGHT in pixels, e.g. 1024x1024"


@pytest.mark.parametrize(
    ("endpoint", "body", "code", "param", "message"),
    [
        (nebul.GENERATIONS, {"prompt": "p", "size": "big"}, "invalid_size", "size", SIZE_WORDS),
        (nebul.GENERATIONS, {"prompt": "p", "n": 11}, "invalid_value", "n", "`n` must be an integer from 1 to 10"),
        (
            nebul.GENERATIONS,
            {"prompt": "p", "guidance": "high"},
            "invalid_value",
            "guidance",
            "`guidance` must be a number of at least 0",
        ),
        (
            nebul.GENERATIONS,
            {"prompt": "p", "output_format": "gif"},
            "invalid_value",
            "output_format",
            "`output_format` must be one of jpeg, png, webp",
        ),
        (
            nebul.GENERATIONS,
            {},
            "invalid_prompt",
            "prompt",
            "`prompt` is required: a text that is not empty or only spaces",
        ),
        (
            nebul.EDITS,
            {"model": "m", "prompt": "p", "image": [PNG], "n": "eleven"},
            "invalid_value",
            "n",
            "`n` must be an integer from 1 to 10",
        ),
        (
            nebul.EDITS,
            {"model": "m", "prompt": "p"},
            "invalid_value",
            "image",
            "`image` is required: one or more image files",
        ),
        (
            nebul.EDITS,
            {"model": "m", "prompt": "p", "image": "text, not a file"},
            "invalid_value",
            "image",
            "`image` must be one or more image files",
        ),
        (nebul.VARIATIONS, {"image": [PNG], "size": "1024"}, "invalid_size", "size", SIZE_WORDS),
    ],
)
def test_validation_names_the_field_and_what_it_may_hold(
    endpoint: nebul.NebulEndpoint[Any], body: dict[str, Any], code: str, param: str, message: str
) -> None:
    error = refusal(endpoint, body)
    rendered = json.loads(nebul.ERRORS.render(error))["error"]
    assert rendered == {"message": message, "type": "invalid_request_error", "param": param, "code": code}
