"""A client's fault is never a provider's fault: bad input images, a burst past the local queue, missing weights.

Over real HTTP, to the tiny local model on the CPU, through every dialect that has edits
(Nebul's and the root OpenAI family's multipart edits and variations, NebulaBlock's
base64 image): a 69-byte PNG declaring 50000x50000 pixels, a truncated PNG, a header of
0x0 and a valid 12000x12000 PNG of 140 KB are each a 400 in the client's dialect, and after
dozens of them the local provider is not cooled down (its cooldown set to the strictest).
The gateway that takes them runs in a process of its own, so its peak memory is read from
outside (``VmHWM``): no image over the pixel bound is ever decoded. A burst past a local
queue of one sheds only the excess (``overloaded``, ``Retry-After``), in process and through
a remote worker whose cooldown is shared through Redis, and the next request is served. A
model whose weights are missing is served by its fallback target; alone it is a 503 naming
no path on the server.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.integration.gateway_server import GatewayServer, gateway_config
from tests.integration.test_inbound_bodies import memory_kib
from tests.local_backend.bad_images import bomb_png, huge_valid_png, small_png, truncated_png, webp_bomb, zero_png
from tests.local_backend.engines import held_device, local_settings
from tests.local_backend.worker_server import WorkerServer
from tests.redis_support import require_shared_redis
from tests.servers import GatewayProcess

MiB = 1024 * 1024
MISSING_DIR = "/nonexistent/models/sd-turbo"
# The strictest cooldown: one failure counted against a provider takes it away for a minute.
STRICT_COOLDOWN = {"failures": 1, "seconds": 60}
BAD_IMAGES: dict[str, Callable[[], bytes]] = {
    "bomb": bomb_png,  # 69 bytes declaring 50000x50000
    "webp-bomb": webp_bomb,  # 30 bytes declaring 16384x16384
    "truncated": truncated_png,  # a whole header, half its pixel data
    "0x0": zero_png,  # once a ZeroDivisionError (a 500)
    "12000x12000": huge_valid_png,  # a valid 140 KB PNG over the default 4096x4096 bound
}


# --- the routes that take an input image, each in its client's dialect ---


def multipart(path: str, fields: dict[str, str]) -> Callable[..., httpx.Response]:
    def send(http: httpx.Client, url: str, image: bytes, mask: bytes | None = None) -> httpx.Response:
        files = [("image", ("in.png", image, "image/png"))]
        if mask is not None:
            files.append(("mask", ("mask.png", mask, "image/png")))
        return http.post(url + path, data=fields, files=files)

    return send


def nebulablock(http: httpx.Client, url: str, image: bytes, mask: bytes | None = None) -> httpx.Response:
    body: dict[str, Any] = {"model": "tiny", "prompt": "a red hat", "image": base64.b64encode(image).decode()}
    if mask is not None:
        body["mask"] = base64.b64encode(mask).decode()
    return http.post(url + "/nebulablock/api/v1/images/generation", json=body)


# route → (send, envelope family, whether it takes a mask)
ROUTES: dict[str, tuple[Callable[..., httpx.Response], str, bool]] = {
    "nebul-edits": (multipart("/nebul/v1/images/edits", {"model": "tiny", "prompt": "a red hat"}), "openai", True),
    "nebul-variations": (multipart("/nebul/v1/images/variations", {"model": "tiny"}), "openai", False),
    "openai-edits": (multipart("/v1/images/edits", {"model": "tiny", "prompt": "a red hat"}), "openai", True),
    "openai-variations": (multipart("/v1/images/variations", {"model": "tiny"}), "openai", False),
    "nebulablock-base64": (nebulablock, "nebulablock", True),
}


def assert_client_fault(response: httpx.Response, family: str, field: str) -> None:
    """A 400 ``invalid_request`` in the client's own envelope, naming the field."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    if family == "openai":
        assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_value", field)
    else:
        assert response.json()["status"] == "error" and error["code"] == "invalid_request"
    assert f"`{field}`" in error["message"], error


# --- bad input, to a gateway in its own process ---


@pytest.fixture(scope="module")
def redis_prefix() -> Iterator[str]:
    """A key prefix of this module's own in the shared Redis, emptied afterwards."""
    client = redis.Redis.from_url(require_shared_redis())
    prefix = f"igw-test-{secrets.token_hex(4)}:"
    yield prefix
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()


def cooldown_in_redis(prefix: str, provider: str) -> bytes | None:
    client = redis.Redis.from_url(require_shared_redis())
    try:
        value = client.get(f"{prefix}cooldown:{provider}")
        return value if isinstance(value, bytes) else None
    finally:
        client.close()


@pytest.fixture(scope="module")
def gateway_process(
    tmp_path_factory: pytest.TempPathFactory, redis_prefix: str, model_dir: Path
) -> Iterator[GatewayProcess]:
    """``image-gateway serve`` with the tiny model in process, cooldowns shared through Redis, strictest policy."""
    directory = tmp_path_factory.mktemp("client-faults")
    config = {
        "server": {"log_level": "warning"},
        "image_store": {"path": str(directory / "store")},
        "redis": {"url": require_shared_redis(), "key_prefix": redis_prefix},
        "providers": {
            "gpu": {
                "kind": "local",
                "device": "cpu",
                "models": {"tiny": {"path": "builtin:tiny-sd", "max_pixels": 512 * 512}},
                "cooldown": STRICT_COOLDOWN,
            }
        },
        "models": [{"name": "tiny", "targets": [{"provider": "gpu", "model": "tiny"}]}],
    }
    config_file = directory / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))
    process = GatewayProcess(config_file, env={"IMAGE_GATEWAY_MODEL_DIR": str(model_dir)})
    try:
        yield process.wait_ready(timeout=180)  # torch, the tiny model built and warmed up
    finally:
        process.stop()


def test_bad_input_images_are_the_clients_400_and_never_cool_the_provider_down(
    gateway_process: GatewayProcess, redis_prefix: str, http: httpx.Client
) -> None:
    url, pid = gateway_process.url, gateway_process.process.pid
    good = small_png(64, 64)
    # Every route once with good images, the masks too: what serving needs is loaded before the peak is read.
    for name, (send, _, takes_mask) in ROUTES.items():
        served = send(http, url, good, good if takes_mask else None)
        assert served.status_code == 200, (name, served.text)
    idle_peak = memory_kib(pid, "VmHWM")

    for round_ in range(3):
        for send, family, takes_mask in ROUTES.values():
            for make in BAD_IMAGES.values():
                assert_client_fault(send(http, url, make()), family, "image")
                if takes_mask and round_ == 0:
                    assert_client_fault(send(http, url, good, make()), family, "mask")

    # Not one of these counted against the provider: the strictest cooldown never started, here or in Redis.
    for name, (send, _, _) in ROUTES.items():
        served = send(http, url, good)
        assert served.status_code == 200, (name, served.text)
        assert served.headers["x-gateway-provider"] == "gpu"
    assert cooldown_in_redis(redis_prefix, "gpu") is None
    # A 12000x12000 PNG decodes to 144 MB (432 MB as RGB), a 50000x50000 one to 7.5 GB: none was decoded.
    grown = memory_kib(pid, "VmHWM") - idle_peak
    assert grown < 64 * 1024, f"the gateway's peak memory grew by {grown // 1024} MiB"


# --- a burst past the queue, and missing weights, in process and through a remote worker ---


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerServer]:
    settings = local_settings(
        {"tiny": "builtin:tiny-sd", "gone": MISSING_DIR}, queue_size=1, max_batch_size=1, batch_window_ms=0
    )
    with WorkerServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerServer, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    """Queues of one, in process (``here``) and on the worker (``remote``); the strictest cooldowns, in Redis."""
    here = {
        "kind": "local",
        "device": "cpu",
        "models": {"tiny": {"path": "builtin:tiny-sd"}, "gone": {"path": MISSING_DIR}},
        "queue_size": 1,
        "max_batch_size": 1,
        "batch_window_ms": 0,
        "cooldown": STRICT_COOLDOWN,
    }
    remote = {"kind": "local", "workers": [worker.url], "cooldown": STRICT_COOLDOWN}
    models = [
        {"name": "tiny", "targets": [{"provider": "here", "model": "tiny"}]},
        {"name": "remote-tiny", "targets": [{"provider": "remote", "model": "tiny"}]},
        {"name": "gone", "targets": [{"provider": "here", "model": "gone"}]},
        {"name": "remote-gone", "targets": [{"provider": "remote", "model": "gone"}]},
        {
            "name": "sd-turbo",
            "aliases": ["sd"],
            "targets": [{"provider": "here", "model": "gone"}, {"provider": "here", "model": "tiny"}],
        },
        {
            "name": "remote-sd-turbo",
            "targets": [{"provider": "remote", "model": "gone"}, {"provider": "remote", "model": "tiny"}],
        },
    ]
    config = gateway_config(
        {"here": here, "remote": remote},
        models,
        tmp_path_factory.mktemp("store"),
        redis={"url": require_shared_redis(), "key_prefix": redis_prefix},
    )
    server = GatewayServer(config)
    server.startup_timeout_s = 120.0
    with server:
        yield server


def generation(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": "a lighthouse", "size": "64x64", "response_format": "b64_json"}


def burst(http: httpx.Client, url: str, engine: Any, model: str, excess: int) -> list[httpx.Response]:
    """Hold the device with one request, queue a second (a queue of one), then send ``excess`` more at once."""
    path = url + "/nebul/v1/images/generations"
    with held_device(engine) as hold, ThreadPoolExecutor(max_workers=excess + 2) as pool:
        running = pool.submit(http.post, path, json=generation(model))
        assert hold.started.wait(30)
        queued = pool.submit(http.post, path, json=generation(model))
        deadline = time.monotonic() + 30  # a guard against a hang, not a timing
        while engine.stats().queue_depth < 1:
            assert not queued.done() and time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.01)
        refused = list(pool.map(lambda _: http.post(path, json=generation(model)), range(excess)))
        assert not hold.released.is_set()  # every one answered while the device was still held
        hold.release()
        assert running.result().status_code == 200 and queued.result().status_code == 200
    return refused


def assert_shed(refused: list[httpx.Response]) -> None:
    for answer in refused:
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "overloaded"
        assert int(answer.headers["retry-after"]) >= 1


def test_a_burst_past_the_local_queue_sheds_only_the_excess(gateway: GatewayServer, http: httpx.Client) -> None:
    engine = gateway.app.state.gateway.adapters["here"].engine
    refused = burst(http, gateway.url, engine, "tiny", excess=6)
    assert_shed(refused)
    assert engine.stats().requests_refused >= 6
    # Load shedding is not a failure: with the strictest cooldown the provider still serves at once.
    after = http.post(gateway.url + "/nebul/v1/images/generations", json=generation("tiny"))
    assert after.status_code == 200, after.text


def test_a_burst_past_a_remote_workers_queue_cools_no_replica_down(
    gateway: GatewayServer, worker: WorkerServer, redis_prefix: str, http: httpx.Client
) -> None:
    """The worker's cooldown is shared through Redis: shedding its excess must not take it from every replica."""
    refused = burst(http, gateway.url, worker.engine, "remote-tiny", excess=4)
    assert_shed(refused)
    assert cooldown_in_redis(redis_prefix, "remote") is None
    after = http.post(gateway.url + "/nebul/v1/images/generations", json=generation("remote-tiny"))
    assert after.status_code == 200, after.text


def test_bad_input_through_a_remote_worker_is_the_clients_400(
    gateway: GatewayServer, redis_prefix: str, http: httpx.Client
) -> None:
    send = multipart("/v1/images/edits", {"model": "remote-tiny", "prompt": "a red hat"})
    for _ in range(2):
        for make in BAD_IMAGES.values():
            assert_client_fault(send(http, gateway.url, make()), "openai", "image")
    served = send(http, gateway.url, small_png(64, 64))
    assert served.status_code == 200, served.text
    assert cooldown_in_redis(redis_prefix, "remote") is None


@pytest.mark.parametrize("model", ["sd", "remote-sd-turbo"])
def test_a_target_with_missing_weights_falls_back_to_the_next(
    model: str, gateway: GatewayServer, redis_prefix: str, http: httpx.Client
) -> None:
    """The first target's weights are missing: the next target (of the same provider) serves, every time."""
    for _ in range(3):
        answer = http.post(gateway.url + "/nebul/v1/images/generations", json=generation(model))
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-gateway-attempts"] == "2"  # the missing one was tried, then the next
    assert cooldown_in_redis(redis_prefix, "remote") is None


@pytest.mark.parametrize("model", ["gone", "remote-gone"])
def test_a_model_with_missing_weights_alone_is_a_503_naming_no_path(
    model: str, gateway: GatewayServer, http: httpx.Client
) -> None:
    nebul = http.post(gateway.url + "/nebul/v1/images/generations", json=generation(model))
    assert nebul.status_code == 503, nebul.text
    assert nebul.json()["error"]["code"] == "overloaded"
    assert f"{model!r} is not available here" in nebul.json()["error"]["message"]
    melious = http.post(gateway.url + "/melious/v1/images/generations", json={"model": model, "prompt": "p"})
    assert melious.status_code == 503 and melious.json()["error"]["code"] == "INFERENCE_OVERLOADED"
    for answer in (nebul, melious):
        assert "/nonexistent" not in answer.text and "models/" not in answer.text


def test_a_worker_with_a_missing_model_is_not_healthy(worker: WorkerServer, http: httpx.Client) -> None:
    health = http.get(worker.url + "/health")
    assert health.status_code == 503 and health.json()["status"] == "degraded"
    assert health.json()["models"]["tiny"] == "ready" and MISSING_DIR in health.json()["models"]["gone"]
