"""Request bodies: a refusal every client can read, keys checked before any body, and memory under a flood.

Clients such as urllib, ``requests`` and the openai SDK write the whole body before they
read; a gateway that answers early and closes resets them. These tests use such clients.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.admission.auth import hash_key
from tests import openai_spec
from tests.emulators import EmulatorServer, Fault, solid_png
from tests.integration.conftest import MAX_BODY_BYTES, PROVIDERS
from tests.integration.gateway_server import GatewayServer
from tests.servers import GatewayProcess

MiB = 1024 * 1024
PNG = solid_png(64, 64, (1, 2, 3))
# Each JSON dialect route, with a body whose prompt makes it ``size`` bytes long.
JSON_ROUTES = {
    "melious": ("/melious/v1/images/generations", {"model": "via-melious"}),
    "nebul": ("/nebul/v1/images/generations", {"model": "via-nebul"}),
    "pomelo": ("/pomelo/api/v1/flux.1", {"model": "flux.1"}),
    "nebulablock": ("/nebulablock/v1/images/generate", {"model": "via-nebulablock-v1"}),
    "openai": ("/v1/images/generations", {"model": "via-nebul"}),
}


def big_json(fields: dict[str, Any], size: int) -> bytes:
    return json.dumps({**fields, "prompt": "x" * size}).encode()


def urllib_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST with urllib, which sends the whole body before it reads the answer."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, content_type, raw = answer.status, answer.headers.get("content-type", ""), answer.read()
    except urllib.error.HTTPError as error:
        status, content_type, raw = error.code, error.headers.get("content-type", ""), error.read()
    openai_spec.seen(url, "POST", status, content_type, raw)  # a root /v1 answer holds to OpenAI's document
    return status, json.loads(raw)


@pytest.mark.parametrize("dialect", sorted(JSON_ROUTES))
def test_a_body_over_the_limit_is_a_413_a_write_first_client_reads(dialect: str, gateway: GatewayServer) -> None:
    path, fields = JSON_ROUTES[dialect]
    status, body = urllib_post(gateway.url + path, big_json(fields, 3 * MAX_BODY_BYTES), {})
    assert status == 413
    assert "larger than" in body["error"]["message"]


def test_the_openai_sdk_reads_the_413_of_an_edit_over_the_limit(gateway: GatewayServer) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    image = PNG + b"\x00" * (3 * MAX_BODY_BYTES)
    with pytest.raises(openai.APIStatusError) as raised:
        client.images.edit(model="via-nebul", prompt="a hat", image=("in.png", image, "image/png"))
    assert raised.value.status_code == 413
    assert raised.value.response.json()["error"]["code"]  # the OpenAI envelope, not a reset


def test_a_multipart_text_field_that_is_not_utf8_is_a_400(gateway: GatewayServer, http: httpx.Client) -> None:
    response = http.post(
        gateway.url + "/nebul/v1/images/edits",
        data={"model": "via-nebul"},
        files={"image": ("in.png", PNG, "image/png"), "prompt": (None, b"\xff\xfe bad")},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "prompt"


def test_a_form_route_refuses_a_json_body_with_415(gateway: GatewayServer, http: httpx.Client) -> None:
    response = http.post(gateway.url + "/nebul/v1/images/edits", json={"prompt": "p"})
    assert response.status_code == 415, response.text
    assert "multipart/form-data" in response.json()["error"]["message"]


def test_a_wrong_method_on_a_dialect_route_is_a_405_with_allow(gateway: GatewayServer, http: httpx.Client) -> None:
    response = http.get(gateway.url + "/melious/v1/images/generations")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert set(response.json()) == {"error"} and response.json()["error"]["code"]


def write_config(tmp_path: Path, emulators: dict[str, EmulatorServer], **server: Any) -> Path:
    kind, extra, model = PROVIDERS["nebulablock-serverless"]
    config = {
        "server": server,
        "auth": {"keys": [{"name": "flood", "hash": hash_key("flood-key")}]},
        "image_store": {"path": str(tmp_path / "store"), "secret": "s"},
        "providers": {"nb": {"kind": kind, "base_url": emulators[kind].base_url, "api_key": "test-key", **extra}},
        "models": [{"name": "m", "targets": [{"provider": "nb", "model": model}]}],
    }
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))
    return config_file


def memory_kib(pid: int, field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (the peak so far) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_a_flood_of_large_bodies_stays_within_the_in_flight_budget(
    emulators: dict[str, EmulatorServer], tmp_path: Path
) -> None:
    budget, body_size, flood = 32 * MiB, 6 * MiB, 24  # 144 MiB of bodies at once without the budget
    gateway = GatewayProcess(
        write_config(
            tmp_path,
            emulators,
            max_body_bytes=12 * MiB,
            max_input_image_bytes=12 * MiB,
            max_inflight_body_bytes=budget,
            max_inflight_body_share=1.0,  # one key floods here: the whole budget is its to fill
        )
    ).wait_ready()
    url = gateway.url + "/nebulablock/api/v1/images/generation"
    image = base64.b64encode(PNG + b"\x00" * (body_size * 3 // 4)).decode()
    body = json.dumps({"model": "m", "prompt": "p", "image": image, "width": 64, "height": 64}).encode()
    try:
        assert urllib_post(url, body, {"Authorization": "Bearer flood-key"})[0] == 200  # warm
        idle = memory_kib(gateway.process.pid, "VmRSS")

        # Without a valid key nothing is buffered: every one is a 401 the client reads.
        with ThreadPoolExecutor(flood) as pool:
            refused = list(pool.map(lambda _: urllib_post(url, body, {"Authorization": "Bearer nope"}), range(flood)))
        assert {status for status, _ in refused} == {401}
        assert memory_kib(gateway.process.pid, "VmHWM") - idle < 24 * 1024

        # The upstream is slow, so the bodies are held at once: past the budget, 503 with Retry-After.
        emulators["nebulablock"].emulator.add_fault(Fault(delay=1.5, times=None))
        statuses: list[int] = []
        lock = threading.Lock()

        def one(_: int) -> None:
            request = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json", "Authorization": "Bearer flood-key"}
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    status = answer.status
            except urllib.error.HTTPError as error:
                status = error.code
                envelope = json.loads(error.read())
                assert status == 503 and envelope["status"] == "error", envelope
                assert int(error.headers["Retry-After"]) >= 1
            with lock:
                statuses.append(status)

        with ThreadPoolExecutor(flood) as pool:
            list(pool.map(one, range(flood)))
        peak = memory_kib(gateway.process.pid, "VmHWM") - idle
        assert statuses.count(200) >= budget // (2 * body_size) and 503 in statuses, statuses
        # A request holds its body, its decoded image and the upstream body: a few times the budget, no more.
        assert peak < (5 * budget + 48 * MiB) // 1024, f"peak {peak // 1024} MiB over idle"

        # Requests that fit the budget together all succeed, and memory goes back near idle afterwards.
        fit = budget // body_size - 1
        with ThreadPoolExecutor(fit) as pool:
            statuses = []
            list(pool.map(one, range(fit)))
        assert statuses == [200] * fit
        time.sleep(0.5)
        assert memory_kib(gateway.process.pid, "VmRSS") - idle < 48 * 1024
    finally:
        emulators["nebulablock"].emulator.clear_faults()
        gateway.stop()


def test_floods_in_a_row_do_not_ratchet_idle_memory(emulators: dict[str, EmulatorServer], tmp_path: Path) -> None:
    """Three floods of large bodies, each answered 400 (a prompt past the limit): idle memory comes back each time.

    The console's recent-request summaries keep their records a while; they kept each client's prompt too
    (+240 MB of idle memory a flood of 12 bodies of 20 MB, for good, before).
    """
    gateway = GatewayProcess(
        write_config(
            tmp_path,
            emulators,
            max_body_bytes=12 * MiB,
            max_inflight_body_bytes=256 * MiB,
            max_inflight_body_share=1.0,
        )
    ).wait_ready()
    url = gateway.url + "/nebulablock/api/v1/images/generation"
    body = json.dumps({"model": "m", "prompt": "x" * (8 * MiB), "width": 64, "height": 64}).encode()
    try:
        key = {"Authorization": "Bearer flood-key"}
        assert urllib_post(url, json.dumps({"model": "m", "prompt": "p"}).encode(), key)[0] == 200
        idle = memory_kib(gateway.process.pid, "VmRSS")
        for _ in range(3):
            with ThreadPoolExecutor(12) as pool:
                answers = list(pool.map(lambda _: urllib_post(url, body, key), range(12)))
            assert {status for status, _ in answers} == {400}, answers[:1]
        time.sleep(1)
        assert memory_kib(gateway.process.pid, "VmRSS") - idle < 48 * 1024
    finally:
        gateway.stop()
