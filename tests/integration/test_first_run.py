"""What a new user meets first, each over real processes and real HTTP: image URLs across a
restart, `make run` and `make emulators` where they are told to listen, a lost Redis that
shows, the start-up line, and /docs without internet."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.images.store import SECRET_FILE
from gateway.request.mounts import MOUNTS
from gateway.request.openapi import ERROR_STATUSES
from soak.ports import consecutive_ports
from tests.conftest import API_KEY
from tests.emulators import EmulatorServer
from tests.integration.gateway_server import GatewayServer, gateway_config
from tests.redis_support import OwnRedis
from tests.servers import GatewayProcess, free_port

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)


def write_config(path: Path, emulators: dict[str, EmulatorServer], **sections: Any) -> Path:
    """NebulaBlock's serverless API (base64 only) behind model `sdxl`: a Melious client gets a gateway URL."""
    config = {
        "providers": {
            "nb": {
                "kind": "nebulablock",
                "api": "serverless",
                "base_url": emulators["nebulablock"].base_url,
                "api_key": API_KEY,
            },
        },
        "models": [
            {"name": "sdxl", "targets": [{"provider": "nb", "model": "stabilityai/stable-diffusion-xl-base-1.0"}]}
        ],
        **sections,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def generate_url(gateway_url: str) -> str:
    body = {"model": "sdxl", "prompt": "a lighthouse", "size": "512x512"}
    response = httpx.post(gateway_url + "/melious/v1/images/generations", json=body, timeout=30)
    assert response.status_code == 200, response.text
    url: str = response.json()["data"][0]["url"]
    assert url.startswith(gateway_url + "/images/")
    return url


def log_events(log: Path) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


def test_image_urls_survive_a_restart(emulators: dict[str, EmulatorServer], tmp_path: Path) -> None:
    """No image_store.secret configured: a URL from one gateway process is served by the next one on the same var/."""
    var = tmp_path / "var"
    config = write_config(tmp_path / "gateway.yaml", emulators, image_store={"path": str(var / "images")})
    first = GatewayProcess(config).wait_ready()
    try:
        url = generate_url(first.url)
        image = httpx.get(url).content
        assert image.startswith(b"\x89PNG")
    finally:
        first.stop()
    kept = var / SECRET_FILE
    assert kept.stat().st_mode & 0o777 == 0o600
    second = GatewayProcess(config).wait_ready()
    try:
        again = httpx.get(second.url + urlsplit(url).path)
        assert again.status_code == 200, again.text
        assert again.content == image
    finally:
        second.stop()


def test_start_up_logs_where_it_listens(emulators: dict[str, EmulatorServer], tmp_path: Path) -> None:
    config = write_config(tmp_path / "gateway.yaml", emulators, image_store={"path": str(tmp_path / "images")})
    gateway = GatewayProcess(config).wait_ready("/health")
    gateway.stop()
    listening = [event for event in log_events(gateway.log) if event.get("event") == "listening"]
    assert [event["url"] for event in listening] == [gateway.url]


@contextlib.contextmanager
def make(*args: str, env: dict[str, str] | None = None, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`make ARGS` from the repository root with this interpreter's environment as its VENV; killed at the end."""
    command = ["make", "--no-print-directory", "-o", str(VENV / ".installed"), f"VENV={VENV}", *args]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    for name in ("PORT", "HOST", "CONFIG", "EMULATOR_PORT"):
        if env is None or name not in env:
            environment.pop(name, None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url, timeout=1)
        time.sleep(0.1)
    raise AssertionError(f"nothing answered at {url} in {timeout} s: {log.read_text()[-3000:]}")


def test_make_run_listens_where_the_config_says(emulators: dict[str, EmulatorServer], tmp_path: Path) -> None:
    """No HOST/PORT given: `make run` serves on the config's server.port; PORT given: on that port."""
    configured = free_port()
    config = write_config(
        tmp_path / "gateway.yaml", emulators, server={"port": configured}, image_store={"path": str(tmp_path / "img")}
    )
    log = tmp_path / "make-run.log"
    with make("run", f"CONFIG={config}", log=log) as process:
        assert wait_for(f"http://127.0.0.1:{configured}/health", process, log).status_code == 200
    given = free_port()
    with make("run", f"CONFIG={config}", f"PORT={given}", log=log) as process:
        assert wait_for(f"http://127.0.0.1:{given}/health", process, log).status_code == 200


def test_make_emulators_moves_with_emulator_port(tmp_path: Path) -> None:
    """`EMULATOR_PORT=P make emulators` and `EMULATOR_PORT=P CONFIG=examples/emulators.yaml make run` go together."""
    base = consecutive_ports(4)
    gateway_port = free_port()
    emulators_log, gateway_log = tmp_path / "emulators.log", tmp_path / "gateway.log"
    store = {"IMAGE_GATEWAY_STORE": str(tmp_path / "images")}
    with (
        make("emulators", log=emulators_log, env={"EMULATOR_PORT": str(base)}) as emulating,
        make(
            "run",
            "CONFIG=examples/emulators.yaml",
            log=gateway_log,
            env={"EMULATOR_PORT": str(base), "PORT": str(gateway_port), **store},
        ) as serving,
    ):
        for offset in range(4):
            wait_for(f"http://127.0.0.1:{base + offset}/", emulating, emulators_log)
        gateway = f"http://127.0.0.1:{gateway_port}"
        wait_for(gateway + "/health", serving, gateway_log)
        for model in ("flux-schnell", "kontext", "5", "flux.1", "sdxl"):
            body = {"model": model, "prompt": "a lighthouse", "size": "1024x1024", "response_format": "b64_json"}
            response = httpx.post(gateway + "/v1/images/generations", json=body, timeout=30)
            assert response.status_code == 200, (model, response.text)


def redis_up(url: str) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        if family.name == "image_gateway_redis_up":
            return float(family.samples[0].value)
    raise AssertionError("no image_gateway_redis_up")


def wait_until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {condition}")
        time.sleep(0.1)


@pytest.mark.parametrize("on_failure", ["open", "closed"])
def test_a_lost_redis_shows_without_rate_limits(
    emulators: dict[str, EmulatorServer], tmp_path: Path, on_failure: str
) -> None:
    """Redis for cooldowns only (no limits anywhere): losing it moves the gauge, logs once, and /ready says so."""
    own = OwnRedis(tmp_path).start()
    redis: dict[str, Any] = {"url": own.url, "on_failure": on_failure}
    if on_failure == "closed":  # `open` keeps the default probe interval (5 s): it holds with no setting at all
        redis["probe_interval_s"] = 0.2
    config = write_config(
        tmp_path / "gateway.yaml", emulators, redis=redis, image_store={"path": str(tmp_path / "images")}
    )
    gateway = GatewayProcess(config).wait_ready()
    try:
        assert redis_up(gateway.url) == 1
        own.stop()
        wait_until(lambda: redis_up(gateway.url) == 0, timeout=30)
        ready = httpx.get(gateway.url + "/ready")  # Redis answered at start: degraded, not unready, either way
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["redis"].startswith("unreachable")
        generate_url(gateway.url)  # requests still served: nothing but cooldowns needed Redis
        own.start()
        wait_until(lambda: redis_up(gateway.url) == 1, timeout=30)
        assert httpx.get(gateway.url + "/ready").status_code == 200
    finally:
        gateway.stop()
        own.stop()
    events = [event for event in log_events(gateway.log) if event.get("event", "").startswith("redis_")]
    assert [(event["event"], event["level"]) for event in events] == [
        ("redis_unavailable", "error"),
        ("redis_recovered", "warning"),
    ]
    assert events[0]["policy"] == on_failure


@pytest.fixture(scope="module")
def plain_gateway(
    emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    providers = {"mel": {"kind": "melious", "base_url": emulators["melious"].base_url, "api_key": API_KEY}}
    models = [{"name": "flux-schnell", "targets": [{"provider": "mel", "model": "flux-schnell"}]}]
    server = GatewayServer(gateway_config(providers, models, tmp_path_factory.mktemp("store"))).start()
    yield server
    server.stop()


@pytest.mark.parametrize("page", ["/docs", "/docs/redoc", "/docs/swagger"])
def test_docs_pages_need_no_other_host(plain_gateway: GatewayServer, page: str) -> None:
    """Every script, style sheet, font and icon a docs page loads comes from the gateway itself."""
    response = httpx.get(plain_gateway.url + page)
    assert response.status_code == 200
    head = response.text.split("<body", 1)[0]  # the page's assets; the body holds the inlined spec
    references = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", head) + re.findall(r"url\(([^)]+)\)", head)
    assert references
    for reference in references:
        parts = urlsplit(reference)
        assert not parts.scheme and not parts.netloc, f"{page} loads {reference} from another host"
        asset = httpx.get(plain_gateway.url + parts.path)
        assert asset.status_code == 200, reference
        assert len(asset.content) > 0
    assert re.search(r"<script[^>]+src=", head)


def test_metrics_content_type_names_the_charset_once(plain_gateway: GatewayServer) -> None:
    response = httpx.get(plain_gateway.url + "/metrics")
    assert response.status_code == 200
    content_type = response.headers.get_list("content-type")
    assert len(content_type) == 1
    assert content_type[0].count("charset=") == 1, content_type


def test_openapi_describes_each_dialects_errors(plain_gateway: GatewayServer) -> None:
    document = httpx.get(plain_gateway.url + "/docs/openapi.json").json()
    schemas = document["components"]["schemas"]
    envelopes = {
        "melious": "MeliousError",
        "nebul": "NebulError",
        "openai": "NebulError",
        "pomelo": "PomeloError",
        "nebulablock": "NebulaBlockError",
    }
    assert set(ERROR_STATUSES) == {400, 401, 404, 413, 429, 502, 503, 504}
    for mount in MOUNTS:
        for method in mount.methods:
            responses = document["paths"][mount.prefix + mount.endpoint.path][method.lower()]["responses"]
            for status in ERROR_STATUSES:
                schema = responses[str(status)]["content"]["application/json"]["schema"]["$ref"]
                assert schema.rsplit("/", 1)[1] == envelopes[mount.endpoint.dialect]
            assert "Retry-After" in responses["429"]["headers"]
    assert "error" in schemas["PomeloError"]["properties"]
    assert "details" in schemas["NebulaBlockErrorBody"]["properties"]
