"""Heavy answers over real HTTP: base64 from a provider reaches the client as the provider wrote it.

The Melious emulator answers random-pixel PNGs (about 1 MB of base64 each at 512x512), so the
gateway reads them as slices and writes its answer in pieces (``schemas.imageforms``); the
client gets one whole JSON answer of its declared length holding the provider's own text.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import API_KEY
from tests.emulators import EmulatorServer
from tests.integration.gateway_server import GatewayServer

REQUEST = {"model": "flux-schnell", "prompt": "p", "size": "512x512", "n": 2, "response_format": "b64_json"}


@pytest.fixture
def noisy(emulators: dict[str, EmulatorServer]) -> Iterator[EmulatorServer]:
    melious = emulators["melious"]
    melious.emulator.noise = True
    try:
        yield melious
    finally:
        melious.emulator.noise = False


@pytest.mark.parametrize("path", ["/v1/images/generations", "/melious/v1/images/generations"])
def test_heavy_base64_reaches_the_client_as_the_provider_wrote_it(
    noisy: EmulatorServer, gateway: GatewayServer, http: httpx.Client, path: str
) -> None:
    direct = http.post(
        noisy.base_url + "/v1/images/generations", json=REQUEST, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert direct.status_code == 200, direct.text
    texts = [item["b64_json"] for item in direct.json()["data"]]
    assert min(len(text) for text in texts) > 256 * 1024  # large enough to go as pieces

    answer = http.post(gateway.url + path, json=REQUEST)
    assert answer.status_code == 200, answer.text
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert [item["b64_json"] for item in answer.json()["data"]] == texts
