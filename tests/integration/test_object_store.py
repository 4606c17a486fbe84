"""The image store on S3-compatible storage, end to end: gateways in front of the emulators and a
real SeaweedFS. Every dialect's URL answer is fetched from storage (presigned) and through another
gateway process (gateway mode: no shared disk, one bucket); a missing bucket or refused
credentials show at start and keep /ready at 503; storage gone mid-run fails URL clients only, and
/ready stays 200 `degraded` (a shared store's outage takes no replica out of rotation)."""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from schemas import melious
from schemas.canonical import ErrorCode
from schemas.dialect import image_dimensions
from tests.emulators import EmulatorServer
from tests.integration.conftest import PROVIDERS, provider_entries, start_gateway
from tests.integration.gateway_server import GatewayServer
from tests.seaweedfs import SeaweedFS
from tests.servers import GatewayProcess

PROMPT = "a lighthouse in a storm"
# NebulaBlock's serverless API answers base64 only: every URL below is one the gateway stored.
MODEL = "via-nebulablock-serverless"
MODELS = [
    {"name": f"via-{name}", "targets": [{"provider": name, "model": model}]}
    for name, (_, _, model) in PROVIDERS.items()
]

# Each dialect's request for a URL answer of one 512x512 image, and where the URL is in its answer.
URL_DIALECTS: dict[str, tuple[str, dict[str, Any], Callable[[dict[str, Any]], list[str]]]] = {
    "melious": (
        "/melious/v1/images/generations",
        {"model": MODEL, "prompt": PROMPT, "size": "512x512", "n": 2},
        lambda b: [d["url"] for d in b["data"]],
    ),
    "nebul": (
        "/nebul/v1/images/generations",
        {"model": MODEL, "prompt": PROMPT, "size": "512x512", "response_format": "url"},
        lambda b: [d["url"] for d in b["data"]],
    ),
    "pomelo-midjourney": (
        "/pomelo/api/v1/midjourney/generate",
        {"model": MODEL, "prompt": PROMPT, "width": 512, "height": 512, "num_outputs": 1},
        lambda b: [i["url"] for i in b["images"]],
    ),
    "nebulablock-v1": (
        "/nebulablock/v1/images/generate",
        {"model": MODEL, "prompt": PROMPT, "n": 1, "size": "512x512"},
        lambda b: [i["url"] for i in b["data"]["images"]],
    ),
    "openai-root": (
        "/v1/images/generations",
        {"model": MODEL, "prompt": PROMPT, "size": "512x512"},
        lambda b: [d["url"] for d in b["data"]],
    ),
}
_buckets = itertools.count()


def new_bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.create_bucket(f"igw-it-{next(_buckets)}-{int(time.time())}")


def url_answer(http: httpx.Client, base: str, dialect: str) -> list[str]:
    path, body, urls = URL_DIALECTS[dialect]
    response = http.post(base + path, json=body)
    assert response.status_code == 200, response.text
    found = urls(response.json())
    assert found and all(found), response.text
    return found


def assert_png(fetched: httpx.Response) -> bytes:
    assert fetched.status_code == 200, fetched.text
    assert fetched.headers["content-type"] == "image/png"
    assert image_dimensions(fetched.content) == (512, 512)
    return fetched.content


@pytest.fixture(scope="module")
def presigned_gateway(
    emulators: dict[str, EmulatorServer], seaweedfs: SeaweedFS, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    store = seaweedfs.store_config(new_bucket(seaweedfs), timeout_s=2, probe_interval_s=0.5)
    server = start_gateway(emulators, MODELS, tmp_path_factory.mktemp("unused"), image_store=store)
    yield server
    server.stop()


@pytest.mark.parametrize("dialect", list(URL_DIALECTS))
def test_presigned_urls_are_fetched_from_storage(
    dialect: str, presigned_gateway: GatewayServer, seaweedfs: SeaweedFS, http: httpx.Client
) -> None:
    urls = url_answer(http, presigned_gateway.url, dialect)
    for url in urls:
        assert url.startswith(seaweedfs.endpoint + "/") and "X-Amz-Signature=" in url
        assert_png(http.get(url))
    assert len(set(urls)) == len(urls)  # n images: one object each


def write_replica_config(path: Path, emulators: dict[str, EmulatorServer], store: dict[str, Any], replica: str) -> Path:
    """A replica's own config file; its (unused) directory store would be its own disk."""
    config = {
        "image_store": {**store, "secret": "shared-by-replicas"},
        "providers": provider_entries(emulators),
        "models": MODELS,
    }
    config_file = path / f"{replica}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    return config_file


@pytest.fixture(scope="module")
def replicas(
    emulators: dict[str, EmulatorServer], seaweedfs: SeaweedFS, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two gateway processes, no shared disk, one bucket, ``url_mode: gateway``."""
    store = seaweedfs.store_config(new_bucket(seaweedfs), url_mode="gateway")
    started = []
    try:
        for replica in ("a", "b"):
            directory = tmp_path_factory.mktemp(f"replica-{replica}")
            started.append(GatewayProcess(write_replica_config(directory, emulators, store, replica)))
        for process in started:
            process.wait_ready()
        yield started[0], started[1]
    finally:
        for process in started:
            process.stop()


@pytest.mark.parametrize("dialect", list(URL_DIALECTS))
def test_replicas_serve_each_others_urls_through_one_bucket(
    dialect: str, replicas: tuple[GatewayProcess, GatewayProcess], http: httpx.Client
) -> None:
    for maker, other in (replicas, replicas[::-1]):
        for url in url_answer(http, maker.url, dialect):
            assert url.startswith(maker.url + "/images/")
            path = urlsplit(url).path
            assert assert_png(http.get(other.url + path)) == assert_png(http.get(url))


def test_a_gateway_url_past_its_ttl_is_refused(
    emulators: dict[str, EmulatorServer], seaweedfs: SeaweedFS, tmp_path: Path, http: httpx.Client
) -> None:
    store = seaweedfs.store_config(new_bucket(seaweedfs), url_mode="gateway", secret="s", ttl_seconds=3)
    server = start_gateway(emulators, MODELS, tmp_path, image_store=store)
    try:
        (url,) = url_answer(http, server.url, "openai-root")
        assert_png(http.get(url))
        time.sleep(4.1)  # past the expiry the URL carries (whole seconds)
        refused = http.get(url)
        assert refused.status_code == 404 and "expired" in refused.text
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        ({"bucket": "igw-no-such-bucket"}, "bucket 'igw-no-such-bucket' at http://127.0.0.1:"),
        ({"secret_access_key": "wrong-secret-456"}, "refused the credentials"),
    ],
)
def test_a_store_that_cannot_be_used_shows_at_start_and_in_ready(
    store: dict[str, Any],
    expected: str,
    emulators: dict[str, EmulatorServer],
    seaweedfs: SeaweedFS,
    tmp_path: Path,
    http: httpx.Client,
) -> None:
    section = {**seaweedfs.store_config(new_bucket(seaweedfs)), **store}
    process = GatewayProcess(write_replica_config(tmp_path, emulators, section, "bad"))
    try:
        process.wait_ready("/health")
        ready = http.get(process.url + "/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "not ready"
        assert expected in ready.json()["checks"]["image_store"]
        assert store_ready(http, process.url) == 0
        b64 = {"model": MODEL, "prompt": PROMPT, "size": "512x512", "response_format": "b64_json"}
        assert http.post(process.url + "/melious/v1/images/generations", json=b64).status_code == 200
    finally:
        process.stop()
    log = process.log.read_text()
    assert "image_store_unavailable" in log and expected in log
    assert "wrong-secret-456" not in log


def test_storage_down_fails_url_clients_clearly_and_spares_b64_clients(
    presigned_gateway: GatewayServer, seaweedfs: SeaweedFS, http: httpx.Client
) -> None:
    path = "/melious/v1/images/generations"
    b64 = {"model": MODEL, "prompt": PROMPT, "size": "512x512", "response_format": "b64_json"}
    seaweedfs.pause()
    try:
        down = http.post(presigned_gateway.url + path, json={**b64, "response_format": "url"})
        answered = http.post(presigned_gateway.url + path, json=b64)
        ready = wait_for_ready(http, presigned_gateway.url, "degraded")  # the background check saw it
    finally:
        seaweedfs.resume()
    assert down.status_code == 502, down.text
    error = down.json()["error"]
    assert error["code"] == melious.CODES[ErrorCode.UPSTREAM_ERROR]  # Melious's name for upstream_error
    assert "image could not be stored" in error["message"] and "unreachable (timed out)" in error["message"]
    assert answered.status_code == 200
    image = base64.b64decode(answered.json()["data"][0]["b64_json"])
    assert image_dimensions(image) == (512, 512)
    assert ready.status_code == 200 and "unreachable" in ready.json()["checks"]["image_store"]
    (url,) = url_answer(http, presigned_gateway.url, "openai-root")  # back: URLs again
    assert_png(http.get(url))
    assert wait_for_ready(http, presigned_gateway.url, "ready").json()["checks"]["image_store"] == "ok"


def store_ready(http: httpx.Client, url: str) -> float:
    """``image_gateway_image_store_ready`` as the gateway process at ``url`` reports it."""
    for family in text_string_to_metric_families(http.get(url + "/metrics").text):
        if family.name == "image_gateway_image_store_ready":
            return float(family.samples[0].value)
    raise AssertionError("no image_gateway_image_store_ready")


def wait_for_ready(http: httpx.Client, url: str, status: str, timeout: float = 30.0) -> httpx.Response:
    """``/ready``'s answer once its ``status`` is ``status`` (the store is checked in the background)."""
    deadline = time.monotonic() + timeout
    while (ready := http.get(url + "/ready")).json()["status"] != status:
        assert time.monotonic() < deadline, f"/ready not {status} within {timeout} s: {ready.text}"
        time.sleep(0.1)
    return ready


def test_a_paused_store_leaves_the_replica_ready_and_degraded(
    emulators: dict[str, EmulatorServer], seaweedfs: SeaweedFS, tmp_path: Path, http: httpx.Client
) -> None:
    """The store seen usable at start, then paused: /ready stays 200 with `degraded` (every replica shares the
    store: none would be kept in rotation otherwise), the gauge falls and rises, one log line per change."""
    section = seaweedfs.store_config(new_bucket(seaweedfs), timeout_s=1, probe_interval_s=0.2)
    process = GatewayProcess(write_replica_config(tmp_path, emulators, section, "paused"))
    try:
        process.wait_ready()
        assert store_ready(http, process.url) == 1
        seaweedfs.pause()
        try:
            ready = wait_for_ready(http, process.url, "degraded")
            assert ready.status_code == 200
            assert "unreachable" in ready.json()["checks"]["image_store"]
            assert store_ready(http, process.url) == 0
            time.sleep(1.5)  # a few more failed checks: still one log line
        finally:
            seaweedfs.resume()
        assert wait_for_ready(http, process.url, "ready").status_code == 200
        assert store_ready(http, process.url) == 1
    finally:
        process.stop()
    events = [json.loads(line) for line in process.log.read_text().splitlines() if line.startswith("{")]
    changes = [(e["event"], e["level"]) for e in events if e.get("event", "").startswith("image_store_")]
    assert changes == [("image_store_unavailable", "error"), ("image_store_recovered", "warning")]
