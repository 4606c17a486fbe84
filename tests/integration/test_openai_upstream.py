"""A ``kind: openai`` provider: the gateway in front of an OpenAI-compatible server, over real HTTP.

The server is the OpenAI emulator (tests/emulators/openai.py), which answers as OpenAI's published
document says. Through the gateway: generations (a server answering URLs, one answering base64,
GPT image models that refuse ``response_format``), edits, variations, streamed partial images
forwarded to the official ``openai`` SDK as they come, the documented extensions sent only to a
server that takes them, OpenAI's errors in each client's own dialect, and a fallback on a 5xx.
What the gateway sent is checked against the document's request schemas.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from schemas.dialect import image_dimensions, sniff_image
from tests.conftest import API_KEY
from tests.emulators import EmulatorServer, Fault, solid_png, start_emulator
from tests.emulators.png import colour_for
from tests.integration.conftest import start_gateway
from tests.integration.gateway_server import GatewayServer

SPEC = Path(__file__).resolve().parents[1] / "specs" / "openai-images-openapi.yaml"
PNG = solid_png(256, 256)
PROMPT = "a lighthouse at dusk"


@functools.cache
def request_schema(component: str) -> tuple[Draft202012Validator, frozenset[str]]:
    document = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    registry = Registry().with_resource("urn:oa", Resource.from_contents(document, default_specification=DRAFT202012))
    validator = Draft202012Validator({"$ref": f"urn:oa#/components/schemas/{component}"}, registry=registry)
    return validator, frozenset(document["components"]["schemas"][component]["properties"])


def sent_as_documented(component: str, body: dict[str, Any], extensions: frozenset[str] = frozenset()) -> None:
    """A JSON request the gateway sent holds to the document's schema and names no field it lacks."""
    validator, known = request_schema(component)
    assert set(body) <= known | extensions, set(body) - known
    if component == "CreateImageRequest":
        assert not [error.message for error in validator.iter_errors(body)]


def openai_entry(server: EmulatorServer, **settings: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": server.base_url + "/v1", "api_key": API_KEY, **settings}


@pytest.fixture(scope="module")
def extended() -> Iterator[EmulatorServer]:
    """An OpenAI-compatible server that takes the extensions (as vLLM-Omni's does)."""
    with start_emulator("openai", api_key=API_KEY, extensions=True) as server:
        yield server


@pytest.fixture(scope="module")
def stalling() -> Iterator[EmulatorServer]:
    """An OpenAI-compatible server that waits a long while between the events of a stream."""
    with start_emulator("openai", api_key=API_KEY, event_pause=30.0) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    emulators: dict[str, EmulatorServer],
    extended: EmulatorServer,
    stalling: EmulatorServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayServer]:
    upstream = emulators["openai"]
    once = {"attempts": 1}
    providers = {
        # OpenAI's GPT image models: no response_format (they refuse it), streams, no variations.
        "oa-gpt": openai_entry(
            upstream, response_format=None, stream=True, operations=["generate", "edit"], organization="org-7"
        ),
        "oa-gpt-nostream": openai_entry(upstream, response_format=None),
        "oa-b64": openai_entry(upstream),  # asks for b64_json (the default)
        "oa-url": openai_entry(upstream, response_format="url"),
        "oa-dalle-2-streaming": openai_entry(upstream, stream=True),  # declared to stream: dall-e-2 refuses it
        "oa-dalle-3": openai_entry(upstream, response_format="url", max_n_per_call=1, operations=["generate"]),
        "oa-ext": openai_entry(extended, extensions=True),
        "oa-steps-only": openai_entry(extended, extensions=["steps"], extension_names={"steps": "num_inference_steps"}),
        # Bounds on a stream: events, the bytes of one event, each read.
        "oa-few-events": openai_entry(upstream, response_format=None, stream=True, stream_max_events=2, retry=once),
        "oa-small-events": openai_entry(
            upstream, response_format=None, stream=True, stream_max_event_bytes=1000, retry=once
        ),
        "oa-stalling": openai_entry(stalling, response_format=None, stream=True, timeout={"read": 0.3}, retry=once),
    }
    models = [
        {"name": "gpt", "targets": [{"provider": "oa-gpt", "model": "gpt-image-1"}]},
        {"name": "gpt-nostream", "targets": [{"provider": "oa-gpt-nostream", "model": "gpt-image-1"}]},
        {"name": "dalle", "targets": [{"provider": "oa-b64", "model": "dall-e-2"}]},
        {"name": "dalle-url", "targets": [{"provider": "oa-url", "model": "dall-e-2"}]},
        {"name": "dalle-2-streaming", "targets": [{"provider": "oa-dalle-2-streaming", "model": "dall-e-2"}]},
        {"name": "dalle-3", "targets": [{"provider": "oa-dalle-3", "model": "dall-e-3"}]},
        {"name": "ext", "targets": [{"provider": "oa-ext", "model": "dall-e-2"}]},
        {"name": "plain", "targets": [{"provider": "oa-b64", "model": "dall-e-2"}]},
        {"name": "steps-only", "targets": [{"provider": "oa-steps-only", "model": "dall-e-2"}]},
        {"name": "few-events", "targets": [{"provider": "oa-few-events", "model": "gpt-image-1"}]},
        {"name": "small-events", "targets": [{"provider": "oa-small-events", "model": "gpt-image-1"}]},
        {"name": "stalling", "targets": [{"provider": "oa-stalling", "model": "gpt-image-1"}]},
        {"name": "flux.1", "targets": [{"provider": "oa-ext", "model": "dall-e-2"}]},
        {
            "name": "fallback",
            "targets": [
                {"provider": "oa-b64", "model": "dall-e-2"},
                {"provider": "melious", "model": "flux-schnell"},
            ],
        },
    ]
    server = start_gateway(emulators, models, tmp_path_factory.mktemp("store"), extra_providers=providers)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_servers(extended: EmulatorServer, stalling: EmulatorServer) -> None:
    """This module's own servers start each test with no calls (the session's are reset by conftest)."""
    extended.emulator.reset()
    stalling.emulator.reset()


@pytest.fixture
def upstream(emulators: dict[str, EmulatorServer]) -> EmulatorServer:
    return emulators["openai"]


@pytest.fixture
def sdk(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="sk-anything", base_url=gateway.url + "/v1", max_retries=0, timeout=60) as client:
        yield client


def only_call(server: EmulatorServer) -> Any:
    calls = server.emulator.calls
    assert len(calls) == 1, [(call.path, call.status) for call in calls]
    return calls[0]


def png_of(b64: str) -> bytes:
    data = base64.b64decode(b64)
    assert sniff_image(data) == "image/png"
    return data


# --------------------------------------------------------------------------- generations


def test_gpt_image_generation_sends_no_response_format_and_reads_base64(
    sdk: openai.OpenAI, upstream: EmulatorServer
) -> None:
    answer = sdk.images.generate(model="gpt", prompt=PROMPT, size="1536x1024", response_format="b64_json")
    assert image_dimensions(png_of(answer.data[0].b64_json or "")) == (1536, 1024)
    call = only_call(upstream)
    assert call.path == "/v1/images/generations" and call.status == 200
    assert call.body["model"] == "gpt-image-1" and "response_format" not in call.body
    assert call.headers["openai-organization"] == "org-7"
    sent_as_documented("CreateImageRequest", call.body)


def test_a_url_answer_is_fetched_for_a_base64_client(sdk: openai.OpenAI, upstream: EmulatorServer) -> None:
    answer = sdk.images.generate(model="dalle-url", prompt=PROMPT, size="256x256", response_format="b64_json")
    assert image_dimensions(png_of(answer.data[0].b64_json or "")) == (256, 256)
    generation = upstream.emulator.calls[0]
    assert generation.body["response_format"] == "url" and generation.body["size"] == "256x256"
    sent_as_documented("CreateImageRequest", generation.body)


def test_a_url_answer_is_passed_on_to_a_url_client(sdk: openai.OpenAI, upstream: EmulatorServer) -> None:
    answer = sdk.images.generate(model="dalle-url", prompt=PROMPT, size="512x512", response_format="url")
    url = answer.data[0].url or ""
    assert url.startswith(upstream.base_url + "/files/")
    assert image_dimensions(httpx.get(url).content) == (512, 512)


def test_a_base64_answer_is_stored_for_a_url_client(
    sdk: openai.OpenAI, upstream: EmulatorServer, gateway: GatewayServer
) -> None:
    answer = sdk.images.generate(model="dalle", prompt=PROMPT, size="256x256", n=2, response_format="url")
    assert len(answer.data) == 2
    for image in answer.data:
        assert (image.url or "").startswith(gateway.url)
        assert image_dimensions(httpx.get(image.url or "").content) == (256, 256)
    call = only_call(upstream)
    assert call.body["response_format"] == "b64_json" and call.body["n"] == 2


def test_a_server_that_makes_one_image_a_call_gets_one_call_per_image(
    gateway: GatewayServer, upstream: EmulatorServer
) -> None:
    body = {"model": "dalle-3", "prompt": PROMPT, "n": 2, "response_format": "url"}
    answer = httpx.post(gateway.url + "/v1/images/generations", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]) == 2
    calls = upstream.emulator.calls
    assert [(call.body["model"], call.body.get("n"), call.status) for call in calls] == [("dall-e-3", 1, 200)] * 2


# --------------------------------------------------------------------------- edits and variations


def test_edit_sends_images_and_mask_as_multipart(sdk: openai.OpenAI, upstream: EmulatorServer) -> None:
    answer = sdk.images.edit(
        model="gpt",
        prompt=PROMPT,
        image=[("a.png", PNG, "image/png"), ("b.png", PNG, "image/png")],
        mask=("m.png", PNG, "image/png"),
        response_format="b64_json",
    )
    assert image_dimensions(png_of(answer.data[0].b64_json or "")) == (1024, 1024)
    call = only_call(upstream)
    assert call.path == "/v1/images/edits" and call.status == 200
    assert [part["size"] for part in call.body["image[]"]] == [len(PNG), len(PNG)]  # several: image[], as documented
    assert call.body["mask"]["size"] == len(PNG)
    _, known = request_schema("CreateImageEditRequest")
    assert set(call.body) - {"image[]"} <= known
    assert "response_format" not in call.body


def test_variation(gateway: GatewayServer, upstream: EmulatorServer) -> None:
    files = [("image", ("a.png", PNG, "image/png"))]
    data = {"model": "dalle", "n": "2", "size": "256x256", "response_format": "b64_json"}
    answer = httpx.post(gateway.url + "/v1/images/variations", data=data, files=files, timeout=30)
    assert answer.status_code == 200, answer.text
    assert [image_dimensions(png_of(item["b64_json"])) for item in answer.json()["data"]] == [(256, 256)] * 2
    call = only_call(upstream)
    assert call.path == "/v1/images/variations" and call.status == 200
    assert call.body["image"]["size"] == len(PNG) and call.body["n"] == "2"
    _, known = request_schema("CreateImageVariationRequest")
    assert set(call.body) <= known


def test_an_operation_the_server_does_not_declare_is_refused_without_a_call(
    sdk: openai.OpenAI, upstream: EmulatorServer
) -> None:
    files = [("image", ("a.png", PNG, "image/png"))]
    answer = httpx.post(f"{sdk.base_url}images/variations", data={"model": "gpt"}, files=files, timeout=30)
    assert answer.status_code == 400, answer.text
    assert upstream.emulator.calls == []


# --------------------------------------------------------------------------- streams


def test_partial_images_are_forwarded_to_the_stream_client(sdk: openai.OpenAI, upstream: EmulatorServer) -> None:
    events = list(sdk.images.generate(model="gpt", prompt=PROMPT, stream=True, partial_images=2))
    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    # The previews are the upstream's own, passed on: the emulator draws them from the prompt and their index.
    for index, event in enumerate(events[:2]):
        assert png_of(event.b64_json) == solid_png(1024, 1024, colour_for(PROMPT, "partial", index))
        assert event.partial_image_index == index  # type: ignore[union-attr]
    assert image_dimensions(png_of(events[2].b64_json)) == (1024, 1024)
    call = only_call(upstream)
    assert call.body["stream"] is True and call.body["partial_images"] == 2
    assert call.headers["accept"] == "text/event-stream" and call.request_id is not None
    sent_as_documented("CreateImageRequest", call.body)


def test_an_edit_streams_too(sdk: openai.OpenAI, upstream: EmulatorServer) -> None:
    stream = sdk.images.edit(
        model="gpt", prompt=PROMPT, image=("a.png", PNG, "image/png"), stream=True, partial_images=1
    )
    assert [event.type for event in stream] == ["image_edit.partial_image", "image_edit.completed"]
    assert only_call(upstream).body["stream"] == "true"


def test_a_server_not_declared_to_stream_gives_the_completed_event_alone(
    sdk: openai.OpenAI, upstream: EmulatorServer
) -> None:
    events = list(sdk.images.generate(model="gpt-nostream", prompt=PROMPT, stream=True, partial_images=2))
    assert [event.type for event in events] == ["image_generation.completed"]
    assert "stream" not in only_call(upstream).body


def test_an_upstream_error_event_becomes_the_clients_error_event(sdk: openai.OpenAI, upstream: EmulatorServer) -> None:
    seen: list[str] = []
    with pytest.raises(openai.APIError):
        for event in sdk.images.generate(model="gpt", prompt="explode", stream=True, partial_images=2):
            seen.append(event.type)
    assert seen == ["image_generation.partial_image"]  # retried upstream, but each preview reaches the client once


def stream_error(gateway: GatewayServer, model: str) -> dict[str, Any]:
    """The ``error`` event a /v1 stream client gets, after whatever previews came before it."""
    body = {"model": model, "prompt": PROMPT, "stream": True, "partial_images": 3}
    answer = httpx.post(gateway.url + "/v1/images/generations", json=body, timeout=60)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    blocks = [block for block in answer.text.split("\n\n") if block.startswith("event: ")]
    assert blocks and blocks[-1].startswith("event: error\n"), answer.text[:300]
    return dict(json.loads(blocks[-1].split("data: ", 1)[1])["error"])


@pytest.mark.parametrize("model", ["few-events", "small-events"])
def test_a_stream_past_its_bounds_is_an_upstream_error(
    gateway: GatewayServer, upstream: EmulatorServer, model: str
) -> None:
    assert stream_error(gateway, model)["code"] == "upstream_error"
    assert len(upstream.emulator.calls) == 1


def test_a_streams_refusal_before_any_event_is_the_clients_error(
    gateway: GatewayServer, upstream: EmulatorServer
) -> None:
    assert stream_error(gateway, "dalle-2-streaming")["code"] == "invalid_value"  # invalid_request, not retried
    assert [call.status for call in upstream.emulator.calls] == [400]


def test_a_stream_that_stalls_is_an_upstream_timeout(gateway: GatewayServer, stalling: EmulatorServer) -> None:
    assert stream_error(gateway, "stalling")["code"] == "timeout"
    assert len(stalling.emulator.calls) == 1


# --------------------------------------------------------------------------- extensions


def test_extensions_go_to_a_server_that_takes_them_under_its_names(
    gateway: GatewayServer, extended: EmulatorServer
) -> None:
    body = {"model": "ext", "prompt": PROMPT, "num_steps": 12, "guidance_scale": 4.5, "negative_prompt": "blur"}
    body |= {"width": 256, "height": 256}
    answer = httpx.post(gateway.url + "/api/v1/images/generation", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    sent = only_call(extended).body
    assert (sent["num_inference_steps"], sent["guidance_scale"], sent["negative_prompt"]) == (12, 4.5, "blur")
    sent_as_documented(
        "CreateImageRequest", sent, frozenset({"num_inference_steps", "guidance_scale", "negative_prompt"})
    )
    seeded = httpx.post(gateway.url + "/api/v1/flux.1", json={"prompt": PROMPT, "seed": 7}, timeout=30)
    assert seeded.status_code == 200, seeded.text
    assert extended.emulator.calls[-1].body["seed"] == 7


def test_only_the_declared_extensions_are_sent(gateway: GatewayServer, extended: EmulatorServer) -> None:
    body = {"model": "steps-only", "prompt": PROMPT, "num_steps": 9, "negative_prompt": "blur", "width": 256}
    answer = httpx.post(gateway.url + "/api/v1/images/generation", json={**body, "height": 256}, timeout=30)
    assert answer.status_code == 200, answer.text
    sent = only_call(extended).body
    assert sent["num_inference_steps"] == 9 and "negative_prompt" not in sent


def test_extensions_are_left_out_for_a_server_that_does_not_take_them(
    gateway: GatewayServer, upstream: EmulatorServer
) -> None:
    body = {"model": "plain", "prompt": PROMPT, "num_steps": 12, "negative_prompt": "blur", "width": 256, "height": 256}
    answer = httpx.post(gateway.url + "/api/v1/images/generation", json=body, timeout=30)
    assert answer.status_code == 200, answer.text  # OpenAI refuses an unknown parameter: none was sent
    sent = only_call(upstream).body
    assert not {"num_inference_steps", "negative_prompt", "seed"} & set(sent)


# --------------------------------------------------------------------------- errors and fallback


def test_rate_limit_reaches_a_melious_client_in_its_envelope(gateway: GatewayServer, upstream: EmulatorServer) -> None:
    upstream.emulator.add_fault(Fault(status=429, times=None))
    answer = httpx.post(gateway.url + "/melious/v1/images/generations", json={"model": "dalle", "prompt": PROMPT})
    upstream.emulator.clear_faults()
    assert answer.status_code == 429
    assert answer.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"


def test_insufficient_quota_is_not_a_rate_limit_and_is_not_retried(
    gateway: GatewayServer, upstream: EmulatorServer
) -> None:
    upstream.emulator.add_fault(Fault(status=429, code="insufficient_quota", times=None))
    answer = httpx.post(gateway.url + "/melious/v1/images/generations", json={"model": "dalle", "prompt": PROMPT})
    upstream.emulator.clear_faults()
    assert answer.status_code == 402
    assert answer.json()["error"]["code"] == "BILLING_INSUFFICIENT_ENERGY"
    assert len(upstream.emulator.calls) == 1


@pytest.mark.parametrize(
    ("model", "prompt", "size", "code"),
    [
        ("gpt", "forbidden", "1024x1024", "content_policy_violation"),  # moderation_blocked upstream
        ("dalle", "forbidden", "256x256", "content_policy_violation"),  # content_policy_violation upstream
        ("gpt", PROMPT, "300x300", "invalid_size"),  # invalid_value, param size
    ],
)
def test_client_faults_reach_a_nebul_client_in_its_envelope(
    gateway: GatewayServer, upstream: EmulatorServer, model: str, prompt: str, size: str, code: str
) -> None:
    body = {"model": model, "prompt": prompt, "size": size}
    answer = httpx.post(gateway.url + "/nebul/v1/images/generations", json=body, timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == code
    assert len(upstream.emulator.calls) == 1  # a client's fault is not retried


def test_a_5xx_falls_back_to_the_next_target(
    sdk: openai.OpenAI, upstream: EmulatorServer, emulators: dict[str, EmulatorServer]
) -> None:
    upstream.emulator.add_fault(Fault(status=500, times=None))
    answer = sdk.images.generate(model="fallback", prompt=PROMPT, size="512x512", response_format="b64_json")
    upstream.emulator.clear_faults()
    assert png_of(answer.data[0].b64_json or "")
    assert [call.status for call in upstream.emulator.calls] == [500, 500, 500]  # every attempt, then the next
    assert [call.status for call in emulators["melious"].emulator.calls] == [200]
