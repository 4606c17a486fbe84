"""Every dialect route x every provider entry x every mode, over real HTTP: one cell each, none skipped.

The rows are ``MOUNTS`` (gateway/request/mounts.py): every path the gateway serves a dialect on, prefixed
and at the root. The columns are the provider entries (each emulated provider's kinds, and the local
tiny backend). The modes are a plain answer, a job (``Prefer: respond-async``, then ``GET /v1/jobs/{id}``),
and a stream (``stream: true``) where the endpoint streams. What a client sends is tests/dialects.py.

A cell whose operation the provider cannot do (an edit at Melious, a variation anywhere but Nebul and
the local backend) asserts the documented refusal, ``operation_not_supported`` in the client's dialect
(docs/errors.md): the plain answer is that 400; a job is accepted and fails holding that error body
(gateway/jobs); a stream's one event is that ``error`` (gateway/request/streams.py).

Each provider entry has a gateway of its own, where the model ``matrix`` and the fixed-model route's
``flux.1`` both lead to it: so Pomelo's Flux route, whose client names no model, reaches every provider.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.request.mounts import MOUNTS, Mount
from schemas import melious, pomelo
from schemas.dialect import image_dimensions
from tests.dialects import CALLS, Call, image_pointers, png_of
from tests.emulators import EmulatorServer
from tests.integration.conftest import PROVIDERS, provider_entries
from tests.integration.gateway_server import GatewayServer, gateway_config

# The side of the square each cell asks for: 512 where an emulator draws it (Melious has a fixed list of sizes;
# 512x512 is on it), 64 for the local tiny model on the CPU (two steps a picture).
SIDE = 512
LOCAL_SIDE = 64
LOCAL = "local"
# Each provider entry, and what it can do (adapters/*.py ``endpoints_for``; the local backend does all three).
CAN_DO: dict[str, frozenset[str]] = {
    "melious": frozenset({"generate"}),
    "nebul": frozenset({"generate", "edit", "variation"}),
    "pomelo-midjourney": frozenset({"generate"}),
    "pomelo-flux": frozenset({"generate"}),
    "nebulablock-serverless": frozenset({"generate", "edit"}),
    "nebulablock-v1": frozenset({"generate"}),
    LOCAL: frozenset({"generate", "edit", "variation"}),
}
# The code of ``operation_not_supported`` in each dialect's envelope (docs/errors.md).
NOT_SUPPORTED = {
    "melious": "MODEL_OPERATION_UNSUPPORTED",
    "nebul": "operation_not_supported",
    "openai": "operation_not_supported",
    "pomelo": "operation_not_supported",
    "nebulablock": "operation_not_supported",
}
ASYNC = {"Prefer": "respond-async"}


def mount_id(mount: Mount) -> str:
    return f"{mount.prefix or '(root)'}{mount.endpoint.path}"


def cells() -> list[Any]:
    found = []
    for mount in MOUNTS:
        call = CALLS[mount.endpoint]
        modes = ["plain", "job", *(["stream"] if call.streams else [])]
        for provider in CAN_DO:
            for mode in modes:
                found.append(pytest.param(mount, provider, mode, id=f"{mount_id(mount)}-{provider}-{mode}"))
    return found


class Gateways:
    """One gateway per provider entry, started the first time a cell asks for it."""

    def __init__(self, emulators: dict[str, EmulatorServer], root: Path) -> None:
        self.emulators = emulators
        self.root = root
        self.started: dict[str, GatewayServer] = {}

    def __getitem__(self, provider: str) -> GatewayServer:
        if provider not in self.started:
            providers: dict[str, Any] = provider_entries(self.emulators)
            if provider == LOCAL:
                tiny = {"tiny": {"path": "builtin:tiny-sd", "default_steps": 2}}
                providers = {LOCAL: {"kind": "local", "device": "cpu", "batch_window_ms": 0, "models": tiny}}
                model = "tiny"
            else:
                providers = {provider: providers[provider]}
                model = PROVIDERS[provider][2]
            models = [
                {"name": name, "targets": [{"provider": provider, "model": model}]} for name in ("matrix", "flux.1")
            ]
            server = GatewayServer(gateway_config(providers, models, self.root / provider))
            server.startup_timeout_s = 300.0  # the local one builds the tiny model on first use: slow when busy
            self.started[provider] = server.start()
        return self.started[provider]

    def stop(self) -> None:
        for server in self.started.values():
            server.stop()


@pytest.fixture(scope="module")
def gateways(emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    running = Gateways(emulators, tmp_path_factory.mktemp("matrix"))
    yield running
    running.stop()


def test_every_mounted_endpoint_has_a_client_in_the_table() -> None:
    assert {mount.endpoint for mount in MOUNTS} == set(CALLS)
    assert {"plain", "job", "stream"} == {cell.values[2] for cell in cells()}


def send(
    http: httpx.Client, url: str, mount: Mount, call: Call, side: int, *, stream: bool = False, **headers: str
) -> Any:
    request = call.request("matrix", side)
    if stream:
        if call.form:
            request["data"] = {**request["data"], "stream": "true"}
        else:
            request["json"] = {**request["json"], "stream": True}
    method = mount.methods[-1]  # POST where a route takes GET too (NebulaBlock's serverless)
    return http.request(method, url + mount.prefix + mount.endpoint.path, headers=headers, **request)


def side_for(call: Call, provider: str) -> int:
    return max(LOCAL_SIDE if provider == LOCAL else SIDE, call.min_side)


def drawn_size(call: Call, provider: str) -> tuple[int, int]:
    """The size of the image a cell gets back: what was asked, but Pomelo's Flux draws 1024 on the long side."""
    size = call.size(side_for(call, provider))
    if provider == "pomelo-flux":
        return pomelo.size_for_aspect_ratio(pomelo.aspect_ratio_for_size(*size))
    return size


def assert_images(http: httpx.Client, answer: dict[str, Any], call: Call, provider: str) -> None:
    pointers = image_pointers(answer)
    assert len(pointers) == 1, answer

    def fetch(url: str) -> bytes:
        fetched = http.get(url)
        assert fetched.status_code == 200, fetched.text
        return fetched.content

    image = png_of(pointers[0], fetch)
    assert image.startswith(b"\x89PNG")
    assert image_dimensions(image) == drawn_size(call, provider)


def job_of(http: httpx.Client, url: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        answer = http.get(f"{url}/v1/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        assert time.monotonic() < deadline, f"the job never ended: {job}"
        time.sleep(0.02)


def events_of(answer: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of a streamed answer, as (event, data)."""
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in answer.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.mark.parametrize(("mount", "provider", "mode"), cells())
def test_cell(mount: Mount, provider: str, mode: str, gateways: Gateways, http: httpx.Client) -> None:
    call = CALLS[mount.endpoint]
    url = gateways[provider].url
    can = call.operation in CAN_DO[provider]
    refused = NOT_SUPPORTED[mount.endpoint.dialect]
    if mode == "plain":
        answer = send(http, url, mount, call, side_for(call, provider))
        if not can:  # refused before any call, in the dialect's envelope
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["code"] == refused, answer.text
            return
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-gateway-provider"] == provider
        assert_images(http, answer.json(), call, provider)
        if provider != LOCAL:  # one upstream call, and no other
            kind = PROVIDERS[provider][0]
            assert [call.method for call in gateways.emulators[kind].emulator.calls] == ["POST"]
    elif mode == "job":
        answer = send(http, url, mount, call, side_for(call, provider), **ASYNC)
        assert answer.status_code == 202, answer.text
        assert answer.headers["preference-applied"] == "respond-async"
        job = job_of(http, url, answer.json()["id"])
        if not can:  # the job fails, holding the error body the plain answer would have had
            assert job["status"] == "failed" and "result" not in job, job
            assert job["error"]["error"]["code"] == refused, job
            return
        assert job["status"] == "succeeded", job
        assert_images(http, job["result"], call, provider)
    else:
        events = events_of(send(http, url, mount, call, side_for(call, provider), stream=True))
        if not can:  # the stream's one event is the error, in OpenAI's envelope (the SDK raises it)
            assert [event for event, _ in events] == ["error"], events
            assert events[0][1]["type"] == "error" and events[0][1]["error"]["code"] == refused, events
            return
        kind = "image_edit" if call.operation == "edit" else "image_generation"
        final_type, final = events[-1]
        assert final_type == f"{kind}.completed" and final["type"] == final_type, events[-1]
        assert all(event == f"{kind}.partial_image" for event, _ in events[:-1]), [event for event, _ in events]
        assert image_dimensions(base64.b64decode(final["b64_json"])) == drawn_size(call, provider)


@pytest.mark.parametrize("provider", list(CAN_DO))
def test_a_melious_client_asking_for_base64_gets_it_from_every_provider(
    provider: str, gateways: Gateways, http: httpx.Client
) -> None:
    body = {"model": "matrix", "prompt": "a lighthouse", "size": "512x512", "response_format": "b64_json"}
    answer = http.post(gateways[provider].url + "/melious/v1/images/generations", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-provider"] == provider
    assert [form for form, _ in image_pointers(answer.json())] == ["b64"]
    assert_images(http, answer.json(), CALLS[melious.GENERATIONS], provider)
