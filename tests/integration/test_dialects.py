"""What the dialect routes do beyond one image each: the fixed-model routes, splits across calls, gateway URLs,
edits and variations with files, refusals. Every dialect route x provider x mode is tests/integration/test_matrix.py."""

from __future__ import annotations

import base64

import httpx

from schemas.dialect import image_dimensions
from tests.emulators import EmulatorServer
from tests.integration.gateway_server import GatewayServer

PROMPT = "A serene mountain landscape at sunset"


def image_bytes(http: httpx.Client, form: str, pointer: str) -> bytes:
    if form == "b64":
        return base64.b64decode(pointer)
    fetched = http.get(pointer)
    assert fetched.status_code == 200, fetched.text
    assert fetched.headers["content-type"] == "image/png"
    return fetched.content


def test_pomelo_flux_route_reaches_its_configured_model(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    body = {"prompt": PROMPT, "negative_prompt": "blurry", "style": "digital-art", "steps": 40, "aspect_ratio": "16:9"}
    for path in ("/pomelo/api/v1/flux.1", "/api/v1/flux.1"):
        response = http.post(gateway.url + path, json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["model"] == "flux.1" and answer["status"] == "complete"
        assert isinstance(answer["seed"], int)
        assert (answer["images"][0]["width"], answer["images"][0]["height"]) == (1024, 576)
        assert image_dimensions(image_bytes(http, "url", answer["images"][0]["url"])) == (1024, 576)
    assert len(emulators["pomelo"].emulator.calls) == 2


def test_root_paths_of_single_dialect_routes(gateway: GatewayServer, http: httpx.Client) -> None:
    mj = http.post(gateway.url + "/api/v1/midjourney/generate", json={"prompt": PROMPT, "model": "via-melious"})
    assert mj.status_code == 200, mj.text
    assert set(mj.json()) == {"status", "images", "prompt", "model"}
    legacy = {"model": "via-nebul", "prompt": PROMPT, "width": 512, "height": 512, "negative_prompt": None}
    for method in ("GET", "POST"):  # the document's curl says GET with a JSON body
        answer = http.request(method, gateway.url + "/api/v1/images/generation", json=legacy)
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"][0]["index"] == 0
    v1 = http.post(gateway.url + "/v1/images/generate", json={"model": "via-pomelo-midjourney", "prompt": PROMPT})
    assert v1.status_code == 200, v1.text
    assert v1.json()["data"]["usage"]["images_generated"] == 1


def test_several_images_split_across_calls_keep_their_count(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    """Pomelo's Flux.1 makes one image a call: n=3 becomes three upstream calls, three images back."""
    body = {"model": "via-pomelo-flux", "prompt": PROMPT, "n": 3, "size": "1024x1024", "response_format": "b64_json"}
    response = http.post(gateway.url + "/melious/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 3
    assert len(emulators["pomelo"].emulator.calls) == 3


def test_gateway_url_answer_is_the_image(gateway: GatewayServer, http: httpx.Client) -> None:
    """NebulaBlock's serverless API answers base64 only; a client asking for a URL gets a gateway URL
    that serves those very bytes."""
    b64 = http.post(
        gateway.url + "/melious/v1/images/generations",
        json={
            "model": "via-nebulablock-serverless",
            "prompt": "same",
            "size": "512x512",
            "response_format": "b64_json",
        },
    ).json()["data"][0]["b64_json"]
    url = http.post(
        gateway.url + "/melious/v1/images/generations",
        json={"model": "via-nebulablock-serverless", "prompt": "same", "size": "512x512"},
    ).json()["data"][0]["url"]
    assert url.startswith(gateway.url + "/images/")
    assert http.get(url).content == base64.b64decode(b64)
    forged = url[:-10] + "0000000000"
    assert http.get(forged).status_code == 404
    # Anything but exactly a signed name is a 404 too, never a 500: a NUL, a path, another extension, a suffix.
    for odd in (url + "%00", url + "%2F..%2Fimage-store.secret", url[:-3] + "jpg", url + ".png", url + "%20"):
        answer = http.get(odd)
        assert answer.status_code == 404, (odd, answer.status_code, answer.text)
        assert answer.json()["error"]["message"] in ("no such image, or it has expired", "no such route")


def test_nebul_edit_with_mask_and_variation(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    png = base64.b64decode(
        http.post(
            gateway.url + "/melious/v1/images/generations",
            json={"model": "via-melious", "prompt": "base", "size": "512x512", "response_format": "b64_json"},
        ).json()["data"][0]["b64_json"]
    )
    files = [
        ("image", ("a.png", png, "image/png")),
        ("image", ("b.png", png, "image/png")),
        ("mask", ("m.png", png, "image/png")),
    ]
    data = {"model": "via-nebul", "prompt": "Add a red hat", "n": "2", "response_format": "b64_json"}
    edit = http.post(gateway.url + "/nebul/v1/images/edits", files=files, data=data)
    assert edit.status_code == 200, edit.text
    answer = edit.json()
    assert len(answer["data"]) == 2 and answer["data"][0]["url"] is None
    assert image_dimensions(base64.b64decode(answer["data"][0]["b64_json"])) == (512, 512)
    upstream = emulators["nebul"].emulator.calls[-1]
    assert upstream.path == "/v1/images/edits"

    variation = http.post(
        gateway.url + "/nebul/v1/images/variations",
        files={"image": ("a.png", png, "image/png")},
        data={"model": "via-nebul", "size": "256x256"},
    )
    assert variation.status_code == 200, variation.text
    assert image_dimensions(base64.b64decode(variation.json()["data"][0]["b64_json"])) == (256, 256)


def test_nebulablock_image_to_image_reaches_serverless(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    b64 = http.post(
        gateway.url + "/nebulablock/api/v1/images/generation",
        json={"model": "via-nebulablock-serverless", "prompt": "base", "width": 512, "height": 512},
    ).json()["data"][0]["b64_json"]
    body = {
        "model": "via-nebulablock-serverless",
        "prompt": "a red baseball cap",
        "num_steps": 40,
        "guidance_scale": 4.5,
        "width": 512,
        "height": 512,
        "image": b64,
        "mask": b64,
    }
    response = http.post(gateway.url + "/nebulablock/api/v1/images/generation", json=body)
    assert response.status_code == 200, response.text
    assert emulators["nebulablock"].emulator.calls[-1].path == "/api/v1/images/generation"


def test_operation_a_provider_cannot_do_is_refused_in_the_dialect(gateway: GatewayServer, http: httpx.Client) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    response = http.post(
        gateway.url + "/nebul/v1/images/variations",
        files={"image": ("a.png", png, "image/png")},
        data={"model": "via-melious"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "operation_not_supported"


def test_health_and_ready(gateway: GatewayServer, http: httpx.Client) -> None:
    assert http.get(gateway.url + "/health").json() == {"status": "ok"}
    ready = http.get(gateway.url + "/ready").json()
    assert ready["status"] == "ready" and "via-melious" in ready["models"]


def test_an_edit_larger_than_a_mib_reaches_the_provider(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    """A multipart body past 1 MiB goes upstream in chunks (as raw bytes aiohttp warns it may hold the loop, and
    under the suite's warnings-as-errors the call failed)."""
    import io
    import random

    from PIL import Image

    noise = random.Random(7).randbytes(640 * 640 * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (640, 640), noise).save(buffer, format="PNG", compress_level=0)
    png = buffer.getvalue()
    assert 1024 * 1024 < len(png) < 1536 * 1024
    data = {"model": "via-nebul", "prompt": "Add a red hat", "response_format": "b64_json"}
    edit = http.post(gateway.url + "/nebul/v1/images/edits", files=[("image", ("a.png", png, "image/png"))], data=data)
    assert edit.status_code == 200, edit.text
    upstream = emulators["nebul"].emulator.calls[-1]
    assert upstream.path == "/v1/images/edits" and upstream.body_size > len(png)
