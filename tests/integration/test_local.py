"""Every dialect, through a real gateway over real HTTP, to real diffusers pipelines (the tiny models) on the CPU.

Also: same seed same bytes, concurrent requests drawn as one batch, a full queue answered
``overloaded`` at once, a missing model and a bad size each with their clear error in the
client's envelope, and the same through a remote worker, where a request the gateway gives
up on is dropped from the worker's queue.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.local import LocalAdapter
from local_backend.server import create_worker_app
from schemas import worker as protocol
from schemas.dialect import image_dimensions
from tests.fixtures import engine_of
from tests.integration.gateway_server import GatewayServer, gateway_config
from tests.local_backend.engines import held_device, local_settings
from tests.local_backend.worker_server import WorkerServer
from tests.servers import ThreadedServer

pytestmark = pytest.mark.usefixtures("started_adapters")  # tests/fixtures.py: engines read
PROMPT = "a lighthouse at dusk"
MISSING_DIR = "/nonexistent/models/sd-turbo"


def local_provider(**options: Any) -> dict[str, Any]:
    models = {
        "tiny": {"path": "builtin:tiny-sd", "max_pixels": 512 * 512},
        "tiny-flux": {"path": "builtin:tiny-flux"},
        "gone": {"path": MISSING_DIR},
    }
    return {"kind": "local", "device": "cpu", "models": models, **options}


def served_models(provider: str) -> list[dict[str, Any]]:
    """Names clients use → the local provider's models (``flux.1`` is what Pomelo's Flux endpoint asks for)."""
    return [
        {"name": "tiny", "targets": [{"provider": provider, "model": "tiny"}]},
        {"name": "flux.1", "targets": [{"provider": provider, "model": "tiny-flux"}]},
        {"name": "gone", "targets": [{"provider": provider, "model": "gone"}]},
    ]


def start(providers: dict[str, Any], models: list[dict[str, Any]], store: Path) -> GatewayServer:
    """A gateway for these providers and models; ``with`` starts it and stops it."""
    return GatewayServer(gateway_config(providers, models, store))


@pytest.fixture(scope="module")
def gateway(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """A gateway whose only provider is the local backend, in-process."""
    with start(
        {"gpu": local_provider(batch_window_ms=50)}, served_models("gpu"), tmp_path_factory.mktemp("store")
    ) as server:
        yield server


def png_from(http: httpx.Client, pointer: str, form: str) -> bytes:
    if form == "b64":
        return base64.b64decode(pointer)
    fetched = http.get(pointer)
    assert fetched.status_code == 200, fetched.text
    return fetched.content


def input_png(http: httpx.Client, gateway: GatewayServer, size: int = 64) -> bytes:
    answer = http.post(
        gateway.url + "/nebul/v1/images/generations",
        json={"model": "tiny", "prompt": "base", "size": f"{size}x{size}"},
    )
    assert answer.status_code == 200, answer.text
    return base64.b64decode(answer.json()["data"][0]["b64_json"])


# dialect → (path, body, "b64" or "url", pointers to each image, expected size)
GENERATIONS: dict[str, tuple[str, dict[str, Any], str, Any, tuple[int, int]]] = {
    "melious": (
        "/melious/v1/images/generations",
        {"model": "tiny", "prompt": PROMPT, "size": "512x512", "n": 2},
        "url",
        lambda body: [item["url"] for item in body["data"]],
        (512, 512),
    ),
    "nebul": (
        "/nebul/v1/images/generations",
        {"model": "tiny", "prompt": PROMPT, "size": "64x128"},
        "b64",
        lambda body: [item["b64_json"] for item in body["data"]],
        (64, 128),
    ),
    "pomelo-midjourney": (
        "/pomelo/api/v1/midjourney/generate",
        {"model": "tiny", "prompt": PROMPT, "width": 96, "height": 64, "num_outputs": 2},
        "url",
        lambda body: [item["url"] for item in body["images"]],
        (96, 64),
    ),
    "pomelo-flux": (
        "/pomelo/api/v1/flux.1",
        {"prompt": PROMPT, "aspect_ratio": "4:1", "steps": 2},
        "url",
        lambda body: [item["url"] for item in body["images"]],
        (1024, 256),
    ),
    "nebulablock-serverless": (
        "/nebulablock/api/v1/images/generation",
        {"model": "tiny", "prompt": PROMPT, "num_steps": 3, "guidance_scale": 4, "width": 64, "height": 64},
        "b64",
        lambda body: [item["b64_json"] for item in body["data"]],
        (64, 64),
    ),
    "nebulablock-v1": (
        "/nebulablock/v1/images/generate",
        {"model": "tiny", "prompt": PROMPT, "n": 2, "size": "128x64", "response_format": "b64_json"},
        "b64",
        lambda body: [item["b64_json"] for item in body["data"]["images"]],
        (128, 64),
    ),
    "openai-root": (
        "/v1/images/generations",
        {"model": "tiny", "prompt": PROMPT, "size": "64x64"},
        "url",
        lambda body: [item["url"] for item in body["data"]],
        (64, 64),
    ),
}


@pytest.mark.parametrize("dialect", list(GENERATIONS))
def test_every_dialect_generates_with_a_real_pipeline(dialect: str, gateway: GatewayServer, http: httpx.Client) -> None:
    path, body, form, pointers, size = GENERATIONS[dialect]
    response = http.post(gateway.url + path, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-provider"] == "gpu"
    found = pointers(response.json())
    assert len(found) == body.get("n", body.get("num_outputs", 1))
    for pointer in found:
        image = png_from(http, pointer, form)
        assert image.startswith(b"\x89PNG") and image_dimensions(image) == size


def test_same_seed_same_bytes_through_the_gateway(gateway: GatewayServer, http: httpx.Client) -> None:
    """Pomelo's Flux.1 carries a seed: the same seed draws the same PNG, and the answer says which seed it was."""
    body = {"prompt": PROMPT, "aspect_ratio": "16:1", "steps": 2, "seed": 1234}  # 1024x64: quick on a CPU
    images, seeds = [], []
    for seed in (1234, 1234, 99):
        answer = http.post(gateway.url + "/pomelo/api/v1/flux.1", json={**body, "seed": seed})
        assert answer.status_code == 200, answer.text
        seeds.append(answer.json()["seed"])
        images.append(png_from(http, answer.json()["images"][0]["url"], "url"))
    assert seeds == [1234, 1234, 99]
    assert images[0] == images[1] != images[2]


def test_the_root_v1_carries_seed_steps_and_negative_prompt(gateway: GatewayServer, http: httpx.Client) -> None:
    """OpenAI's routes take the extensions too (as vLLM-Omni and SGLang do): the same seed, the same bytes,
    on a JSON generation and on a multipart edit."""
    body = {"model": "tiny", "prompt": PROMPT, "size": "64x64", "steps": 2, "negative_prompt": "fog"}

    def generated(seed: int) -> bytes:
        answer = http.post(gateway.url + "/v1/images/generations", json={**body, "seed": seed})
        assert answer.status_code == 200, answer.text
        return png_from(http, answer.json()["data"][0]["url"], "url")

    assert generated(1234) == generated(1234) != generated(99)
    png = input_png(http, gateway)

    def edited(seed: int) -> bytes:
        fields = {"model": "tiny", "prompt": "snow", "seed": str(seed), "steps": "2", "response_format": "b64_json"}
        answer = http.post(gateway.url + "/v1/images/edits", files={"image": ("a.png", png, "image/png")}, data=fields)
        assert answer.status_code == 200, answer.text
        return base64.b64decode(answer.json()["data"][0]["b64_json"])

    assert edited(7) == edited(7) != edited(8)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/images/generations", {"model": "tiny", "prompt": PROMPT, "size": "64x64", "steps": 99}, "steps"),
        ("/nebulablock/api/v1/images/generation", {"model": "tiny", "prompt": PROMPT, "num_steps": 99}, "num_steps"),
        ("/pomelo/api/v1/flux.1", {"prompt": PROMPT, "steps": 51}, "steps"),
    ],
)
def test_steps_beyond_the_models_range_are_refused_naming_the_field_and_range(
    path: str, body: dict[str, Any], field: str, gateway: GatewayServer, http: httpx.Client
) -> None:
    """Never clamped or dropped: a 400 in the client's envelope, its own field and the range it may hold."""
    response = http.post(gateway.url + path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert re.search(rf"\b{field}\b", error["message"]) and "1 to 50" in error["message"], error
    assert error.get("param", field) == field  # OpenAI's envelope names it in `param` too


def test_nebul_edit_with_mask_and_variation(gateway: GatewayServer, http: httpx.Client) -> None:
    png = input_png(http, gateway, 96)
    edit = http.post(
        gateway.url + "/nebul/v1/images/edits",
        files=[("image", ("a.png", png, "image/png")), ("mask", ("m.png", png, "image/png"))],
        data={"model": "tiny", "prompt": "add a red hat", "n": "2", "response_format": "b64_json"},
    )
    assert edit.status_code == 200, edit.text
    edited = [base64.b64decode(item["b64_json"]) for item in edit.json()["data"]]
    assert len(edited) == 2 and all(image_dimensions(image) == (96, 96) for image in edited)  # the input's size

    variation = http.post(
        gateway.url + "/nebul/v1/images/variations",
        files={"image": ("a.png", png, "image/png")},
        data={"model": "tiny", "size": "64x64"},
    )
    assert variation.status_code == 200, variation.text
    assert image_dimensions(base64.b64decode(variation.json()["data"][0]["b64_json"])) == (64, 64)


def test_openai_root_edit_and_variation(gateway: GatewayServer, http: httpx.Client) -> None:
    png = input_png(http, gateway)
    edit = http.post(
        gateway.url + "/v1/images/edits",
        files={"image": ("a.png", png, "image/png")},
        data={"model": "tiny", "prompt": "snow", "response_format": "b64_json"},
    )
    assert edit.status_code == 200, edit.text
    variation = http.post(
        gateway.url + "/v1/images/variations", files={"image": ("a.png", png, "image/png")}, data={"model": "tiny"}
    )
    assert variation.status_code == 200, variation.text
    assert image_dimensions(png_from(http, variation.json()["data"][0]["url"], "url")) == (64, 64)


def test_nebulablock_image_to_image_and_inpainting(gateway: GatewayServer, http: httpx.Client) -> None:
    b64 = base64.b64encode(input_png(http, gateway)).decode()
    base = {"model": "tiny", "prompt": "a red cap", "num_steps": 4, "width": 64, "height": 64, "image": b64}
    for body in (base, {**base, "mask": b64}):
        response = http.post(gateway.url + "/nebulablock/api/v1/images/generation", json=body)
        assert response.status_code == 200, response.text
        assert image_dimensions(base64.b64decode(response.json()["data"][0]["b64_json"])) == (64, 64)


def test_concurrent_compatible_requests_are_drawn_as_one_batch(
    gateway: GatewayServer, started_adapters: list[LocalAdapter], http: httpx.Client
) -> None:
    engine = next(adapter.engine for adapter in started_adapters if adapter.name == "gpu")
    before = engine.stats().batch_sizes
    body = {"model": "tiny", "prompt": PROMPT, "size": "64x64", "response_format": "b64_json"}
    with held_device(engine) as hold, ThreadPoolExecutor(max_workers=6) as pool:
        # The first request holds the device; the five sent meanwhile wait together for the next batch.
        first = pool.submit(http.post, gateway.url + "/nebulablock/v1/images/generate", json=body)
        assert hold.started.wait(10)
        rest = [pool.submit(http.post, gateway.url + "/nebulablock/v1/images/generate", json=body) for _ in range(5)]
        deadline = time.monotonic() + 10
        while engine.stats().queue_depth < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        hold.release()
        answers = [future.result() for future in [first, *rest]]
    assert all(answer.status_code == 200 for answer in answers), [answer.text for answer in answers]
    seen = engine.stats().batch_sizes
    grown = {size: count - before.get(size, 0) for size, count in seen.items() if count > before.get(size, 0)}
    assert max(grown) > 1, f"no batch of more than one image among {grown}"


def test_a_model_with_missing_weights_is_unavailable_naming_no_server_path(
    gateway: GatewayServer, http: httpx.Client
) -> None:
    """An operator's error, not the client's: 503 (a fallback target would have served), no path on this server."""
    nebul = http.post(gateway.url + "/nebul/v1/images/generations", json={"model": "gone", "prompt": PROMPT})
    assert nebul.status_code == 503, nebul.text
    assert nebul.json()["error"]["code"] == "overloaded"
    assert "'gone' is not available here" in nebul.json()["error"]["message"]
    assert "/nonexistent" not in nebul.text and "save_pretrained" not in nebul.text
    melious = http.post(gateway.url + "/melious/v1/images/generations", json={"model": "gone", "prompt": PROMPT})
    assert melious.status_code == 503 and melious.json()["error"]["code"] == "INFERENCE_OVERLOADED"
    assert "/nonexistent" not in melious.text


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/nebul/v1/images/generations", {"model": "tiny", "prompt": PROMPT, "size": "100x100"}, "invalid_size"),
        ("/melious/v1/images/generations", {"model": "tiny", "prompt": PROMPT, "size": "768x768"},
         "VALIDATION_INVALID_VALUE"),  # over the model's max_pixels
        ("/pomelo/api/v1/midjourney/generate", {"model": "tiny", "prompt": PROMPT, "width": 100, "height": 64},
         "invalid_size"),
        ("/nebulablock/api/v1/images/generation", {"model": "flux.1", "prompt": PROMPT, "width": 72, "height": 64},
         "invalid_size"),  # Flux wants multiples of 16
    ],
)  # fmt: skip
def test_a_bad_size_is_invalid_size_in_the_dialect(
    path: str, body: dict[str, Any], code: str, gateway: GatewayServer, http: httpx.Client
) -> None:
    response = http.post(gateway.url + path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert "multiples of" in error["message"] or "at most" in error["message"]


def test_a_full_queue_is_answered_overloaded_quickly(
    started_adapters: list[LocalAdapter], tmp_path_factory: pytest.TempPathFactory, http: httpx.Client
) -> None:
    provider = local_provider(queue_size=1, batch_window_ms=0, max_batch_size=1)
    with start({"busy": provider}, served_models("busy"), tmp_path_factory.mktemp("store")) as server:
        engine = engine_of(started_adapters)
        body = {"model": "tiny", "prompt": PROMPT, "size": "64x64"}
        url = server.url + "/nebul/v1/images/generations"
        with held_device(engine) as hold, ThreadPoolExecutor(max_workers=6) as pool:
            running = pool.submit(http.post, url, json=body)
            assert hold.started.wait(10)
            queued = pool.submit(http.post, url, json=body)
            while engine.stats().queue_depth < 1:
                time.sleep(0.01)
            started = time.perf_counter()
            refused = [future.result() for future in [pool.submit(http.post, url, json=body) for _ in range(4)]]
            elapsed = time.perf_counter() - started
            # Answered while the device is still held: nobody waited for it (the router's own retries aside).
            assert not hold.released.is_set()
            hold.release()
            assert running.result().status_code == 200 and queued.result().status_code == 200
    assert [answer.status_code for answer in refused] == [503] * 4
    assert refused[0].json()["error"]["code"] == "overloaded"
    assert engine.stats().requests_refused >= 4
    assert elapsed < 5.0, f"four refusals took {elapsed:.2f} s"


def test_the_remote_worker_path_over_real_http(tmp_path_factory: pytest.TempPathFactory, http: httpx.Client) -> None:
    """Gateway → worker over HTTP; a request the gateway gives up on (target timeout) never runs on the worker."""
    worker = WorkerServer(local_settings({"tiny": "builtin:tiny-sd"}, batch_window_ms=0)).start()
    try:
        providers = {"remote": {"kind": "local", "workers": [worker.url]}}
        models = [
            {"name": "tiny", "targets": [{"provider": "remote", "model": "tiny"}]},
            {"name": "hasty", "targets": [{"provider": "remote", "model": "tiny", "timeout": 0.3}]},
        ]
        with start(providers, models, tmp_path_factory.mktemp("store")) as server:
            body = {"model": "tiny", "prompt": PROMPT, "size": "64x64", "response_format": "b64_json"}
            made = http.post(server.url + "/nebul/v1/images/generations", json=body)
            assert made.status_code == 200, made.text
            assert made.headers["x-gateway-provider"] == "remote"
            assert image_dimensions(base64.b64decode(made.json()["data"][0]["b64_json"])) == (64, 64)

            bad = http.post(server.url + "/nebul/v1/images/generations", json={**body, "size": "100x64"})
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_size"

            before = worker.engine.stats()
            with held_device(worker.engine) as hold, ThreadPoolExecutor(max_workers=2) as pool:
                running = pool.submit(http.post, server.url + "/nebul/v1/images/generations", json=body)
                assert hold.started.wait(10)
                gave_up = http.post(server.url + "/nebul/v1/images/generations", json={**body, "model": "hasty"})
                deadline = time.monotonic() + 5
                while worker.engine.stats().requests_dropped == before.requests_dropped:
                    assert time.monotonic() < deadline, "the worker never dropped the abandoned request"
                    time.sleep(0.01)
                hold.release()
                assert running.result().status_code == 200
            after = worker.engine.stats()
    finally:
        worker.stop()
    assert gave_up.status_code == 504 and gave_up.json()["error"]["code"] == "timeout", gave_up.text
    # The router retries a timeout, so the gateway may have given up more than once: each was dropped.
    assert after.requests_dropped > before.requests_dropped
    assert after.images_generated == before.images_generated + 1  # no abandoned request was drawn


class RequestIdsSeen:
    """The worker app, keeping the ``X-Request-ID`` of each generate call it is sent."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[str | None] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == protocol.GENERATE_PATH:
            self.seen.append(dict(scope["headers"]).get(b"x-request-id", b"").decode() or None)
        await self.app(scope, receive, send)


class SlowStartingServer(ThreadedServer):
    startup_timeout_s = 60.0  # the worker loads its models before it listens


def test_the_request_id_reaches_the_remote_worker(tmp_path_factory: pytest.TempPathFactory, http: httpx.Client) -> None:
    worker_app = RequestIdsSeen(create_worker_app(local_settings({"tiny": "builtin:tiny-sd"}, batch_window_ms=0)))
    with SlowStartingServer(worker_app) as worker:
        providers = {"remote": {"kind": "local", "workers": [worker.url]}}
        models = [{"name": "tiny", "targets": [{"provider": "remote", "model": "tiny"}]}]
        with start(providers, models, tmp_path_factory.mktemp("store")) as server:
            body = {"model": "tiny", "prompt": PROMPT, "size": "64x64", "response_format": "b64_json"}
            headers = {"X-Request-ID": "trace-worker-0001"}
            made = http.post(server.url + "/nebul/v1/images/generations", json=body, headers=headers)
    assert made.status_code == 200, made.text
    assert worker_app.seen == ["trace-worker-0001"]


def test_a_client_that_hangs_up_has_its_queued_request_dropped(
    started_adapters: list[LocalAdapter], tmp_path_factory: pytest.TempPathFactory, http: httpx.Client
) -> None:
    """In process: the gateway notices the disconnect and the queued request is never drawn."""
    provider = local_provider(batch_window_ms=0, max_batch_size=1)
    with start({"hangup": provider}, served_models("hangup"), tmp_path_factory.mktemp("store")) as server:
        engine = engine_of(started_adapters)
        body = {"model": "tiny", "prompt": PROMPT, "size": "64x64"}
        url = server.url + "/nebul/v1/images/generations"
        before = engine.stats()
        with held_device(engine) as hold, ThreadPoolExecutor(max_workers=2) as pool:
            running = pool.submit(http.post, url, json=body)
            assert hold.started.wait(10)
            with pytest.raises(httpx.ReadTimeout):  # gives up while queued, closing its connection
                httpx.post(url, json={**body, "size": "128x128"}, timeout=0.5)
            deadline = time.monotonic() + 5
            while engine.stats().requests_dropped == before.requests_dropped:
                assert time.monotonic() < deadline, "the gateway did not drop the abandoned request"
                time.sleep(0.02)
            hold.release()
            assert running.result().status_code == 200
        after = engine.stats()
    assert after.requests_dropped == before.requests_dropped + 1
    assert after.images_generated == before.images_generated + 1  # only the patient client's image was drawn
