"""OpenAI's Images API outbound (schemas/openai_upstream.py): what is sent, what is read, the error table."""

from __future__ import annotations

import msgspec
import pytest

from schemas import openai_upstream
from schemas.canonical import ErrorCode, ImageRequest, Operation
from schemas.openai_upstream import WireSettings, endpoint_for
from tests.emulators import solid_png

PNG = solid_png(64, 64)


def request(**fields: object) -> ImageRequest:
    return ImageRequest(model="m", prompt="a lake", **fields)  # type: ignore[arg-type]


def sent(body: object) -> dict[str, object]:
    assert isinstance(body, bytes)
    return dict(msgspec.json.decode(body))


def test_a_generation_leaves_out_what_is_unset_and_sends_the_configured_response_format() -> None:
    endpoint = endpoint_for(Operation.GENERATE, WireSettings(response_format="url"))
    body = sent(endpoint.body(request(width=512, height=512, n=2)))
    assert body == {"prompt": "a lake", "model": "m", "n": 2, "size": "512x512", "response_format": "url"}
    never = endpoint_for(Operation.GENERATE, WireSettings(response_format=None))
    assert "response_format" not in sent(never.body(request()))


def test_only_openais_styles_and_formats_are_sent() -> None:
    endpoint = endpoint_for(Operation.GENERATE, WireSettings())
    body = sent(endpoint.body(request(style="anime", output_format="gif", output_compression=50)))
    assert not {"style", "output_format", "output_compression"} & set(body)
    body = sent(endpoint.body(request(style="vivid", output_format="webp", output_compression=50)))
    assert (body["style"], body["output_format"], body["output_compression"]) == ("vivid", "webp", 50)


def test_extensions_are_sent_only_when_declared_under_the_servers_names() -> None:
    asked = request(seed=7, steps=12, guidance=4.5, negative_prompt="blur")
    plain = sent(endpoint_for(Operation.GENERATE, WireSettings()).body(asked))
    assert not {"seed", "steps", "num_inference_steps", "guidance_scale", "negative_prompt", "guidance"} & set(plain)
    names = {"seed": "seed", "steps": "steps"}
    declared = sent(endpoint_for(Operation.GENERATE, WireSettings(extensions=names)).body(asked))
    assert (declared["seed"], declared["steps"]) == (7, 12) and "guidance_scale" not in declared


def test_a_stream_asks_for_at_most_three_partial_images() -> None:
    body = sent(endpoint_for(Operation.GENERATE, WireSettings()).body(request(partial_images=5), stream=True))
    assert (body["stream"], body["partial_images"]) == (True, 3)


def test_an_edit_is_multipart_with_image_array_and_mask() -> None:
    endpoint = endpoint_for(Operation.EDIT, WireSettings(extensions={"seed": "seed"}))
    data, files = endpoint.body(request(operation=Operation.EDIT, images=(PNG, PNG), mask=PNG, seed=3))  # type: ignore[misc]
    assert [name for name, _ in files] == ["image[]", "image[]", "mask"]
    assert data == {"prompt": "a lake", "model": "m", "n": "1", "response_format": "b64_json", "seed": "3"}
    single, _ = endpoint.body(request(operation=Operation.EDIT, images=(PNG,), stream=True), stream=True)  # type: ignore[misc]
    _, one = endpoint.body(request(operation=Operation.EDIT, images=(PNG,)))  # type: ignore[misc]
    assert [name for name, _ in one] == ["image"]
    assert single["stream"] == "true"


def test_a_variation_sends_its_first_image_and_no_prompt() -> None:
    endpoint = endpoint_for(Operation.VARIATION, WireSettings())
    data, files = endpoint.body(request(operation=Operation.VARIATION, images=(PNG, PNG)))  # type: ignore[misc]
    assert [name for name, _ in files] == ["image"] and "prompt" not in data


def test_an_answer_is_read_with_its_size_format_usage_and_revised_prompt() -> None:
    answer = (
        b'{"created": 5, "data": [{"b64_json": "aGk=", "revised_prompt": "r"}], "size": "1536x1024",'
        b' "output_format": "webp", "usage": {"input_tokens": 3, "output_tokens": 7, "total_tokens": 10,'
        b' "input_tokens_details": {"text_tokens": 3, "image_tokens": 0}}}'
    )
    result = openai_upstream.GENERATIONS.decode_response(answer, request())
    image = result.images[0]
    assert (image.width, image.height, image.media_type, image.revised_prompt) == (1536, 1024, "image/webp", "r")
    assert (result.usage.prompt_tokens, result.usage.total_tokens, result.usage.images_generated) == (3, 10, 1)
    nulls = openai_upstream.GENERATIONS.decode_response(
        b'{"created": 5, "data": [{"url": "http://x/a.png", "b64_json": null}]}', request(width=256, height=256)
    )
    assert (nulls.images[0].url, nulls.images[0].width) == ("http://x/a.png", 256)


@pytest.mark.parametrize("answer", [b'{"created": 1, "data": []}', b'{"created": 1, "data": [{}]}', b"[]"])
def test_an_answer_without_an_image_is_an_upstream_error(answer: bytes) -> None:
    with pytest.raises(Exception) as raised:
        openai_upstream.GENERATIONS.decode_response(answer, request())
    assert getattr(raised.value, "code", None) is ErrorCode.UPSTREAM_ERROR


def envelope(code: str | None, type_: str = "invalid_request_error", param: str | None = None) -> bytes:
    return msgspec.json.encode({"error": {"message": "said", "type": type_, "param": param, "code": code}})


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, envelope("content_policy_violation"), ErrorCode.CONTENT_POLICY),
        (400, envelope("moderation_blocked", "image_generation_user_error"), ErrorCode.CONTENT_POLICY),
        (400, envelope("invalid_value", param="size"), ErrorCode.INVALID_SIZE),
        (400, envelope("string_above_max_length", param="prompt"), ErrorCode.INVALID_PROMPT),
        (400, envelope("unknown_parameter", param="seed"), ErrorCode.INVALID_REQUEST),
        (400, envelope(None), ErrorCode.INVALID_REQUEST),
        (401, envelope("invalid_api_key"), ErrorCode.UNAUTHORIZED),
        (403, envelope(None), ErrorCode.UNAUTHORIZED),
        (404, envelope("model_not_found"), ErrorCode.MODEL_NOT_FOUND),
        (429, envelope("rate_limit_exceeded", "requests"), ErrorCode.RATE_LIMITED),
        (429, envelope("insufficient_quota", "insufficient_quota"), ErrorCode.INSUFFICIENT_QUOTA),
        (500, envelope(None, "server_error"), ErrorCode.UPSTREAM_ERROR),
        (503, envelope(None, "server_error"), ErrorCode.OVERLOADED),
        (502, b"<html>bad gateway</html>", ErrorCode.UPSTREAM_ERROR),
        # older vLLM servers: the four fields at the top level, the code a number
        (
            400,
            b'{"object": "error", "message": "bad", "type": "BadRequestError", "param": null, "code": 400}',
            ErrorCode.INVALID_REQUEST,
        ),
    ],
)
def test_openais_errors_in_the_taxonomy(status: int, body: bytes, expected: ErrorCode) -> None:
    error = openai_upstream.ERRORS.parse(status, body, retry_after=2.0)
    assert error.code is expected and error.retry_after == 2.0


def test_a_streams_error_event_is_read_by_its_code() -> None:
    body = openai_upstream.ErrorBody(message="no", type="image_generation_user_error", code="moderation_blocked")
    assert openai_upstream.error_from_envelope(0, body).code is ErrorCode.CONTENT_POLICY
    assert openai_upstream.error_from_envelope(0, openai_upstream.ErrorBody()).code is ErrorCode.UPSTREAM_ERROR
