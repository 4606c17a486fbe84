"""An OpenAI-compatible server not written here behind the gateway: Portkey's open-source gateway.

Portkey (``@portkey-ai/gateway``, pinned in tests/portkey/package.json and its lock file, installed
by ``make test`` with ``npm ci``) runs under Node.js in front of the OpenAI emulator, as a custom
OpenAI host (``x-portkey-provider: openai``, ``x-portkey-custom-host``), and the gateway reaches it
as a ``kind: openai`` provider whose ``headers`` carry Portkey's routing. Nothing is downloaded
here: without the install the test fails and says how to make it.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from schemas.dialect import image_dimensions
from tests.conftest import API_KEY
from tests.emulators import EmulatorServer
from tests.integration.conftest import start_gateway
from tests.integration.gateway_server import GatewayServer

PORTKEY_DIR = Path(__file__).resolve().parents[1] / "portkey"
SERVER_JS = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
STARTUP_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def portkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Portkey's gateway on a free loopback port; its base URL."""
    node = shutil.which("node")
    if node is None or not SERVER_JS.exists():
        pytest.fail(
            f"Portkey's gateway is not installed at {PORTKEY_DIR}/node_modules (or node is missing): "
            "run `make test`, or `npm ci --prefix tests/portkey`",
            pytrace=False,
        )
    port = free_port()
    log = (tmp_path_factory.mktemp("portkey") / "portkey.log").open("wb")
    process = subprocess.Popen(
        [node, str(SERVER_JS), f"--port={port}", "--headless"],
        cwd=PORTKEY_DIR,
        env={**os.environ, "NODE_ENV": "production"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"Portkey's gateway exited at start (status {process.returncode}): see {log.name}")
            try:
                if httpx.get(url + "/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Portkey's gateway did not answer within {STARTUP_S:g}s: see {log.name}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def gateway(
    emulators: dict[str, EmulatorServer], portkey: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    upstream = emulators["openai"]
    providers = {
        "portkey": {
            "kind": "openai",
            "base_url": portkey + "/v1",
            "api_key": API_KEY,  # Portkey passes it on to the custom host
            "response_format": None,
            "operations": ["generate"],
            "headers": {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream.base_url + "/v1"},
        }
    }
    models = [{"name": "via-portkey", "targets": [{"provider": "portkey", "model": "gpt-image-1"}]}]
    server = start_gateway(emulators, models, tmp_path_factory.mktemp("store"), extra_providers=providers)
    yield server
    server.stop()


@pytest.fixture
def sdk(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="sk-anything", base_url=gateway.url + "/v1", max_retries=0, timeout=60) as client:
        yield client


def test_a_generation_through_portkey(sdk: openai.OpenAI, emulators: dict[str, EmulatorServer]) -> None:
    answer = sdk.images.generate(
        model="via-portkey", prompt="a lighthouse", size="1024x1536", response_format="b64_json"
    )
    assert image_dimensions(base64.b64decode(answer.data[0].b64_json or "")) == (1024, 1536)
    calls = emulators["openai"].emulator.calls
    assert [(call.path, call.status, call.authorized) for call in calls] == [("/v1/images/generations", 200, True)]
    assert calls[0].body["model"] == "gpt-image-1" and calls[0].body["size"] == "1024x1536"


def test_portkeys_error_answer_reaches_the_client_in_its_dialect(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    body = {"model": "via-portkey", "prompt": "forbidden", "size": "1024x1024"}
    answer = httpx.post(gateway.url + "/melious/v1/images/generations", json=body, timeout=60)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "POLICY_CONTENT_VIOLATION"
    assert [call.status for call in emulators["openai"].emulator.calls] == [400]
