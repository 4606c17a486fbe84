"""The official openai SDK, unchanged, against the gateway's root /v1: generate, edit, variation."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import openai
import pytest

from schemas.dialect import image_dimensions
from tests.emulators import EmulatorServer, solid_png
from tests.integration.gateway_server import GatewayServer


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="sk-anything", base_url=gateway.url + "/v1", max_retries=0, timeout=30) as sdk:
        yield sdk


def test_generate_url_and_b64(client: openai.OpenAI, http: httpx.Client) -> None:
    by_url = client.images.generate(model="flux-schnell", prompt="A serene lake", size="1024x1024", n=2)
    assert by_url.data is not None and len(by_url.data) == 2
    assert by_url.data[0].url is not None
    assert image_dimensions(http.get(by_url.data[0].url).content) == (1024, 1024)

    by_b64 = client.images.generate(
        model="via-nebulablock-v1", prompt="A futuristic cityscape", size="512x512", response_format="b64_json"
    )
    assert by_b64.data is not None and by_b64.data[0].b64_json is not None
    assert image_dimensions(base64.b64decode(by_b64.data[0].b64_json)) == (512, 512)


def test_edit_with_several_images_and_mask(client: openai.OpenAI, emulators: dict[str, EmulatorServer]) -> None:
    png = solid_png(256, 256, (10, 20, 30))
    result = client.images.edit(
        model="black-forest-labs/FLUX.1-Kontext-dev",
        image=[("a.png", png, "image/png"), ("b.png", png, "image/png")],  # sent as image[]
        mask=("m.png", png, "image/png"),
        prompt="Add a red hat",
        response_format="b64_json",
    )
    assert result.data is not None and result.data[0].b64_json is not None
    assert image_dimensions(base64.b64decode(result.data[0].b64_json)) == (256, 256)
    assert emulators["nebul"].emulator.calls[-1].path == "/v1/images/edits"


def test_variation(client: openai.OpenAI, http: httpx.Client) -> None:
    png = solid_png(320, 256, (200, 20, 30))
    with pytest.deprecated_call():  # the SDK marks variations deprecated; they still work unchanged
        result = client.images.create_variation(
            model="black-forest-labs/FLUX.1-Kontext-dev", image=("in.png", png, "image/png"), n=1
        )
    assert result.data is not None and result.data[0].url is not None
    assert image_dimensions(http.get(result.data[0].url).content) == (320, 256)


def test_sdk_raises_its_own_error_types(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(model="flux-schnell", prompt="x", size="13x13")  # type: ignore[arg-type]
    assert bad.value.code == "invalid_size"
    with pytest.raises(openai.NotFoundError) as missing:
        client.images.generate(model="no-such-model", prompt="x")
    assert missing.value.code == "model_not_found"
