"""The root /v1 family against OpenAI's published images document (tests/specs/), over real loopback HTTP.

A property-based fuzzer (schemathesis, driven by the document itself) sends what the document
allows, and much it does not, to /v1/images/{generations,edits,variations} of a gateway in front
of the emulators: no answer is a 5xx, and every 2xx (JSON or event stream) and every error holds
to the document. Then the answer forms OpenAI's clients rely on: GPT image model names answer
base64 when the client names no ``response_format``, and a model's configured default for the rest.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import schemathesis
from hypothesis import strategies as st

from tests import openai_spec
from tests.emulators import EmulatorServer, Fault, solid_png
from tests.integration.conftest import provider_entries
from tests.integration.gateway_server import GatewayServer, gateway_config

# Model names the fuzzer mixes into what it generates, so that some requests reach a provider: OpenAI's
# own names (each a model of this gateway, served by an emulator) and this gateway's default.
SERVED = {
    "dall-e-2": "nebul",  # generations, edits and variations
    "gpt-image-1.5": "nebul",
    "flux-schnell": "melious",  # generations only: an edit is a 400
}
NEBUL_MODEL = "black-forest-labs/FLUX.1-Kontext-dev"
PNG = solid_png(256, 256, (40, 90, 200))
FUZZ_EXAMPLES = 25  # per operation: the whole fuzz run stays within a few seconds


@pytest.fixture(scope="module")
def gateway(emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """The emulators behind OpenAI's model names, and one model whose default answer form is base64."""
    upstream = {"nebul": NEBUL_MODEL, "melious": "flux-schnell"}
    models: list[dict[str, Any]] = [
        {"name": name, "targets": [{"provider": provider, "model": upstream[provider]}]}
        for name, provider in SERVED.items()
    ]
    models.append(
        {
            "name": "flux-b64",
            "default_response_format": "b64_json",
            "targets": [{"provider": "melious", "model": "flux-schnell"}],
        }
    )
    config = gateway_config(provider_entries(emulators), models, tmp_path_factory.mktemp("store"))
    server = GatewayServer(config).start()
    yield server
    server.stop()


def _served(context: Any, body: Any) -> Any:
    """``flatmap_body``: the generated body, or the same with a served model and a real image."""
    if not isinstance(body, dict):
        return st.just(body)
    variants = [body]
    for model in SERVED:
        variant = {**body, "model": model}
        if "image" in variant:  # multipart: a real PNG, so the request may get past the image checks
            variant["image"] = PNG
            variant.pop("mask", None)
        variants.append(variant)
    return st.sampled_from(variants)


# OpenAI's images document as schemathesis reads it; each case is sent to the module's gateway (``base_url``).
document = schemathesis.openapi.from_path(
    openai_spec.SPEC_FILE,
    config=schemathesis.Config.from_dict(
        {
            "request-timeout": 30,
            "generation": {"max-examples": FUZZ_EXAMPLES, "mode": "all", "deterministic": True, "database": "none"},
            "phases": {"coverage": {"enabled": False}},  # it enumerates every case, unbounded by max-examples
        }
    ),
)
document.hook("flatmap_body")(_served)


@document.parametrize()
def test_fuzzed_requests_get_no_5xx_and_answers_that_hold_to_the_document(case: Any, gateway: GatewayServer) -> None:
    response = case.call(base_url=gateway.url + "/v1")
    assert response.status_code < 500, f"{case.method} {case.path} answered {response.status_code}: {response.text}"
    path = "/v1" + case.path
    content_type = response.headers.get("content-type", [""])[0]  # schemathesis keeps each header's values
    problems = openai_spec.answer_problems(path, response.status_code, content_type, response.content)
    assert problems == [], f"{case.method} {path} answered {response.status_code}: {problems}"


def test_the_suites_clients_are_held_to_the_document(gateway: GatewayServer, http: httpx.Client) -> None:
    """The conftest's watch sees a plain client's answers too: a broken one is a violation."""
    before = openai_spec.checked[0]
    answer = http.post(gateway.url + "/v1/images/generations", json={"model": "dall-e-2", "prompt": "a fox"})
    refused = http.post(gateway.url + "/v1/images/generations", json={"model": "dall-e-2"})
    assert (answer.status_code, refused.status_code) == (200, 400)
    assert openai_spec.checked[0] == before + 2 and openai_spec.violations == []
    broken = openai_spec.answer_problems(
        "/v1/images/generations", 200, "application/json", b'{"data": [{"url": null}]}'
    )
    assert "ImagesResponse at $: 'created' is a required property" in broken
    assert any("None is not of type 'string'" in problem for problem in broken)


def test_gpt_image_names_answer_base64_as_openai_does(gateway: GatewayServer) -> None:
    """The SDK sends no response_format for GPT image models and reads ``b64_json``; other names get a URL."""
    with openai.OpenAI(api_key="sk-x", base_url=gateway.url + "/v1", max_retries=0, timeout=30) as sdk:
        gpt = sdk.images.generate(model="gpt-image-1.5", prompt="a fox", size="1024x1024")
        assert gpt.data is not None and gpt.data[0].url is None and gpt.data[0].b64_json is not None
        assert base64.b64decode(gpt.data[0].b64_json).startswith(b"\x89PNG")
        assert (gpt.size, gpt.output_format) == ("1024x1024", "png")
        usage = gpt.usage  # Nebul's prompt_tokens, in OpenAI's names: text input, no output tokens
        assert usage is not None and usage.input_tokens == usage.input_tokens_details.text_tokens == usage.total_tokens
        assert usage.output_tokens == 0
        dalle = sdk.images.generate(model="dall-e-2", prompt="a fox")
        assert dalle.data is not None and dalle.data[0].url is not None and dalle.data[0].b64_json is None
        asked = sdk.images.generate(model="gpt-image-1.5", prompt="a fox", response_format="url")
        assert asked.data is not None and asked.data[0].url is not None


def test_a_models_configured_default_answer_form(gateway: GatewayServer, http: httpx.Client) -> None:
    plain = http.post(gateway.url + "/v1/images/generations", json={"model": "flux-b64", "prompt": "a fox"})
    assert plain.status_code == 200, plain.text
    assert list(plain.json()["data"][0]) == ["b64_json"]
    asked = {"model": "flux-b64", "prompt": "a fox", "response_format": "url"}
    assert list(http.post(gateway.url + "/v1/images/generations", json=asked).json()["data"][0]) == ["url"]
    # Only the root family lets the model decide: Melious's documented default stays url.
    melious = http.post(gateway.url + "/melious/v1/images/generations", json={"model": "flux-b64", "prompt": "a fox"})
    assert list(melious.json()["data"][0]) == ["url"]


def test_a_providers_revised_prompt_is_passed_on(
    gateway: GatewayServer, http: httpx.Client, emulators: dict[str, EmulatorServer]
) -> None:
    """An OpenAI-compatible provider that rewrote the prompt says so (``revised_prompt``): /v1 passes it on."""
    b64 = base64.b64encode(PNG).decode()
    said = {"created": 1, "data": [{"b64_json": b64, "url": None, "revised_prompt": "a red fox in snow"}]}
    emulators["nebul"].emulator.add_fault(Fault(body=json.dumps(said)))
    body = {"model": "dall-e-2", "prompt": "a fox", "response_format": "b64_json"}
    answer = http.post(gateway.url + "/v1/images/generations", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"] == [{"b64_json": b64, "revised_prompt": "a red fox in snow"}]


def test_the_document_in_the_repository_is_openais() -> None:
    """tests/specs/ holds the images subset of OpenAI's document as published (its README names the commit)."""
    spec = openai_spec.document()
    assert spec["openapi"].startswith("3.1") and "2026-08-21" in spec["info"]["description"]
    assert set(spec["paths"]) == {"/images/generations", "/images/edits", "/images/variations"}
    assert "2026-08-21" in (openai_spec.SPEC_FILE.parent / "README.md").read_text()
