"""The OpenAI emulator answers as OpenAI's published document says (tests/specs/openai-images-openapi.yaml).

Every answer here is validated against the document's own schemas (OpenAPI 3.1 is JSON Schema
2020-12; ``#/components/...`` references resolved through a ``referencing`` registry holding the
whole document): ``ImagesResponse`` for JSON answers, ``ImageGenStreamEvent`` and
``ImageEditStreamEvent`` for each event of a stream; error answers hold OpenAI's envelope. The
official ``openai`` SDK reads it unchanged.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.emulators import EmulatorServer, Fault, image_size, solid_png, start_emulator

SPEC = Path(__file__).resolve().parents[1] / "specs" / "openai-images-openapi.yaml"
URI = "urn:openai-images"
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PNG = solid_png(256, 256)
ERROR_KEYS = {"message", "type", "param", "code"}


@functools.cache
def validator(component: str) -> Draft202012Validator:
    document = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    registry = Registry().with_resource(URI, Resource.from_contents(document, default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{URI}#/components/schemas/{component}"}, registry=registry)


def holds(component: str, instance: Any) -> None:
    problems = [f"{error.json_path}: {error.message[:200]}" for error in validator(component).iter_errors(instance)]
    assert not problems, problems


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event of a server-sent stream."""
    found = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        if not lines:
            continue
        name = next(line[7:] for line in lines if line.startswith("event: "))
        data = "\n".join(line[6:] for line in lines if line.startswith("data: "))
        found.append((name, json.loads(data)))
    return found


def envelope(response: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    assert body["error"]["code"] == code
    return dict(body["error"])


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    with start_emulator("openai", api_key=KEY) as running:
        yield running


@pytest.fixture(scope="module")
def extended() -> Iterator[EmulatorServer]:
    with start_emulator("openai", api_key=KEY, extensions=True) as running:
        yield running


@pytest.fixture
def http(server: EmulatorServer) -> Iterator[httpx.Client]:
    server.emulator.reset()
    with httpx.Client(base_url=server.base_url + "/v1", headers=AUTH, timeout=30) as client:
        yield client


def test_gpt_image_generation_is_an_images_response_with_settings_and_usage(http: httpx.Client) -> None:
    response = http.post("/images/generations", json={"model": "gpt-image-1", "prompt": "a lake", "size": "1536x1024"})
    assert response.status_code == 200
    body = response.json()
    holds("ImagesResponse", body)
    assert [set(item) for item in body["data"]] == [{"b64_json"}]
    assert image_size(base64.b64decode(body["data"][0]["b64_json"])) == (1536, 1024)
    assert (body["size"], body["quality"], body["background"], body["output_format"]) == (
        "1536x1024",
        "medium",
        "opaque",
        "png",
    )
    assert body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + body["usage"]["output_tokens"]


def test_dall_e_2_answers_urls_by_default_and_nothing_else(http: httpx.Client) -> None:
    response = http.post("/images/generations", json={"prompt": "a lake", "size": "256x256", "n": 2})
    body = response.json()
    holds("ImagesResponse", body)
    assert set(body) == {"created", "data"} and [set(item) for item in body["data"]] == [{"url"}, {"url"}]
    assert image_size(httpx.get(body["data"][0]["url"]).content) == (256, 256)
    as_b64 = http.post("/images/generations", json={"prompt": "a lake", "response_format": "b64_json"}).json()
    holds("ImagesResponse", as_b64)
    assert image_size(base64.b64decode(as_b64["data"][0]["b64_json"])) == (1024, 1024)


def test_dall_e_3_revises_the_prompt_and_makes_one_image(http: httpx.Client) -> None:
    body = http.post("/images/generations", json={"model": "dall-e-3", "prompt": "a lake", "style": "natural"}).json()
    holds("ImagesResponse", body)
    assert "a lake" in body["data"][0]["revised_prompt"]
    envelope(http.post("/images/generations", json={"model": "dall-e-3", "prompt": "x", "n": 2}), 400, "invalid_value")


def test_edits_take_image_array_and_mask(http: httpx.Client) -> None:
    files = [("image[]", ("a.png", PNG, "image/png")), ("image[]", ("b.png", PNG, "image/png"))]
    files.append(("mask", ("m.png", PNG, "image/png")))
    response = http.post("/images/edits", data={"model": "gpt-image-1", "prompt": "paint it"}, files=files)
    holds("ImagesResponse", response.json())
    assert response.json()["usage"]["input_tokens_details"]["image_tokens"] == 130
    one = http.post(
        "/images/edits",
        data={"model": "dall-e-2", "prompt": "paint it", "size": "256x256"},
        files=[("image", ("a.png", PNG, "image/png"))],
    )
    holds("ImagesResponse", one.json())
    assert set(one.json()["data"][0]) == {"url"}


def test_variations_are_dall_e_2s_alone(http: httpx.Client) -> None:
    files = [("image", ("a.png", PNG, "image/png"))]
    response = http.post("/images/variations", data={"n": "2", "size": "256x256"}, files=files)
    holds("ImagesResponse", response.json())
    assert len(response.json()["data"]) == 2
    refused = http.post("/images/variations", data={"model": "gpt-image-1"}, files=files)
    assert envelope(refused, 400, "invalid_value")["param"] == "model"


@pytest.mark.parametrize(
    ("path", "component"), [("generations", "ImageGenStreamEvent"), ("edits", "ImageEditStreamEvent")]
)
def test_streams_hold_to_the_documents_events(http: httpx.Client, path: str, component: str) -> None:
    fields = {"model": "gpt-image-1", "prompt": "a lake", "stream": "true", "partial_images": "2"}
    if path == "generations":
        response = http.post(f"/images/{path}", json={**fields, "stream": True, "partial_images": 2})
    else:
        response = http.post(f"/images/{path}", data=fields, files=[("image", ("a.png", PNG, "image/png"))])
    assert response.headers["content-type"].startswith("text/event-stream")
    found = events(response.text)
    prefix = "image_generation" if path == "generations" else "image_edit"
    assert [name for name, _ in found] == [f"{prefix}.partial_image"] * 2 + [f"{prefix}.completed"]
    for name, data in found:
        assert data["type"] == name
        holds(component, data)
    assert [data["partial_image_index"] for _, data in found[:2]] == [0, 1]


def test_a_stream_may_end_in_an_error_event(http: httpx.Client) -> None:
    payload = {"model": "gpt-image-1", "prompt": "explode", "stream": True, "partial_images": 2}
    found = events(http.post("/images/generations", json=payload).text)
    assert [name for name, _ in found] == ["image_generation.partial_image", "error"]
    assert set(found[1][1]["error"]) == ERROR_KEYS


def test_errors_are_openais_envelope_with_its_codes(http: httpx.Client) -> None:
    gpt = {"model": "gpt-image-1", "prompt": "a lake"}
    assert (
        envelope(http.post("/images/generations", json={**gpt, "seed": 1}), 400, "unknown_parameter")["param"] == "seed"
    )
    refused = http.post("/images/generations", json={**gpt, "response_format": "b64_json"})
    assert envelope(refused, 400, "unknown_parameter")["param"] == "response_format"
    assert (
        envelope(http.post("/images/generations", json={**gpt, "size": "300x300"}), 400, "invalid_value")["param"]
        == "size"
    )
    assert envelope(http.post("/images/generations", json={"prompt": "x", "model": "nope"}), 404, "model_not_found")
    blocked = envelope(http.post("/images/generations", json={**gpt, "prompt": "forbidden"}), 400, "moderation_blocked")
    assert blocked["type"] == "image_generation_user_error"
    dall_e = http.post("/images/generations", json={"prompt": "forbidden"})
    assert envelope(dall_e, 400, "content_policy_violation")["type"] == "invalid_request_error"
    unauthorized = httpx.post(
        str(http.base_url).rstrip("/") + "/images/generations", json=gpt, headers={"Authorization": "Bearer x"}
    )
    assert envelope(unauthorized, 401, "invalid_api_key")["type"] == "invalid_request_error"


def test_faults_answer_in_the_envelope_with_the_codes_type(http: httpx.Client, server: EmulatorServer) -> None:
    server.emulator.add_fault(Fault(status=429, code="insufficient_quota"))
    server.emulator.add_fault(Fault(status=429, retry_after="1"))
    server.emulator.add_fault(Fault(status=500))
    gpt = {"model": "gpt-image-1", "prompt": "a lake"}
    assert (
        envelope(http.post("/images/generations", json=gpt), 429, "insufficient_quota")["type"] == "insufficient_quota"
    )
    limited = http.post("/images/generations", json=gpt)
    assert envelope(limited, 429, "rate_limit_exceeded")["type"] == "requests"
    assert limited.headers["retry-after"] == "1"
    assert envelope(http.post("/images/generations", json=gpt), 500, None)["type"] == "server_error"


def test_extensions_are_taken_when_the_server_takes_them(extended: EmulatorServer) -> None:
    payload = {"prompt": "a lake", "size": "256x256", "seed": 7, "num_inference_steps": 4, "guidance_scale": 3.5}
    response = httpx.post(extended.url("/v1/images/generations"), json=payload, headers=AUTH)
    assert response.status_code == 200, response.text
    bad = httpx.post(extended.url("/v1/images/generations"), json={**payload, "num_inference_steps": 0}, headers=AUTH)
    assert envelope(bad, 400, "invalid_value")["param"] == "num_inference_steps"


def test_the_official_sdk_reads_it(server: EmulatorServer) -> None:
    with openai.OpenAI(api_key=KEY, base_url=server.base_url + "/v1", max_retries=0) as sdk:
        answer = sdk.images.generate(model="gpt-image-1", prompt="a lake", size="1024x1024")
        assert answer.usage is not None and answer.size == "1024x1024"
        streamed = list(sdk.images.generate(model="gpt-image-1", prompt="a lake", stream=True, partial_images=1))
        assert [event.type for event in streamed] == ["image_generation.partial_image", "image_generation.completed"]
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.images.generate(model="gpt-image-1", prompt="forbidden")
        assert refused.value.code == "moderation_blocked"
