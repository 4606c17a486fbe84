"""Streamed partial images, OpenAI's way, through a real gateway over real HTTP.

The official ``openai`` SDK iterates the events unchanged: previews of the local tiny model
(drawn from its intermediate latents) then the final image, for generations and edits, at the
root and under Nebul's prefix; an HTTP provider gives the completed event only. Bad input is
a plain 4xx in the client's dialect; a failure after the stream began is an ``error`` event;
a client that hangs up has its queued request dropped. The official JS SDK too
(tests/js/stream.mjs, run with node).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from adapters.local import LocalAdapter
from gateway.request import streams
from schemas.dialect import image_dimensions, sniff_image
from tests.emulators import EmulatorServer, solid_png
from tests.emulators.control import Fault
from tests.fixtures import engine_of
from tests.integration.conftest import provider_entries
from tests.integration.gateway_server import GatewayServer, gateway_config
from tests.local_backend.engines import held_device

pytestmark = pytest.mark.usefixtures("started_adapters")  # tests/fixtures.py: engines read
PROMPT = "a lighthouse at dusk"
JS_DIR = Path(__file__).resolve().parents[1] / "js"


class LocalGatewayServer(GatewayServer):
    startup_timeout_s = 60.0  # the local engine loads its models before the gateway listens


@pytest.fixture(scope="module")
def gateway(
    emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[GatewayServer]:
    """The local tiny models (model ``tiny``) and the Melious emulator (model ``flux-schnell``), side by side."""
    local = {"kind": "local", "device": "cpu", "batch_window_ms": 0, "models": {"tiny": {"path": "builtin:tiny-sd"}}}
    models = [
        {"name": "tiny", "targets": [{"provider": "gpu", "model": "tiny"}]},
        {"name": "flux-schnell", "targets": [{"provider": "melious", "model": "flux-schnell"}]},
    ]
    providers = provider_entries(emulators)
    providers["gpu"] = local
    server = LocalGatewayServer(gateway_config(providers, models, tmp_path_factory.mktemp("store"))).start()
    yield server
    server.stop()


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="sk-anything", base_url=gateway.url + "/v1", max_retries=0, timeout=60) as sdk:
        yield sdk


def decoded(b64: str) -> bytes:
    data = base64.b64decode(b64)
    assert sniff_image(data) == "image/png"
    return data


def test_sdk_generate_streams_partials_then_completed(client: openai.OpenAI) -> None:
    events = list(client.images.generate(model="tiny", prompt=PROMPT, size="64x64", stream=True, partial_images=2))
    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    partials, completed = events[:-1], events[-1]
    assert [event.partial_image_index for event in partials] == [0, 1]  # type: ignore[union-attr]
    for event in events:
        assert image_dimensions(decoded(event.b64_json)) == (64, 64)
        # OpenAI's event schema has four sizes (1024x1024, 1536x1024, 1024x1536, auto): 64x64 is said as "auto".
        assert (event.size, event.output_format, event.quality, event.background) == ("auto", "png", "auto", "auto")
        assert event.created_at > 0
    assert completed.usage.total_tokens == 0  # type: ignore[union-attr]
    # The previews are the latents' approximation, the final image the VAE's full decode: not the same picture.
    assert decoded(partials[-1].b64_json) != decoded(completed.b64_json)


def test_partial_images_zero_is_the_completed_event_alone(client: openai.OpenAI) -> None:
    events = list(client.images.generate(model="tiny", prompt=PROMPT, size="128x64", stream=True, partial_images=0))
    assert [event.type for event in events] == ["image_generation.completed"]
    assert image_dimensions(decoded(events[0].b64_json)) == (128, 64)


def test_sdk_edit_streams(client: openai.OpenAI) -> None:
    png = solid_png(64, 64, (10, 200, 30))
    events = list(
        client.images.edit(
            model="tiny", image=("in.png", png, "image/png"), prompt="add a hat", stream=True, partial_images=1
        )
    )
    assert [event.type for event in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert events[0].partial_image_index == 0  # type: ignore[union-attr]
    for event in events:
        assert image_dimensions(decoded(event.b64_json)) == (64, 64)


def test_nebul_prefix_streams(gateway: GatewayServer) -> None:
    with openai.OpenAI(api_key="sk-x", base_url=gateway.url + "/nebul/v1", max_retries=0, timeout=60) as sdk:
        events = list(sdk.images.generate(model="tiny", prompt=PROMPT, size="64x64", stream=True, partial_images=1))
    assert [event.type for event in events] == ["image_generation.partial_image", "image_generation.completed"]


def test_http_provider_gives_the_completed_event_only(
    client: openai.OpenAI, emulators: dict[str, EmulatorServer]
) -> None:
    events = list(
        client.images.generate(
            model="flux-schnell", prompt=PROMPT, size="1024x1024", quality="high", stream=True, partial_images=3
        )
    )
    assert [event.type for event in events] == ["image_generation.completed"]
    assert image_dimensions(base64.b64decode(events[0].b64_json)) == (1024, 1024)
    assert (events[0].size, events[0].quality, events[0].output_format) == ("1024x1024", "high", "png")  # as drawn
    assert emulators["melious"].emulator.calls[-1].path == "/v1/images/generations"


def test_stream_answer_is_server_sent_events(gateway: GatewayServer, http: httpx.Client) -> None:
    """The wire: ``event:`` and ``data:`` lines, each event ended by a blank line; the request id echoed."""
    body = {"model": "tiny", "prompt": PROMPT, "size": "64x64", "stream": True, "partial_images": 1}
    answer = http.post(gateway.url + "/v1/images/generations", json=body, headers={"X-Request-ID": "stream-1"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["x-request-id"] == "stream-1"
    blocks = [block for block in answer.text.split("\n\n") if block]
    kinds = []
    for block in blocks:
        event_line, data_line = block.split("\n")
        kind = event_line.removeprefix("event: ")
        assert json.loads(data_line.removeprefix("data: "))["type"] == kind
        kinds.append(kind)
    assert kinds == ["image_generation.partial_image", "image_generation.completed"]


def test_stream_metrics(gateway: GatewayServer, http: httpx.Client, client: openai.OpenAI) -> None:
    def completed() -> float:
        for line in http.get(gateway.url + "/metrics").text.splitlines():
            if line.startswith('image_gateway_stream_events_total{event="completed"}'):
                return float(line.split()[-1])
        return 0.0

    before = completed()
    list(client.images.generate(model="tiny", prompt=PROMPT, size="64x64", stream=True))
    assert completed() == before + 1
    assert "image_gateway_streams_open 0.0" in http.get(gateway.url + "/metrics").text


# --- bad input: a plain JSON 4xx in the client's own dialect, before any event ---

BAD: dict[str, tuple[str, dict[str, Any], str]] = {
    "stream with n>1": ("/v1/images/generations", {"model": "tiny", "prompt": "x", "stream": True, "n": 2}, "n"),
    "partial_images 4": (
        "/v1/images/generations",
        {"model": "tiny", "prompt": "x", "stream": True, "partial_images": 4},
        "partial_images",
    ),
    "partial_images -1": (
        "/nebul/v1/images/generations",
        {"model": "tiny", "prompt": "x", "stream": True, "partial_images": -1},
        "partial_images",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_stream_input_openai_family(case: str, gateway: GatewayServer, http: httpx.Client) -> None:
    path, body, param = BAD[case]
    answer = http.post(gateway.url + path, json=body)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()["error"]
    assert error["param"] == param
    assert error["code"] == "invalid_value"
    assert param in error["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/melious/v1/images/generations", {"model": "tiny", "prompt": "x", "stream": True}),
        ("/pomelo/api/v1/midjourney/generate", {"prompt": "x", "stream": True}),
        ("/pomelo/api/v1/flux.1", {"prompt": "x", "stream": True}),
        ("/nebulablock/api/v1/images/generation", {"model": "tiny", "prompt": "x", "stream": True}),
        ("/nebulablock/v1/images/generate", {"model": "tiny", "prompt": "x", "stream": True}),
    ],
)
def test_stream_refused_where_the_dialect_has_none(path: str, body: dict[str, Any], gateway: GatewayServer) -> None:
    with httpx.Client(timeout=30) as http:
        answer = http.post(gateway.url + path, json=body)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert "`stream` is not supported" in answer.text


def test_stream_refused_on_variations(gateway: GatewayServer, http: httpx.Client) -> None:
    png = solid_png(64, 64, (1, 2, 3))
    answer = http.post(
        gateway.url + "/v1/images/variations",
        data={"model": "tiny", "stream": "true"},
        files={"image": ("in.png", png, "image/png")},
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "stream"


def test_stream_false_answers_json_as_before(client: openai.OpenAI) -> None:
    result = client.images.generate(model="tiny", prompt=PROMPT, size="64x64", response_format="b64_json")
    assert result.data is not None and result.data[0].b64_json is not None


def test_sdk_refusal_before_the_stream_is_its_error_type(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(model="tiny", prompt=PROMPT, stream=True, n=2)
    assert refused.value.code == "invalid_value"


# --- after the stream began ---


def test_failure_after_start_is_an_error_event(
    client: openai.OpenAI, emulators: dict[str, EmulatorServer], http: httpx.Client, gateway: GatewayServer
) -> None:
    emulators["melious"].emulator.add_fault(Fault(status=500, message="the upstream broke", times=None))
    with pytest.raises(openai.APIError) as failed:
        list(client.images.generate(model="flux-schnell", prompt=PROMPT, stream=True))
    assert isinstance(failed.value.body, dict)
    assert failed.value.body["code"] == "upstream_error"
    assert failed.value.message
    # On the wire: a 200 stream whose one event is the dialect's error envelope.
    body = {"model": "flux-schnell", "prompt": "x", "stream": True}
    answer = http.post(gateway.url + "/v1/images/generations", json=body)
    assert answer.status_code == 200
    event, data = answer.text.strip().split("\n")
    assert event == "event: error"
    error = json.loads(data.removeprefix("data: "))
    assert error["type"] == "error"
    assert (error["error"]["type"], error["error"]["code"]) == ("server_error", "upstream_error")


def test_client_hang_up_drops_its_queued_generation(
    gateway: GatewayServer, started_adapters: list[LocalAdapter]
) -> None:
    engine = engine_of(started_adapters)
    before = engine.stats()
    body = {"model": "tiny", "prompt": PROMPT, "size": "64x64", "stream": True, "partial_images": 2}
    path = gateway.url + "/v1/images/generations"
    with (
        held_device(engine) as hold,
        httpx.Client(timeout=30) as first,
        httpx.Client(timeout=30) as second,
        first.stream("POST", path, json={**body, "prompt": "first"}) as held,
    ):
        assert held.status_code == 200
        assert hold.started.wait(timeout=30), "the first request never reached the device"
        with second.stream("POST", path, json=body) as streamed:
            assert streamed.status_code == 200  # the stream began; its generation is queued behind the first
            deadline = time.monotonic() + 30
            while engine.stats().queue_depth < 1:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.01)
        # the second client hung up: its request leaves the queue
        deadline = time.monotonic() + 30
        while engine.stats().requests_dropped == before.requests_dropped:
            assert time.monotonic() < deadline, "the hung-up request was never dropped"
            time.sleep(0.01)
        hold.release()
        first_events = [line for line in held.iter_lines() if line.startswith("event: ")]
    assert first_events[-1] == "event: image_generation.completed"
    after = engine.stats()
    assert after.requests_dropped == before.requests_dropped + 1
    assert after.images_generated == before.images_generated + 1  # the first request's image only


# --- the official JS SDK ---


def _node_modules() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are needed for the JS SDK test (install Node.js 18 or later)"
    modules = JS_DIR / "node_modules"
    if not (modules / "openai").is_dir():
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(JS_DIR)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert installed.returncode == 0, (
            f"`npm ci --prefix tests/js` failed (is the npm registry reachable?):\n{installed.stderr[-2000:]}"
        )
    return modules


def test_js_sdk_streams(gateway: GatewayServer) -> None:
    _node_modules()
    node = shutil.which("node")
    assert node is not None
    ran = subprocess.run(
        [node, str(JS_DIR / "stream.mjs"), gateway.url + "/v1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert ran.returncode == 0, ran.stderr
    lines = [json.loads(line) for line in ran.stdout.splitlines() if line.strip()]
    assert [line["type"] for line in lines] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    for line in lines:
        assert line["png"] is True and line["bytes"] > 0


def test_openapi_documents_the_streamed_events(gateway: GatewayServer, http: httpx.Client) -> None:
    document = http.get(gateway.url + "/docs/openapi.json").json()
    schemas = document["components"]["schemas"]
    for path in ("/v1/images/generations", "/v1/images/edits", "/nebul/v1/images/generations"):
        content = document["paths"][path]["post"]["responses"]["200"]["content"]
        events = content["text/event-stream"]["schema"]["oneOf"]
        names = [event["$ref"].rsplit("/", 1)[1] for event in events]
        assert names == ["PartialImageEvent", "CompletedEvent", "StreamErrorEvent"]
        assert all(name in schemas for name in names)
        assert "partial_image_index" in schemas["PartialImageEvent"]["properties"]
    for path in ("/v1/images/variations", "/melious/v1/images/generations", "/pomelo/api/v1/flux.1"):
        assert "text/event-stream" not in document["paths"][path]["post"]["responses"]["200"]["content"]


def test_a_slow_generation_keeps_the_stream_alive(
    client: openai.OpenAI, emulators: dict[str, EmulatorServer], gateway: GatewayServer, http: httpx.Client
) -> None:
    """Comment lines while nothing else comes (the SDK skips them), so a proxy's idle timeout never cuts the stream."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(streams, "KEEPALIVE_S", 0.05)  # the gateway runs in this process
        emulators["melious"].emulator.add_fault(Fault(delay=1.0))
        answer = http.post(
            gateway.url + "/v1/images/generations", json={"model": "flux-schnell", "prompt": "x", "stream": True}
        )
        emulators["melious"].emulator.add_fault(Fault(delay=1.0))
        events = list(client.images.generate(model="flux-schnell", prompt="x", stream=True))
    assert answer.text.startswith(": keep-alive\n\n")
    assert answer.text.rstrip().split("\n\n")[-1].startswith("event: image_generation.completed\n")
    assert [event.type for event in events] == ["image_generation.completed"]
