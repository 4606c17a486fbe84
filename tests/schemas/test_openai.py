"""The root OpenAI family: the union of Melious and Nebul, as the ``openai`` SDK speaks it."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings

from schemas import melious, nebul, openai
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
from tests import openai_spec
from tests.schemas.test_melious import DOCUMENTED_RESPONSE as MELIOUS_RESPONSE
from tests.schemas.test_melious import IMPACT
from tests.schemas.test_nebul import DOCUMENTED_RESPONSE as NEBUL_RESPONSE
from tests.schemas.test_nebul import JPEG, NOT_AN_IMAGE, PNG, form_of, nebul_requests, parse_form

ENDPOINTS: list[nebul.NebulEndpoint[Any]] = [openai.GENERATIONS, openai.EDITS, openai.VARIATIONS]
BY_PATH = {endpoint.path: endpoint for endpoint in ENDPOINTS}


def test_endpoints_are_nebuls_paths_speaking_openai() -> None:
    assert [(e.dialect, e.path, e.body_kind.value, e.operation) for e in ENDPOINTS] == [
        ("openai", "/v1/images/generations", "json", Operation.GENERATE),
        ("openai", "/v1/images/edits", "multipart", Operation.EDIT),
        ("openai", "/v1/images/variations", "multipart", Operation.VARIATION),
    ]
    assert openai.ERRORS is nebul.ERRORS


# --- the openai SDK's typical calls, sent through the real SDK ---


class Gateway:
    """Stands in for the gateway behind the SDK: decodes each call, answers with our encoding."""

    def __init__(self, result: ImageResult) -> None:
        self.result = result
        self.decoded: list[ImageRequest] = []

    def handle(self, http_request: Any) -> Any:
        import httpx2

        endpoint = BY_PATH[http_request.url.path.removeprefix("/v1/gw")]
        content_type = http_request.headers["content-type"]
        if content_type.startswith("multipart/"):
            request = endpoint.decode_form(parse_form(content_type, http_request.read()))
        else:
            request = endpoint.decode_json(http_request.read())
        self.decoded.append(request)
        return httpx2.Response(200, content=msgspec.json.encode(endpoint.encode_result(self.result, request)))


@pytest.fixture
def sdk() -> Iterator[tuple[Any, Gateway]]:
    openai_sdk = pytest.importorskip("openai")
    import httpx2

    gateway = Gateway(
        ImageResult(
            images=[GeneratedImage(url="https://gw/img/1.png", b64_json="aW1n")],
            created=1731500000,
            model="flux-schnell",
            environment_impact=IMPACT,
        )
    )
    http_client = httpx2.Client(transport=httpx2.MockTransport(gateway.handle))
    client = openai_sdk.OpenAI(api_key="sk-test", base_url="http://gateway.test/v1/gw/v1", http_client=http_client)
    yield client, gateway
    client.close()


PROMPT = "A serene mountain landscape at sunset with a reflective lake"

SDK_CALLS: list[tuple[str, Callable[[Any], Any], ImageRequest]] = [
    (
        "melious-quick-example",
        lambda c: c.images.generate(model="flux-schnell", prompt=PROMPT, size="1024x1024", n=1),
        ImageRequest(model="flux-schnell", prompt=PROMPT, n=1, width=1024, height=1024, response_format_defaulted=True),
    ),
    (
        "prompt-only",
        lambda c: c.images.generate(prompt="a cat"),
        ImageRequest(
            model="flux-schnell", prompt="a cat", response_format=ResponseFormat.URL, response_format_defaulted=True
        ),
    ),
    (
        "dall-e-3-style",
        lambda c: c.images.generate(
            model="flux-dev", prompt="a cat", quality="hd", style="vivid", response_format="b64_json", user="u-1"
        ),
        ImageRequest(
            model="flux-dev", prompt="a cat", quality="hd", response_format=ResponseFormat.B64_JSON, user="u-1"
        ),
    ),
    (
        "gpt-image-style",
        lambda c: c.images.generate(
            model="flux-dev",
            prompt="a cat",
            size="1536x1024",
            background="transparent",
            output_format="webp",
            quality="high",
            moderation="low",
            output_compression=80,
            n=2,
        ),
        ImageRequest(
            model="flux-dev",
            prompt="a cat",
            n=2,
            width=1536,
            height=1024,
            quality="high",
            background="transparent",
            output_format="webp",
            output_compression=80,
            response_format_defaulted=True,
        ),
    ),
    (
        "edit-several-images-and-mask",
        lambda c: c.images.edit(
            model="black-forest-labs/FLUX.1-Kontext-dev",
            image=[("a.png", PNG, "image/png"), ("b.jpg", JPEG, "image/jpeg")],
            mask=("mask.png", PNG, "image/png"),
            prompt="add a hat",
            n=2,
            size="1024x1024",
        ),
        ImageRequest(
            model="black-forest-labs/FLUX.1-Kontext-dev",
            prompt="add a hat",
            operation=Operation.EDIT,
            n=2,
            width=1024,
            height=1024,
            images=(PNG, JPEG),
            mask=PNG,
            response_format_defaulted=True,
        ),
    ),
    (
        "edit-one-image",
        lambda c: c.images.edit(
            model="m", image=("a.png", PNG, "image/png"), prompt="add a hat", response_format="b64_json"
        ),
        ImageRequest(
            model="m",
            prompt="add a hat",
            operation=Operation.EDIT,
            response_format=ResponseFormat.B64_JSON,
            images=(PNG,),
        ),
    ),
    (
        "variation",
        lambda c: c.images.create_variation(image=("a.png", PNG, "image/png"), n=2, size="512x512"),
        ImageRequest(
            model=openai.DEFAULT_VARIATION_MODEL,  # OpenAI's document: dall-e-2 when none is named
            operation=Operation.VARIATION,
            n=2,
            width=512,
            height=512,
            images=(PNG,),
            response_format_defaulted=True,
        ),
    ),
]


@pytest.mark.parametrize(("call", "expected"), [c[1:] for c in SDK_CALLS], ids=[c[0] for c in SDK_CALLS])
def test_sdk_calls_decode_and_read_our_answer(
    sdk: tuple[Any, Gateway], call: Callable[[Any], Any], expected: ImageRequest
) -> None:
    client, gateway = sdk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK marks create_variation deprecated
        response = call(client)
    assert gateway.decoded == [expected]
    if expected.response_format is ResponseFormat.URL:
        assert (response.data[0].url, response.data[0].b64_json) == ("https://gw/img/1.png", None)
    else:
        assert (response.data[0].url, response.data[0].b64_json) == (None, "aW1n")
    # The size asked for where OpenAI's document can say it (1024x1024, 1536x1024, ...), else none: never "auto".
    stated = expected.size if expected.size in openai.ANSWER_SIZES else None
    assert (response.created, response.size) == (1731500000, stated)


# --- the Melious and Nebul document examples, sent to the root ---


def test_melious_curl_example_decodes_as_at_melious() -> None:
    body = json.dumps({"model": "flux-schnell", "prompt": PROMPT, "size": "1024x1024", "n": 1}).encode()
    at_root = openai.GENERATIONS.decode_json(body)
    assert at_root.response_format_defaulted  # a model's default_response_format may stand in for Melious's url
    assert msgspec.structs.replace(at_root, response_format_defaulted=False) == melious.GENERATIONS.decode_json(body)


def test_nebul_generation_example_decodes_as_at_nebul() -> None:
    body = b'{"model": "<IMAGE_MODEL_ID>", "prompt": "A photo of a cat", "n": 1, "response_format": "b64_json"}'
    assert openai.GENERATIONS.decode_json(body) == nebul.GENERATIONS.decode_json(body)


def test_nebul_multipart_examples_decode_as_at_nebul() -> None:
    edit = {"prompt": "Add a red hat", "model": "<IMAGE_EDIT_MODEL_ID>", "n": "1", "response_format": "b64_json"}
    variation = {"model": "<IMAGE_VARIATION_MODEL_ID>", "n": "1", "response_format": "b64_json"}
    assert openai.EDITS.decode_form(edit | {"image": [PNG]}) == nebul.EDITS.decode_form(edit | {"image": [PNG]})
    assert openai.VARIATIONS.decode_form(variation | {"image": [PNG]}) == nebul.VARIATIONS.decode_form(
        variation | {"image": [PNG]}
    )


def test_defaults_are_openais() -> None:
    assert openai.GENERATIONS.decode_json(b'{"prompt": "p", "stream": false, "style": "natural"}') == ImageRequest(
        model="flux-schnell", prompt="p", response_format=ResponseFormat.URL, response_format_defaulted=True
    )
    assert openai.EDITS.decode_form({"model": "m", "prompt": "p", "image": [PNG]}).response_format is ResponseFormat.URL
    assert openai.VARIATIONS.decode_form({"image": [PNG]}).response_format is ResponseFormat.URL


@pytest.mark.parametrize("model", ["gpt-image-1", "gpt-image-1.5", "gpt-image-2-2026-04-21", "chatgpt-image-latest"])
def test_gpt_image_model_names_answer_base64_unless_asked_otherwise(model: str) -> None:
    """OpenAI answers its GPT image models in base64, so its SDKs send no response_format and read b64_json."""
    named = openai.GENERATIONS.decode_json(json.dumps({"model": model, "prompt": "p"}).encode())
    assert (named.response_format, named.response_format_defaulted) == (ResponseFormat.B64_JSON, False)
    edit = openai.EDITS.decode_form({"model": model, "prompt": "p", "image": [PNG]})
    assert (edit.response_format, edit.response_format_defaulted) == (ResponseFormat.B64_JSON, False)
    asked = openai.GENERATIONS.decode_json(
        json.dumps({"model": model, "prompt": "p", "response_format": "url"}).encode()
    )
    assert (asked.response_format, asked.response_format_defaulted) == (ResponseFormat.URL, False)
    other = openai.GENERATIONS.decode_json(b'{"model": "dall-e-2", "prompt": "p"}')
    assert (other.response_format, other.response_format_defaulted) == (ResponseFormat.URL, True)


def test_the_extensions_map_into_the_canonical_request() -> None:
    """seed, steps, negative_prompt and guidance: top-level JSON fields, or multipart form fields."""
    extensions = {"seed": 7, "steps": 12, "negative_prompt": "fog", "guidance": 3.5}
    body = json.dumps({"model": "m", "prompt": "p", **extensions}).encode()
    form = {name: str(value) for name, value in extensions.items()}
    decoded = [
        openai.GENERATIONS.decode_json(body),
        openai.EDITS.decode_form({"model": "m", "prompt": "p", "image": [PNG], **form}),
        openai.VARIATIONS.decode_form({"model": "m", "image": [PNG], **form}),
    ]
    for request in decoded:
        assert (request.seed, request.steps, request.negative_prompt, request.guidance) == (7, 12, "fog", 3.5)


# --- responses: OpenAI's ImagesResponse, with Melious's environment_impact beside it ---


def encode(endpoint: Any, request: ImageRequest, result: ImageResult) -> Any:
    return json.loads(msgspec.json.encode(endpoint.encode_result(result, request)))


ZERO_USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.path)
def test_result_with_impact_encodes_openais_response_and_the_impact(endpoint: Any) -> None:
    request = ImageRequest(model="m", prompt="p")
    result = ImageResult(
        images=[GeneratedImage(url="https://gw/1.png")], created=1, model="m", environment_impact=IMPACT
    )
    encoded = encode(endpoint, request, result)
    assert openai_spec.problems("ImagesResponse", encoded) == []
    assert encoded["data"] == [{"url": "https://gw/1.png"}]  # no "b64_json": null
    assert encoded["environment_impact"] == json.loads(MELIOUS_RESPONSE)["environment_impact"]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.path)
def test_result_encodes_openais_images_response(endpoint: Any) -> None:
    request = ImageRequest(model="m", prompt="p", response_format=ResponseFormat.B64_JSON)
    result = ImageResult(images=[GeneratedImage(b64_json="<BASE64_IMAGE_DATA>")], created=1731500000, model="m")
    encoded = encode(endpoint, request, result)
    assert encoded == {
        "created": 1731500000,
        "data": [{"b64_json": "<BASE64_IMAGE_DATA>"}],
        "output_format": "png",
        "usage": ZERO_USAGE,  # no backend here counts tokens: honest zeros, in OpenAI's shape
    }
    assert openai_spec.problems("ImagesResponse", encoded) == []


def test_the_answer_states_what_was_produced_where_the_document_can_say_it() -> None:
    """size, quality, background and output_format: what was drawn, never "auto"; left out where OpenAI's
    document has no value for it (a 512x512 image, quality "hd")."""
    request = ImageRequest(model="m", prompt="p", quality="high", background="opaque", output_format="webp")
    drawn = [GeneratedImage(b64_json="aW1n", width=1536, height=1024, media_type="image/jpeg")]
    encoded = encode(openai.GENERATIONS, request, ImageResult(images=drawn, created=1, model="m"))
    assert {k: encoded[k] for k in ("size", "quality", "background", "output_format")} == {
        "size": "1536x1024",  # the image's own size
        "quality": "high",
        "background": "opaque",
        "output_format": "jpeg",  # what the backend drew, not what was asked
    }
    request = ImageRequest(model="m", prompt="p", quality="hd", background="auto", width=512, height=512)
    small = [GeneratedImage(b64_json="aW1n", width=512, height=512)]
    encoded = encode(openai.GENERATIONS, request, ImageResult(images=small, created=1, model="m"))
    assert set(encoded) == {"created", "data", "output_format", "usage"}
    assert openai_spec.problems("ImagesResponse", encoded) == []


def test_usage_is_openais_shape_with_the_backends_counts() -> None:
    request = ImageRequest(model="m", prompt="p", response_format=ResponseFormat.B64_JSON)
    result = ImageResult(
        images=[GeneratedImage(b64_json="aW1n")], created=1, model="m", usage=Usage(prompt_tokens=7, total_tokens=30)
    )
    assert encode(openai.GENERATIONS, request, result)["usage"] == {
        "input_tokens": 7,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 7},
        "output_tokens": 23,
        "total_tokens": 30,
    }


def test_a_providers_revised_prompt_is_passed_on() -> None:
    nebul_answer = json.dumps(
        {"created": 1, "data": [{"b64_json": "aW1n", "url": None, "revised_prompt": "a tabby cat, photographed"}]}
    )
    request = ImageRequest(model="m", prompt="a cat", response_format=ResponseFormat.B64_JSON)
    result = nebul.GENERATIONS.decode_response(nebul_answer.encode(), request)
    assert result.images[0].revised_prompt == "a tabby cat, photographed"
    assert encode(openai.GENERATIONS, request, result)["data"] == [
        {"b64_json": "aW1n", "revised_prompt": "a tabby cat, photographed"}
    ]
    # Nebul's own answer keeps its documented shape: both keys, no revised_prompt it did not have.
    assert encode(nebul.GENERATIONS, request, result)["data"] == [{"b64_json": "aW1n", "url": None}]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.path)
def test_nebul_and_melious_responses_decode(endpoint: Any) -> None:
    request = ImageRequest(model="m", prompt="p", width=1024, height=1024)
    from_nebul = endpoint.decode_response(NEBUL_RESPONSE, request)
    from_melious = endpoint.decode_response(MELIOUS_RESPONSE, request)
    assert from_nebul == ImageResult(
        images=[GeneratedImage(b64_json="<BASE64_IMAGE_DATA>", width=1024, height=1024)], created=1731500000, model="m"
    )
    assert from_melious == ImageResult(
        images=[GeneratedImage(url="https://..../generated-image.png", width=1024, height=1024)],
        created=1699999999,
        model="m",
        usage=Usage(),
        environment_impact=IMPACT,
    )


# --- bad input and errors ---


def test_a_request_naming_no_model_asks_for_openais_default_for_its_operation() -> None:
    """OpenAI's document: edits default to gpt-image-1.5, variations to dall-e-2 (LiteLLM's variation names none)."""
    assert openai.EDITS.decode_form({"prompt": "p", "image": [PNG]}).model == "gpt-image-1.5"
    assert openai.VARIATIONS.decode_form({"image": [PNG]}).model == "dall-e-2"
    # Nebul's own routes keep their document's rule: an edit names its model.
    with pytest.raises(GatewayError):
        nebul.EDITS.decode_form({"prompt": "p", "image": [PNG]})


@pytest.mark.parametrize(
    ("endpoint", "body", "code", "param"),
    [
        (openai.GENERATIONS, b'{"model": "flux-schnell"}', ErrorCode.INVALID_PROMPT, "prompt"),
        (openai.GENERATIONS, b'{"prompt": ""}', ErrorCode.INVALID_PROMPT, "prompt"),
        (openai.GENERATIONS, b'{"prompt": "p", "n": "1"}', ErrorCode.INVALID_REQUEST, "n"),
        (openai.GENERATIONS, b'{"prompt": "p", "n": 11}', ErrorCode.INVALID_REQUEST, "n"),
        (openai.GENERATIONS, b'{"prompt": "p", "size": "large"}', ErrorCode.INVALID_SIZE, "size"),
        (openai.EDITS, {"model": "m", "prompt": "p", "image": [NOT_AN_IMAGE]}, ErrorCode.INVALID_REQUEST, "image"),
        (openai.EDITS, {"model": "m", "prompt": "p"}, ErrorCode.INVALID_REQUEST, "image"),
        (openai.EDITS, {"model": "", "prompt": "p", "image": [PNG]}, ErrorCode.INVALID_REQUEST, "model"),
        (openai.VARIATIONS, {"n": "2"}, ErrorCode.INVALID_REQUEST, "image"),
        (openai.VARIATIONS, {"image": [NOT_AN_IMAGE]}, ErrorCode.INVALID_REQUEST, "image"),
    ],
)
def test_bad_requests_are_refused_in_the_openai_envelope(
    endpoint: Any, body: bytes | dict[str, Any], code: ErrorCode, param: str
) -> None:
    with pytest.raises(GatewayError) as info:
        endpoint.decode_json(body) if isinstance(body, bytes) else endpoint.decode_form(body)
    assert (info.value.code, info.value.param, info.value.status) == (code, param, 400)
    envelope = json.loads(openai.ERRORS.render(info.value))["error"]
    assert (envelope.keys(), envelope["param"], envelope["type"]) == (
        {"message", "type", "param", "code"},
        param,
        "invalid_request_error",
    )


# --- property: the outbound mappings, inherited from Nebul, round-trip too ---


@settings(max_examples=50)
@given(nebul_requests(Operation.GENERATE))
def test_generation_round_trips_through_json(request: ImageRequest) -> None:
    body = msgspec.json.encode(openai.GENERATIONS.from_canonical(request))
    assert openai.GENERATIONS.decode_json(body) == request


@settings(max_examples=50)
@given(nebul_requests(Operation.EDIT))
def test_edit_round_trips_through_multipart(request: ImageRequest) -> None:
    form = form_of(openai.EDITS.multipart_fields(openai.EDITS.from_canonical(request)))
    assert openai.EDITS.decode_form(form) == request


@settings(max_examples=50)
@given(nebul_requests(Operation.VARIATION))
def test_variation_round_trips_through_multipart(request: ImageRequest) -> None:
    form = form_of(openai.VARIATIONS.multipart_fields(openai.VARIATIONS.from_canonical(request)))
    assert openai.VARIATIONS.decode_form(form) == request
