"""The emulators against their documents: the seed examples, the exact response
shapes, real PNG bytes, auth, validation codes, faults and the call log."""

from __future__ import annotations

import base64
import re
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import API_KEY
from tests.emulators import EmulatorServer, Fault, image_size, noise_png, solid_png, start_emulator
from tests.emulators.errors import TABLE, openai_type
from tests.emulators.pomelo import aspect_to_size

AUTH = {"Authorization": f"Bearer {API_KEY}"}
ROOT = Path(__file__).resolve().parents[2]

# A minimal valid request per kind, for the tests that are the same everywhere.
BASIC: dict[str, tuple[str, str, dict[str, Any]]] = {
    "melious": ("POST", "/v1/images/generations", {"prompt": "a cat", "size": "512x512"}),
    "nebul": ("POST", "/v1/images/generations", {"prompt": "a cat", "size": "256x256"}),
    "pomelo": ("POST", "/api/v1/midjourney/generate", {"prompt": "a cat", "width": 64, "height": 64}),
    "nebulablock": ("POST", "/v1/images/generate", {"model": "sdxl", "prompt": "a cat", "size": "64x64"}),
}

# The code each provider answers for a canonical error (docs/errors.md).
CODES: dict[str, dict[str, str]] = {
    "melious": {
        "unauthorized": "AUTH_INVALID_API_KEY",
        "invalid_size": "VALIDATION_INVALID_VALUE",
        "invalid_prompt": "VALIDATION_INVALID_VALUE",
        "content_policy": "POLICY_CONTENT_VIOLATION",
        "overloaded": "INFERENCE_OVERLOADED",
        "invalid_request": "VALIDATION_INVALID_VALUE",
        "model_not_found": "MODEL_NOT_FOUND",
    },
    "nebul": {
        "unauthorized": "invalid_api_key",
        "invalid_size": "invalid_size",
        "invalid_prompt": "invalid_prompt",
        "content_policy": "content_policy_violation",
        "overloaded": "overloaded",
        "invalid_request": "invalid_value",
        "model_not_found": "model_not_found",
    },
    **{
        kind: {
            "unauthorized": "unauthorized",
            "invalid_size": "invalid_size",
            "invalid_prompt": "invalid_prompt",
            "content_policy": "content_policy_violation",
            "overloaded": "overloaded",
            "invalid_request": "invalid_request",
            "model_not_found": "model_not_found",
        }
        for kind in ("pomelo", "nebulablock")
    },
}

KINDS = list(BASIC)


# --------------------------------------------------------------------------- helpers


def assert_png(data: bytes, width: int, height: int) -> None:
    """`data` is a well-formed 8-bit RGB PNG of width x height (chunks, CRCs, pixels)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + payload) & 0xFFFFFFFF == crc
        chunks[kind] = payload
        pos += 12 + length
    assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}
    assert struct.unpack(">IIBBBBB", chunks[b"IHDR"]) == (width, height, 8, 2, 0, 0, 0)
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 3 * width)
    assert image_size(data) == (width, height)


def b64_png(text: str, width: int, height: int) -> None:
    assert_png(base64.b64decode(text), width, height)


def fetch_png(http: httpx.Client, url: str, server: EmulatorServer, width: int, height: int) -> None:
    """The URL is absolute, on the emulator itself, and serves the PNG."""
    assert url.startswith(server.base_url + "/files/") and url.endswith(".png")
    response = http.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert_png(response.content, width, height)


def call(http: httpx.Client, server: EmulatorServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", AUTH)
    return http.request(method, server.url(path), **kwargs)


def basic(http: httpx.Client, servers: dict[str, EmulatorServer], kind: str, **kwargs: Any) -> httpx.Response:
    method, path, payload = BASIC[kind]
    kwargs.setdefault("json", payload)
    return call(http, servers[kind], method, path, **kwargs)


def error_code(kind: str, body: dict[str, Any]) -> str:
    """The provider code in an error body, checking the envelope's exact shape."""
    if kind == "melious":
        assert list(body) == ["error"] and list(body["error"]) == ["code", "message"]
    elif kind == "nebul":
        assert list(body) == ["error"] and list(body["error"]) == ["message", "type", "param", "code"]
    elif kind == "pomelo":
        assert list(body) == ["status", "error"] and body["status"] == "error"
        assert list(body["error"]) == ["code", "message"]
    else:
        assert list(body) == ["status", "error"] and body["status"] == "error"
        assert list(body["error"]) == ["code", "message", "details"] and list(body["error"]["details"]) == ["reason"]
    return str(body["error"]["code"])


def jpeg_header(width: int, height: int) -> bytes:
    """A JPEG prefix (SOI, APP0, SOF0) with the given dimensions: enough to sniff."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


# --------------------------------------------------------------------------- png helpers


def test_solid_png_and_image_size() -> None:
    assert_png(solid_png(37, 5, (1, 2, 3)), 37, 5)
    assert solid_png(1024, 1024) is solid_png(1024, 1024)  # cached


def test_noise_png_is_incompressible_cached_and_varied() -> None:
    png = noise_png(64, 48)
    assert_png(png, 64, 48)
    assert noise_png(64, 48) is png and noise_png(64, 48, 4) is not png  # cached per (size, index)
    assert noise_png(64, 48, 4) == png and noise_png(64, 48, 1) != png  # four variants
    assert len(zlib.compress(png, 9)) > 0.99 * len(png) > 64 * 48 * 3


def test_noise_emulator_answers_noise_without_a_call_log(http: httpx.Client) -> None:
    with start_emulator("melious", api_key=API_KEY, noise=True, record_calls=False) as server:
        payload = {"prompt": "a cat", "size": "512x512", "n": 2, "response_format": "b64_json"}
        response = call(http, server, "POST", "/v1/images/generations", json=payload)
        assert response.status_code == 200, response.text
        first, second = (base64.b64decode(item["b64_json"]) for item in response.json()["data"])
        assert first == noise_png(512, 512, 0) and second == noise_png(512, 512, 1)
        assert_png(first, 512, 512)
        assert server.emulator.calls == []
    assert image_size(jpeg_header(640, 480)) == (640, 480)
    assert image_size(b"GIF89a....") is None
    assert image_size(b"\x89PNG\r\n\x1a\n") is None


def test_aspect_ratio_sizes() -> None:
    assert aspect_to_size("16:9") == (1024, 576)
    assert aspect_to_size("4:3") == (1024, 768)
    assert aspect_to_size("3:4") == (768, 1024)
    assert aspect_to_size("1:1") == (1024, 1024)
    assert aspect_to_size("9:16") == (576, 1024)
    assert aspect_to_size("wide") is None


# --------------------------------------------------------------------------- Melious


def test_melious_documented_example(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    server = servers["melious"]
    payload = {
        "model": "flux-schnell",
        "prompt": "A serene mountain landscape at sunset with a reflective lake",
        "size": "1024x1024",
        "n": 1,
    }
    response = call(http, server, "POST", "/v1/images/generations", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["created", "data", "environment_impact"]
    assert isinstance(body["created"], int)
    assert len(body["data"]) == 1 and list(body["data"][0]) == ["url"]
    assert list(body["environment_impact"]) == [
        "carbon_g_co2",
        "water_liters",
        "energy_kwh",
        "renewable_percent",
        "provider_id",
        "location",
    ]
    fetch_png(http, body["data"][0]["url"], server, 1024, 1024)


def test_melious_b64_and_n(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    payload = {
        "model": "flux-schnell",
        "prompt": "A futuristic cityscape",
        "size": "1280x720",
        "response_format": "b64_json",
        "n": 3,
    }
    response = call(http, servers["melious"], "POST", "/v1/images/generations", json=payload)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == 3 and all(list(item) == ["b64_json"] for item in data)
    b64_png(data[0]["b64_json"], 1280, 720)


@pytest.mark.parametrize(
    ("payload", "status", "canonical"),
    [
        ({"prompt": "x", "size": "1000x1000"}, 400, "invalid_size"),
        ({"prompt": "x", "n": 5}, 400, "invalid_request"),
        ({"prompt": "x", "model": "dall-e-3"}, 404, "model_not_found"),
        ({"prompt": "x", "response_format": "png"}, 400, "invalid_request"),
        ({"prompt": "  "}, 400, "invalid_prompt"),
        ({"n": 1}, 400, "invalid_prompt"),
        ({"prompt": "a Forbidden picture"}, 400, "content_policy"),
    ],
)
def test_melious_validation(
    http: httpx.Client, servers: dict[str, EmulatorServer], payload: dict[str, Any], status: int, canonical: str
) -> None:
    response = call(http, servers["melious"], "POST", "/v1/images/generations", json=payload)
    assert response.status_code == status
    assert error_code("melious", response.json()) == CODES["melious"][canonical]


# --------------------------------------------------------------------------- Nebul


def nebul_shape(body: dict[str, Any]) -> None:
    assert list(body) == ["created", "data", "background", "output_format", "size", "quality", "usage"]
    assert all(list(item) == ["b64_json", "url"] for item in body["data"])
    assert list(body["usage"]) == ["prompt_tokens", "total_tokens"]


def test_nebul_documented_generation(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    payload = {
        "model": "black-forest-labs/FLUX.1-Kontext-dev",
        "prompt": "A photo of a cat sitting on a windowsill at sunset",
        "n": 1,
        "response_format": "b64_json",
    }
    response = call(http, servers["nebul"], "POST", "/v1/images/generations", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    nebul_shape(body)
    assert (body["background"], body["output_format"], body["size"], body["quality"]) == ("auto", "png", "auto", "auto")
    assert body["data"][0]["url"] is None
    b64_png(body["data"][0]["b64_json"], 1024, 1024)


def test_nebul_url_answer(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    server = servers["nebul"]
    payload = {"prompt": "a dog", "size": "512x768", "response_format": "url", "n": 2, "quality": "hd", "guidance": 3.5}
    response = call(http, server, "POST", "/v1/images/generations", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    nebul_shape(body)
    assert body["size"] == "512x768" and body["quality"] == "hd" and len(body["data"]) == 2
    assert body["data"][0]["b64_json"] is None
    fetch_png(http, body["data"][1]["url"], server, 512, 768)


def test_nebul_documented_edit_keeps_input_size(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    files = [("image", ("original.png", solid_png(300, 200), "image/png"))]
    data = {
        "prompt": "Add a red hat to the person in the image",
        "model": "black-forest-labs/FLUX.1-Kontext-dev",
        "n": "1",
        "response_format": "b64_json",
    }
    response = call(http, servers["nebul"], "POST", "/v1/images/edits", files=files, data=data)
    assert response.status_code == 200, response.text
    body = response.json()
    nebul_shape(body)
    b64_png(body["data"][0]["b64_json"], 300, 200)


def test_nebul_edit_with_repeated_image_brackets_and_mask(
    http: httpx.Client, servers: dict[str, EmulatorServer]
) -> None:
    server = servers["nebul"]
    files = [
        ("image[]", ("a.png", solid_png(256, 256), "image/png")),
        ("image[]", ("b.jpg", jpeg_header(256, 256), "image/jpeg")),
        ("mask", ("mask.png", solid_png(256, 256, (0, 0, 0)), "image/png")),
    ]
    data = {"prompt": "merge them", "model": "black-forest-labs/FLUX.1-Kontext-dev", "size": "512x512", "n": "2"}
    response = call(http, server, "POST", "/v1/images/edits", files=files, data=data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["size"] == "512x512" and len(body["data"]) == 2
    b64_png(body["data"][1]["b64_json"], 512, 512)
    [recorded] = server.emulator.calls
    images = recorded.body["image[]"]
    assert [item["filename"] for item in images] == ["a.png", "b.jpg"]
    assert images[1]["size"] == len(jpeg_header(256, 256))
    assert recorded.body["mask"]["filename"] == "mask.png" and recorded.body["prompt"] == "merge them"


def test_nebul_edit_repeated_image_field(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    files = [
        ("image", ("a.png", solid_png(320, 256), "image/png")),
        ("image", ("b.png", solid_png(64, 64), "image/png")),
    ]
    data = {"prompt": "x", "model": "black-forest-labs/FLUX.1-Kontext-dev"}
    response = call(http, servers["nebul"], "POST", "/v1/images/edits", files=files, data=data)
    assert response.status_code == 200, response.text
    b64_png(response.json()["data"][0]["b64_json"], 320, 256)


@pytest.mark.parametrize(
    ("files", "data", "status", "canonical", "param"),
    [
        ([("image", ("x.png", b"not an image", "image/png"))], {"prompt": "x"}, 400, "invalid_request", "image"),
        ([], {"prompt": "x", "other": "y"}, 400, "invalid_request", "image"),
        ([("image", ("x.png", solid_png(64, 64), "image/png"))], {"prompt": ""}, 400, "invalid_prompt", "prompt"),
        (
            [("image", ("x.png", solid_png(64, 64), "image/png"))],
            {"prompt": "x", "size": "9x9"},
            400,
            "invalid_size",
            "size",
        ),
        (
            [("image", ("x.png", solid_png(64, 64), "image/png")), ("mask", ("m.png", solid_png(32, 32), "image/png"))],
            {"prompt": "x"},
            400,
            "invalid_request",
            "mask",
        ),
        (
            [("image", ("x.png", solid_png(64, 64), "image/png"))],
            {"prompt": "x", "model": "gpt-image-1"},
            404,
            "model_not_found",
            "model",
        ),
    ],
)
def test_nebul_edit_validation(
    http: httpx.Client,
    servers: dict[str, EmulatorServer],
    files: list[Any],
    data: dict[str, str],
    status: int,
    canonical: str,
    param: str,
) -> None:
    data = {"model": "black-forest-labs/FLUX.1-Kontext-dev", **data}
    response = call(http, servers["nebul"], "POST", "/v1/images/edits", files=files or None, data=data)
    assert response.status_code == status, response.text
    body = response.json()
    assert error_code("nebul", body) == CODES["nebul"][canonical]
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == param


def test_nebul_edit_requires_model(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    files = [("image", ("x.png", solid_png(64, 64), "image/png"))]
    response = call(http, servers["nebul"], "POST", "/v1/images/edits", files=files, data={"prompt": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


def test_nebul_documented_variation(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    files = {"image": ("original.png", solid_png(512, 256), "image/png")}
    data = {"model": "black-forest-labs/FLUX.1-Kontext-dev", "n": "1", "response_format": "b64_json"}
    response = call(http, servers["nebul"], "POST", "/v1/images/variations", files=files, data=data)
    assert response.status_code == 200, response.text
    body = response.json()
    nebul_shape(body)
    b64_png(body["data"][0]["b64_json"], 512, 256)


# --------------------------------------------------------------------------- Pomelo


def test_pomelo_documented_midjourney(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    server = servers["pomelo"]
    data = {
        "prompt": "A serene mountain landscape with a lake at sunset, photorealistic",
        "style": "scenic",
        "width": 1024,
        "height": 768,
        "model": "5",
        "num_outputs": 2,
    }
    response = call(http, server, "POST", "/api/v1/midjourney/generate", json=data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["status", "images", "prompt", "model"]
    assert body["status"] == "success" and body["model"] == "5" and body["prompt"] == data["prompt"]
    assert len(body["images"]) == 2
    for image in body["images"]:
        assert list(image) == ["url", "id", "created_at"]
        assert image["id"].startswith("img_")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", image["created_at"])
        fetch_png(http, image["url"], server, 1024, 768)


def test_pomelo_documented_flux(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    server = servers["pomelo"]
    data = {
        "prompt": "A futuristic cityscape with flying cars and holographic billboards",
        "negative_prompt": "blurry, low quality, distorted",
        "style": "digital-art",
        "steps": 40,
        "aspect_ratio": "16:9",
    }
    response = call(http, server, "POST", "/api/v1/flux.1", json=data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["id", "created", "images", "prompt", "model", "seed", "status"]
    assert body["id"].startswith("gen_") and body["model"] == "flux.1" and body["status"] == "complete"
    assert isinstance(body["seed"], int) and isinstance(body["created"], int)
    [image] = body["images"]
    assert list(image) == ["url", "width", "height"] and (image["width"], image["height"]) == (1024, 576)
    fetch_png(http, image["url"], server, 1024, 576)


def test_pomelo_flux_echoes_seed_and_bounds(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    server = servers["pomelo"]
    response = call(http, server, "POST", "/api/v1/flux.1", json={"prompt": "x", "seed": 42105})
    assert response.json()["seed"] == 42105
    assert response.json()["images"][0]["width"] == 1024
    response = call(http, server, "POST", "/api/v1/flux.1", json={"prompt": "x", "steps": 51})
    assert response.status_code == 400 and error_code("pomelo", response.json()) == "invalid_request"
    response = call(http, server, "POST", "/api/v1/flux.1", json={"prompt": "x", "aspect_ratio": "banana"})
    assert response.status_code == 400 and error_code("pomelo", response.json()) == "invalid_size"
    response = call(http, server, "POST", "/api/v1/midjourney/generate", json={"prompt": "x", "num_outputs": 5})
    assert response.status_code == 400 and error_code("pomelo", response.json()) == "invalid_request"


# --------------------------------------------------------------------------- NebulaBlock


def nebulablock_generation_shape(body: dict[str, Any]) -> None:
    assert list(body) == ["model", "object", "data", "message", "status"]
    assert (
        body["object"] == "list" and body["message"] == "Image generated successfully" and body["status"] == "success"
    )
    [item] = body["data"]
    assert list(item) == ["timings", "index", "b64_json"] and list(item["timings"]) == ["inference"]
    assert isinstance(item["timings"]["inference"], float) and item["index"] == 0


def test_nebulablock_documented_text_to_image_with_get(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    payload = {
        "model": "stabilityai/stable-diffusion-xl-base-1.0",
        "prompt": "insert your prompt here",
        "num_steps": 25,
        "guidance_scale": 9,
        "width": 1024,
        "height": 1024,
        "negative_prompt": None,
    }
    server = servers["nebulablock"]
    response = call(http, server, "GET", "/api/v1/images/generation", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    nebulablock_generation_shape(body)
    assert body["model"] == payload["model"]
    b64_png(body["data"][0]["b64_json"], 1024, 1024)
    response = call(http, server, "POST", "/api/v1/images/generation", json={**payload, "width": 512})
    assert response.status_code == 200
    b64_png(response.json()["data"][0]["b64_json"], 512, 1024)


def test_nebulablock_documented_image_to_image(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    image = base64.b64encode(jpeg_header(1024, 1024)).decode()
    mask = base64.b64encode(solid_png(1024, 1024, (255, 255, 255))).decode()
    payload = {
        "model": "black-forest-labs/FLUX.1-Fill-dev",
        "prompt": "a red baseball cap",
        "num_steps": 40,
        "guidance_scale": 4.5,
        "width": 1024,
        "height": 1024,
        "image": image,
        "mask": mask,
    }
    server = servers["nebulablock"]
    response = call(http, server, "POST", "/api/v1/images/generation", json=payload)
    assert response.status_code == 200, response.text
    nebulablock_generation_shape(response.json())
    [recorded] = server.emulator.calls
    assert recorded.body["mask"]["length"] == len(mask)  # long strings are summarised in the log
    bad = call(
        http,
        server,
        "POST",
        "/api/v1/images/generation",
        json={**payload, "image": base64.b64encode(b"hello").decode()},
    )
    assert bad.status_code == 400 and error_code("nebulablock", bad.json()) == "invalid_request"
    bad = call(http, server, "POST", "/api/v1/images/generation", json={**payload, "mask": "%%%not base64"})
    assert bad.status_code == 400 and error_code("nebulablock", bad.json()) == "invalid_request"


def test_nebulablock_documented_generate(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    server = servers["nebulablock"]
    payload = {
        "model": "dall-e-3",
        "prompt": "A serene mountain lake at sunset",
        "n": 1,
        "size": "1024x1024",
        "quality": "hd",
        "style": "natural",
    }
    response = call(http, server, "POST", "/v1/images/generate", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["status", "data"] and body["status"] == "success"
    assert list(body["data"]) == ["images", "usage"]
    assert list(body["data"]["usage"]) == ["images_generated", "resolution"]
    assert body["data"]["usage"] == {"images_generated": 1, "resolution": "1024x1024"}
    [image] = body["data"]["images"]
    assert list(image) == ["url", "b64_json"] and image["b64_json"] is None
    fetch_png(http, image["url"], server, 1024, 1024)


def test_nebulablock_generate_b64(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    payload = {"model": "sdxl", "prompt": "x", "n": 3, "size": "512x256", "response_format": "b64_json"}
    response = call(http, servers["nebulablock"], "POST", "/v1/images/generate", json=payload)
    assert response.status_code == 200, response.text
    images = response.json()["data"]["images"]
    assert len(images) == 3 and images[0]["url"] is None
    b64_png(images[2]["b64_json"], 512, 256)


@pytest.mark.parametrize(
    ("path", "payload", "status", "canonical"),
    [
        ("/v1/images/generate", {"model": "sdxl", "prompt": "x", "size": "huge"}, 400, "invalid_size"),
        ("/v1/images/generate", {"model": "sdxl", "prompt": "x", "n": 11}, 400, "invalid_request"),
        ("/v1/images/generate", {"model": "sdxl", "prompt": "x", "style": "ugly"}, 400, "invalid_request"),
        ("/v1/images/generate", {"model": "midjourney", "prompt": "x"}, 404, "model_not_found"),
        ("/v1/images/generate", {"prompt": "x"}, 400, "invalid_request"),
        ("/v1/images/generate", {"model": "sdxl", "prompt": ""}, 400, "invalid_prompt"),
        ("/v1/images/generate", {"model": "sdxl", "prompt": "forbidden fruit"}, 400, "content_policy"),
        ("/api/v1/images/generation", {"model": "sdxl", "prompt": "x", "width": 4096}, 400, "invalid_size"),
    ],
)
def test_nebulablock_validation(
    http: httpx.Client,
    servers: dict[str, EmulatorServer],
    path: str,
    payload: dict[str, Any],
    status: int,
    canonical: str,
) -> None:
    response = call(http, servers["nebulablock"], "POST", path, json=payload)
    assert response.status_code == status, response.text
    assert error_code("nebulablock", response.json()) == CODES["nebulablock"][canonical]


# --------------------------------------------------------------------------- common behaviour


@pytest.mark.parametrize("kind", KINDS)
def test_basic_request_succeeds(http: httpx.Client, servers: dict[str, EmulatorServer], kind: str) -> None:
    assert basic(http, servers, kind).status_code == 200


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}])
def test_missing_or_wrong_auth_is_401(
    http: httpx.Client, servers: dict[str, EmulatorServer], kind: str, headers: dict[str, str]
) -> None:
    response = basic(http, servers, kind, headers=headers)
    assert response.status_code == 401
    assert error_code(kind, response.json()) == CODES[kind]["unauthorized"]
    if kind == "nebul":
        assert response.json()["error"]["type"] == "authentication_error"


BAD_SIZE: dict[str, dict[str, Any]] = {
    "melious": {"prompt": "x", "size": "256x256"},
    "nebul": {"prompt": "x", "size": "4096x4096"},
    "pomelo": {"prompt": "x", "width": 10},
    "nebulablock": {"model": "sdxl", "prompt": "x", "size": "1024"},
}


@pytest.mark.parametrize("kind", KINDS)
def test_bad_size_code(http: httpx.Client, servers: dict[str, EmulatorServer], kind: str) -> None:
    response = basic(http, servers, kind, json=BAD_SIZE[kind])
    assert response.status_code == 400
    assert error_code(kind, response.json()) == CODES[kind]["invalid_size"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("prompt", "canonical"),
    [("", "invalid_prompt"), (None, "invalid_prompt"), ("This is FORBIDDEN.", "content_policy")],
)
def test_prompt_codes(
    http: httpx.Client, servers: dict[str, EmulatorServer], kind: str, prompt: str | None, canonical: str
) -> None:
    payload = {**BASIC[kind][2]}
    if prompt is None:
        del payload["prompt"]
    else:
        payload["prompt"] = prompt
    response = basic(http, servers, kind, json=payload)
    assert response.status_code == 400
    assert error_code(kind, response.json()) == CODES[kind][canonical]


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_json_request(http: httpx.Client, servers: dict[str, EmulatorServer], kind: str) -> None:
    response = basic(
        http, servers, kind, json=None, content=b"{nope", headers={**AUTH, "content-type": "application/json"}
    )
    assert response.status_code == 400
    assert error_code(kind, response.json()) == CODES[kind]["invalid_request"]


@pytest.mark.parametrize("kind", KINDS)
def test_http_fault_503_once_then_normal(http: httpx.Client, servers: dict[str, EmulatorServer], kind: str) -> None:
    server = servers[kind]
    queued = http.post(server.url("/_emulator/faults"), json={"status": 503, "retry_after": "2", "times": 1})
    assert queued.status_code == 200
    first = basic(http, servers, kind)
    assert first.status_code == 503
    assert first.headers["retry-after"] == "2"
    assert error_code(kind, first.json()) == CODES[kind]["overloaded"]
    if kind == "nebul":
        assert first.json()["error"]["type"] == "server_error"
    assert basic(http, servers, kind).status_code == 200
    calls = http.get(server.url("/_emulator/calls")).json()
    assert [(c["status"], c["fault"]) for c in calls] == [(503, True), (200, False)]


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_body_fault(http: httpx.Client, servers: dict[str, EmulatorServer], kind: str) -> None:
    servers[kind].emulator.add_fault(Fault(body='{"data": [', times=1))
    response = basic(http, servers, kind)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == b'{"data": ['
    assert basic(http, servers, kind).status_code == 200


def test_fault_code_override_times_and_clear(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    server = servers["melious"]
    server.emulator.add_fault(Fault(status=402, code="BILLING_INSUFFICIENT_ENERGY", times=2))
    for _ in range(2):
        response = basic(http, servers, "melious")
        assert response.status_code == 402 and response.json()["error"]["code"] == "BILLING_INSUFFICIENT_ENERGY"
    assert basic(http, servers, "melious").status_code == 200

    http.post(server.url("/_emulator/faults"), json={"status": 429, "times": None, "body": None, "content_type": None})
    for _ in range(3):
        assert basic(http, servers, "melious").status_code == 429
    assert http.delete(server.url("/_emulator/faults")).status_code == 200
    assert basic(http, servers, "melious").status_code == 200


def test_fault_code_sets_nebul_type(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    servers["nebul"].emulator.add_fault(Fault(status=429, code="rate_limit_exceeded", retry_after=1))
    response = basic(http, servers, "nebul")
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_delay_fault_then_normal_answer(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    servers["pomelo"].emulator.add_fault(Fault(delay=0.3))
    started = time.monotonic()
    response = basic(http, servers, "pomelo")
    assert response.status_code == 200 and time.monotonic() - started >= 0.3


def test_bad_fault_is_refused(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    server = servers["nebulablock"]
    assert http.post(server.url("/_emulator/faults"), json={"status": 503, "bogus": 1}).status_code == 400
    assert http.post(server.url("/_emulator/faults"), json={"times": 0}).status_code == 400
    assert http.get(server.url("/_emulator/faults")).json() == []


def test_calls_are_recorded_without_the_key(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    server = servers["nebulablock"]
    basic(http, servers, "nebulablock")
    basic(http, servers, "nebulablock", headers={})
    calls = http.get(server.url("/_emulator/calls")).json()
    assert [c["authorized"] for c in calls] == [True, False]
    first = calls[0]
    assert (first["method"], first["path"], first["status"]) == ("POST", "/v1/images/generate", 200)
    assert first["body"] == BASIC["nebulablock"][2]
    assert first["headers"]["authorization"] == "<redacted>"
    assert API_KEY not in str(calls)
    assert len(server.emulator.calls) == 2
    assert http.post(server.url("/_emulator/reset")).status_code == 200
    assert http.get(server.url("/_emulator/calls")).json() == []


def test_unknown_route_and_method(http: httpx.Client, servers: dict[str, EmulatorServer]) -> None:
    server = servers["melious"]
    assert call(http, server, "POST", "/v1/images/edits", json={}).status_code == 404
    response = call(http, server, "GET", "/v1/images/generations")
    assert response.status_code == 405 and "POST" in response.headers["allow"]
    assert http.get(server.url("/files/nope.png")).status_code == 404
    assert server.emulator.calls == []


# --------------------------------------------------------------------------- clients and CLI


def test_openai_sdk_against_melious_and_nebul(servers: dict[str, EmulatorServer]) -> None:
    melious = openai.OpenAI(api_key=API_KEY, base_url=servers["melious"].url("/v1"), max_retries=0)
    result = melious.images.generate(model="flux-schnell", prompt="A serene lake", size="1024x1024", n=1)
    assert result.data is not None and result.data[0].url is not None
    assert result.data[0].url.startswith(servers["melious"].base_url)

    nebul = openai.OpenAI(api_key=API_KEY, base_url=servers["nebul"].url("/v1"), max_retries=0)
    images = [("a.png", solid_png(256, 256), "image/png"), ("b.png", solid_png(256, 256), "image/png")]
    edited = nebul.images.edit(model="black-forest-labs/FLUX.1-Kontext-dev", image=images, prompt="combine")
    assert edited.data is not None and edited.data[0].b64_json is not None
    b64_png(edited.data[0].b64_json, 256, 256)
    recorded = servers["nebul"].emulator.calls[-1]
    assert len(recorded.body["image[]"]) == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_runs_an_emulator_process(http: httpx.Client) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "tests.emulators", "pomelo", "--port", str(port), "--api-key", "k2"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        _drive_cli_process(http, process, port)


def _drive_cli_process(http: httpx.Client, process: subprocess.Popen[str], port: int) -> None:
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line, line
        base = f"http://127.0.0.1:{port}"
        http.post(f"{base}/_emulator/faults", json={"status": 502})
        headers = {"Authorization": "Bearer k2"}
        response = http.post(f"{base}/api/v1/flux.1", json={"prompt": "x"}, headers=headers)
        assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_error"
        response = http.post(f"{base}/api/v1/flux.1", json={"prompt": "x"}, headers=headers)
        assert response.status_code == 200
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_code_table_matches_docs_errors_md() -> None:
    """The emulators' table is docs/errors.md's, row for row."""
    rows = [line for line in (ROOT / "docs" / "errors.md").read_text().splitlines() if line.startswith("| `")]
    documented = {}
    for line in rows:
        cells = [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        canonical, status, _, melious, nebul, block = cells
        nebul_type, nebul_code = (part.strip().strip("`") for part in nebul.split("/"))
        documented[canonical] = (int(status), melious, nebul_type, nebul_code, block)
    ours = {r.canonical: (r.status, r.melious, openai_type(r.status), r.openai_code, r.block) for r in TABLE}
    assert ours == documented
