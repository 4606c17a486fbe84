"""Limits on what can grow: input images, concurrent upstream calls, and a provider's own quota."""

from __future__ import annotations

import base64
import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.emulators import EmulatorServer, Fault, solid_png
from tests.integration.conftest import PROVIDERS, start_gateway

NEBUL_MODEL = PROVIDERS["nebul"][2]
PNG = solid_png(64, 64, (1, 2, 3))


def test_input_images_count_and_size(emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Path) -> None:
    server = start_gateway(
        emulators,
        [{"name": "m", "targets": [{"provider": "nebul", "model": NEBUL_MODEL}]}],
        tmp_path,
        server={"max_input_images": 2, "max_input_image_bytes": 4096},
    )
    try:
        url = server.url + "/nebul/v1/images/edits"
        fields = {"model": "m", "prompt": "hat"}
        three = [("image", (f"{i}.png", PNG, "image/png")) for i in range(3)]
        response = http.post(url, data=fields, files=three)
        assert response.status_code == 400 and response.json()["error"]["param"] == "image"
        big = PNG + b"\x00" * 5000
        response = http.post(url, data=fields, files={"image": ("big.png", big, "image/png")})
        assert response.status_code == 413, response.text
        mask = http.post(url, data=fields, files=[three[0], ("mask", ("m.png", big, "image/png"))])
        assert mask.status_code == 413 and mask.json()["error"]["param"] == "mask"
        b64 = base64.b64encode(big).decode()
        serverless = http.post(
            server.url + "/nebulablock/api/v1/images/generation",
            json={"model": "m", "prompt": "p", "image": b64, "width": 64, "height": 64},
        )
        assert serverless.status_code == 413, serverless.text
        assert http.post(url, data=fields, files=three[:2]).status_code == 200
        assert len(emulators["nebul"].emulator.calls) == 1
    finally:
        server.stop()


def test_concurrent_upstream_calls_are_capped(
    emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Path
) -> None:
    server = start_gateway(
        emulators,
        [{"name": "m", "targets": [{"provider": "melious", "model": "flux-schnell"}]}],
        tmp_path,
        provider_overrides={"max_concurrency": 1},
    )
    try:
        emulators["melious"].emulator.add_fault(Fault(delay=0.3, times=None))

        def one(_: int) -> int:
            body = {"model": "m", "prompt": "p", "size": "512x512"}
            return http.post(server.url + "/melious/v1/images/generations", json=body).status_code

        with ThreadPoolExecutor(max_workers=3) as pool:
            assert list(pool.map(one, range(3))) == [200, 200, 200]
        arrivals = sorted(call.time for call in emulators["melious"].emulator.calls)
        assert len(arrivals) == 3
        # One call at a time: each arrives only after the previous one's 0.3 s answer.
        assert all(later - earlier >= 0.25 for earlier, later in itertools.pairwise(arrivals))
    finally:
        server.stop()


def test_provider_quota_falls_back_then_refuses(
    emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Path
) -> None:
    quota = {
        "kind": "melious",
        "base_url": emulators["melious"].base_url,
        "api_key": "test-key",
        "limits": {"requests": 1, "period_s": 3600},
    }
    models = [
        {"name": "solo", "targets": [{"provider": "quota", "model": "flux-schnell"}]},
        {
            "name": "pair",
            "targets": [{"provider": "quota", "model": "flux-schnell"}, {"provider": "nebul", "model": NEBUL_MODEL}],
        },
    ]
    server = start_gateway(emulators, models, tmp_path, extra_providers={"quota": quota})
    try:
        url = server.url + "/melious/v1/images/generations"
        body = {"prompt": "p", "size": "512x512"}
        assert http.post(url, json={**body, "model": "solo"}).headers["x-gateway-provider"] == "quota"
        fallback = http.post(url, json={**body, "model": "pair"})
        assert fallback.status_code == 200 and fallback.headers["x-gateway-provider"] == "nebul"
        refused = http.post(url, json={**body, "model": "solo"})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        assert int(refused.headers["retry-after"]) > 0
        assert len(emulators["melious"].emulator.calls) == 1
    finally:
        server.stop()


def test_image_urls_are_fetched_only_from_the_providers_hosts_and_up_to_the_cap(
    emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Pomelo answers URLs; a base64 client makes the gateway fetch them, within bounds."""
    pomelo = emulators["pomelo"]
    entry = {"kind": "pomelo", "api_key": "test-key"}
    providers = {
        # The emulator's URLs name 127.0.0.1: reached as "localhost", that host is not the provider's.
        "elsewhere": {**entry, "base_url": pomelo.base_url.replace("127.0.0.1", "localhost")},
        "allowed": {
            **entry,
            "base_url": pomelo.base_url.replace("127.0.0.1", "localhost"),
            "image_hosts": [pomelo.base_url.removeprefix("http://")],
        },
        "capped": {**entry, "base_url": pomelo.base_url, "max_image_bytes": 100},
    }
    models = [{"name": name, "targets": [{"provider": name, "model": "5"}]} for name in providers]
    server = start_gateway(
        emulators, models, tmp_path, extra_providers=providers, provider_overrides={"retry": {"attempts": 1}}
    )
    try:

        def fetch(model: str) -> httpx.Response:
            body = {"model": model, "prompt": "p", "size": "512x512", "response_format": "b64_json"}
            return http.post(server.url + "/melious/v1/images/generations", json=body)

        def logged_detail(response: httpx.Response) -> str:
            """Why the call failed, as the log tells it (the client is told the gateway's own sentence)."""
            request_id = response.headers["x-request-id"]
            lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
            (attempt,) = [x for x in lines if x["event"] == "upstream_attempt" and x["request_id"] == request_id]
            return str(attempt["detail"])

        capfd.readouterr()
        refused = fetch("elsewhere")
        assert refused.status_code == 502 and "not allowed" in logged_detail(refused)
        allowed = fetch("allowed")
        assert allowed.status_code == 200, allowed.text
        assert base64.b64decode(allowed.json()["data"][0]["b64_json"]).startswith(b"\x89PNG")
        capped = fetch("capped")
        assert capped.status_code == 502 and "larger than 100 bytes" in logged_detail(capped)
    finally:
        server.stop()


def test_an_image_url_with_a_non_ascii_path_is_fetched_and_a_broken_one_is_an_upstream_error(
    emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Path
) -> None:
    """The URL is the upstream's word: percent-encoded on the way out, and never a 500 when it is unusable."""
    pomelo = emulators["pomelo"]
    pomelo.emulator.files.put(solid_png(8, 8), "café ü")
    models = [{"name": "m", "targets": [{"provider": "pomelo-midjourney", "model": "5"}]}]
    server = start_gateway(emulators, models, tmp_path, provider_overrides={"retry": {"attempts": 1}})

    def answer_with(url: str) -> Fault:
        images = [{"url": url, "id": "img_1", "created_at": "2026-01-01T00:00:00Z"}]
        return Fault(body=json.dumps({"status": "success", "images": images, "prompt": "p", "model": "5"}))

    try:
        for url, status in [
            (pomelo.base_url + "/files/café ü.png", 200),
            (pomelo.base_url + "/files/gone é.png", 502),
            ("http://[127.0.0.1/x.png", 502),
            (pomelo.base_url.replace("http://", "http://user@") + ":99999/x.png", 502),
        ]:
            pomelo.emulator.add_fault(answer_with(url))
            body = {"model": "m", "prompt": "p", "size": "512x512", "response_format": "b64_json"}
            response = http.post(server.url + "/melious/v1/images/generations", json=body)
            assert response.status_code == status, (url, response.text)
            if status == 200:
                assert base64.b64decode(response.json()["data"][0]["b64_json"]).startswith(b"\x89PNG")
    finally:
        server.stop()
