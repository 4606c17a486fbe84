"""Heavy answers over real HTTP: base64 from a provider reaches the client as the provider wrote it.

The Melious emulator answers random-pixel PNGs (about 1 MB of base64 each at 512x512), so the
gateway reads them as slices and writes its answer in pieces (``schemas.imageforms``); the
client gets one whole JSON answer of its declared length holding the provider's own text.

Heavy requests the other way: a NebulaBlock edit's base64 ``image`` and ``mask`` reach the
NebulaBlock provider as the client wrote them, with no decode in the gateway, and reach a provider
that takes files as their bytes.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator

import httpx
import pytest

from schemas.canonical import InputImage
from tests.conftest import API_KEY
from tests.emulators import EmulatorServer
from tests.emulators.png import noise_png
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


# --- heavy requests: a NebulaBlock edit's base64 image and mask (issue 15) ---


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every ``InputImage.as_bytes`` that makes bytes from base64 text, in this process (the gateway's too)."""
    made: list[int] = []
    as_bytes = InputImage.as_bytes

    def counted(image: InputImage) -> bytes:
        if not image.decoded:
            made.append(image.size)
        return as_bytes(image)

    monkeypatch.setattr(InputImage, "as_bytes", counted)
    return made


def edit_body(model: str) -> tuple[dict[str, str], bytes, bytes]:
    image, mask = noise_png(256, 256, 1), noise_png(256, 256, 2)
    return {"model": model, "prompt": "p", "image": odd_b64(image), "mask": odd_b64(mask)}, image, mask


def odd_b64(data: bytes) -> str:
    """Base64 of ``data`` that no encoder writes (an unused low bit of the last character set), so a text
    that arrives as it left was passed on, not decoded and encoded again."""
    data_text = base64.b64encode(data + b"\x00" * (len(data) % 3 == 0)).decode()
    body = data_text.rstrip("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return body[:-1] + alphabet[alphabet.index(body[-1]) | 1] + data_text[len(body) :]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_nebulablock_edit_reaches_nebulablock_with_the_clients_base64(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client, decodes: list[int]
) -> None:
    body, _, _ = edit_body("via-nebulablock-serverless")
    answer = http.post(gateway.url + "/nebulablock/api/v1/images/generation", json=body)
    assert answer.status_code == 200, answer.text
    sent = emulators["nebulablock"].emulator.calls[-1].body
    for field in ("image", "mask"):  # the emulator logs a long text as its length and hash
        assert sent[field] == {"length": len(body[field]), "sha256": sha256(body[field])}
    assert decodes == []  # no input was decoded on the way


def test_the_same_edit_reaches_a_multipart_provider_as_files(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client, decodes: list[int]
) -> None:
    body, image, mask = edit_body("via-nebul")
    answer = http.post(gateway.url + "/nebulablock/api/v1/images/generation", json=body)
    assert answer.status_code == 200, answer.text
    sent = emulators["nebul"].emulator.calls[-1].body
    padded = [len(data) + (len(data) % 3 == 0) for data in (image, mask)]
    assert [sent["image"]["size"], sent["mask"]["size"]] == padded
    assert sorted(decodes) == sorted(padded)  # each decoded once, for the provider that takes files


@pytest.mark.parametrize(
    ("field", "text", "message"),
    [
        ("image", "iVBORw0KGgo=A", "`image` is not valid base64"),
        ("mask", base64.b64encode(b"GIF89a" + b"\x00" * 60).decode(), "`mask` is not a PNG, JPEG or WebP image"),
    ],
)
def test_bad_base64_inputs_are_refused_before_any_provider(
    gateway: GatewayServer,
    emulators: dict[str, EmulatorServer],
    http: httpx.Client,
    field: str,
    text: str,
    message: str,
) -> None:
    body, _, _ = edit_body("via-nebulablock-serverless")
    answer = http.post(gateway.url + "/nebulablock/api/v1/images/generation", json={**body, field: text})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["message"]) == ("invalid_request", message)
    assert emulators["nebulablock"].emulator.calls == []
