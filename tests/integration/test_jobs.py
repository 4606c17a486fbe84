"""Async jobs over real HTTP: ``Prefer: respond-async`` in each dialect, polling, events, cancel, keys.

Jobs live in the real Redis (a key prefix of their own) or in the process: the dialect tests
run on both stores; the rest on Redis, as replicas would.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis

from gateway.admission.auth import hash_key
from schemas.dialect import image_dimensions
from tests.emulators import EmulatorServer, Fault, solid_png
from tests.integration.conftest import start_gateway
from tests.integration.gateway_server import GatewayServer
from tests.redis_support import require_shared_redis
from tests.servers import free_port

KEYS = {"alice": "sk-alice-jobs-0123456789", "bob": "sk-bob-jobs-0123456789"}
PROMPT = "a lighthouse in a storm"
MODELS = [
    {"name": "flux-schnell", "targets": [{"provider": "melious", "model": "flux-schnell"}]},
    {"name": "kontext", "targets": [{"provider": "nebul", "model": "black-forest-labs/FLUX.1-Kontext-dev"}]},
    {"name": "5", "targets": [{"provider": "pomelo-midjourney", "model": "5"}]},
    {"name": "schnell", "targets": [{"provider": "nebulablock-v1", "model": "black-forest-labs/FLUX.1-schnell"}]},
]
ASYNC = {"Prefer": "respond-async"}


def bearer(name: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def auth_section() -> dict[str, Any]:
    return {"keys": [{"name": name, "hash": hash_key(key)} for name, key in KEYS.items()]}


def start(emulators: dict[str, EmulatorServer], store: Path, jobs_in: str, **jobs: Any) -> tuple[GatewayServer, str]:
    prefix = f"igw-jobs-{uuid.uuid4().hex[:8]}:"
    sections: dict[str, Any] = {"auth": auth_section(), "jobs": {"claim_after_s": 5, **jobs}}
    if jobs_in == "redis":
        sections["redis"] = {"url": require_shared_redis(), "key_prefix": prefix}
    return start_gateway(emulators, MODELS, store, **sections), prefix


def drop_keys(prefix: str) -> None:
    shared = redis.Redis.from_url(require_shared_redis())
    for key in shared.scan_iter(f"{prefix}*"):
        shared.delete(key)


@pytest.fixture(scope="module", params=["redis", "memory"])
def jobs_gateway(
    request: pytest.FixtureRequest, emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    server, prefix = start(emulators, tmp_path_factory.mktemp("store"), request.param)
    yield server
    server.stop()
    drop_keys(prefix)


@pytest.fixture(scope="module")
def redis_gateway(
    emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    server, prefix = start(emulators, tmp_path_factory.mktemp("store"), "redis", consumers=1)
    yield server
    server.stop()
    drop_keys(prefix)


def poll(http: httpx.Client, url: str, until: Callable[[dict[str, Any]], bool], who: str = "alice") -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        answer = http.get(url, headers=bearer(who))
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if until(body):
            return body
        assert time.monotonic() < deadline, f"the job never got there: {body}"
        time.sleep(0.05)


def ended(body: dict[str, Any]) -> bool:
    return body["status"] in ("succeeded", "failed", "canceled")


def submit(
    http: httpx.Client, server: GatewayServer, path: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.Response:
    return http.post(server.url + path, headers={**bearer(), **ASYNC, **(headers or {})}, **kwargs)


def accepted(answer: httpx.Response) -> str:
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert set(body) == {"id", "status", "created_at"}
    assert body["status"] == "queued" and isinstance(body["created_at"], int)
    assert answer.headers["location"] == f"/v1/jobs/{body['id']}"
    assert answer.headers["preference-applied"] == "respond-async"
    assert len(body["id"]) >= 32  # secrets.token_urlsafe(24)
    return str(body["id"])


# path, body, and where the image is in the dialect's answer
DIALECTS: dict[str, tuple[str, dict[str, Any], Callable[[dict[str, Any]], tuple[str, str]]]] = {
    "melious": (
        "/melious/v1/images/generations",
        {"model": "flux-schnell", "prompt": PROMPT, "size": "512x512"},
        lambda b: ("url", b["data"][0]["url"]),
    ),
    "nebul": (
        "/nebul/v1/images/generations",
        {"model": "kontext", "prompt": PROMPT, "size": "512x512", "response_format": "b64_json"},
        lambda b: ("b64", b["data"][0]["b64_json"]),
    ),
    "pomelo": (
        "/pomelo/api/v1/midjourney/generate",
        {"prompt": PROMPT, "model": "5", "width": 512, "height": 512, "num_outputs": 1},
        lambda b: ("url", b["images"][0]["url"]),
    ),
    "nebulablock": (
        "/nebulablock/v1/images/generate",
        {"model": "schnell", "prompt": PROMPT, "n": 1, "size": "512x512"},
        lambda b: ("url", b["data"]["images"][0]["url"]),
    ),
}


def image_of(http: httpx.Client, form: str, pointer: str) -> bytes:
    if form == "b64":
        return base64.b64decode(pointer)
    fetched = http.get(pointer)
    assert fetched.status_code == 200, fetched.text
    return fetched.content


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_job_in_each_dialect_answers_what_the_plain_call_would(
    jobs_gateway: GatewayServer, http: httpx.Client, dialect: str
) -> None:
    path, body, pointer = DIALECTS[dialect]
    plain = http.post(jobs_gateway.url + path, json=body, headers=bearer())
    assert plain.status_code == 200, plain.text
    job_id = accepted(submit(http, jobs_gateway, path, json=body))
    events = sse(http, f"{jobs_gateway.url}/v1/jobs/{job_id}/events")
    job = poll(http, f"{jobs_gateway.url}/v1/jobs/{job_id}", ended)
    assert job["status"] == "succeeded", job
    assert events[-1] == ("result", job)  # the events end with the job's whole body
    assert job["id"] == job_id and job["updated_at"] >= job["created_at"]
    assert "error" not in job
    result = job["result"]
    assert _shape(result) == _shape(plain.json())  # the same answer, field for field
    form, found = pointer(result)
    assert image_dimensions(image_of(http, form, found)) == (512, 512)


def _shape(value: Any) -> Any:
    """The keys and types of an answer, without its values (ids, times and images differ per call)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__


def test_a_multipart_edit_as_a_job(jobs_gateway: GatewayServer, http: httpx.Client) -> None:
    files = {"image": ("in.png", solid_png(64, 64), "image/png")}
    data = {"model": "kontext", "prompt": PROMPT, "size": "512x512", "response_format": "b64_json"}
    job_id = accepted(submit(http, jobs_gateway, "/nebul/v1/images/edits", data=data, files=files))
    job = poll(http, f"{jobs_gateway.url}/v1/jobs/{job_id}", ended)
    assert job["status"] == "succeeded", job
    assert image_dimensions(base64.b64decode(job["result"]["data"][0]["b64_json"])) == (512, 512)


def test_a_failed_job_holds_the_dialects_error(
    redis_gateway: GatewayServer, http: httpx.Client, fresh_emulators: dict[str, EmulatorServer]
) -> None:
    fresh_emulators["pomelo"].emulator.add_fault(Fault(status=400, message="the prompt is not allowed"))
    path, body, _ = DIALECTS["pomelo"]
    job_id = accepted(submit(http, redis_gateway, path, json=body))
    job = poll(http, f"{redis_gateway.url}/v1/jobs/{job_id}", ended)
    assert job["status"] == "failed" and "result" not in job
    plain_error = http.post(redis_gateway.url + path, json={**body, "model": "no-such-model"}, headers=bearer()).json()
    assert set(job["error"]) == set(plain_error)  # Pomelo's own envelope, not OpenAI's


def test_refusals_before_generation_stay_synchronous(redis_gateway: GatewayServer, http: httpx.Client) -> None:
    path, body, _ = DIALECTS["melious"]
    unauthorized = http.post(redis_gateway.url + path, json=body, headers=ASYNC)
    assert unauthorized.status_code == 401
    unknown_model = submit(http, redis_gateway, path, json={**body, "model": "nope"})
    assert unknown_model.status_code == 404 and "location" not in unknown_model.headers
    bad_body = submit(http, redis_gateway, path, content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_body.status_code == 400


MALFORMED = [
    "respond-async, wait=soon",
    "respond-async, wait=-1",
    "respond-async, wait",
    'respond-async; foo="unclosed',
    "respond-async, =1",
    "respond-async wait=1",
    "@respond-async",
]


@pytest.mark.parametrize("prefer", MALFORMED)
@pytest.mark.parametrize("dialect", ["melious", "pomelo", "nebulablock"])
def test_a_malformed_prefer_is_a_400_in_the_dialect(
    redis_gateway: GatewayServer, http: httpx.Client, dialect: str, prefer: str
) -> None:
    path, body, _ = DIALECTS[dialect]
    answer = http.post(redis_gateway.url + path, json=body, headers={**bearer(), "Prefer": prefer})
    assert answer.status_code == 400, answer.text
    plain_error = http.post(redis_gateway.url + path, json={**body, "model": "no-such-model"}, headers=bearer())
    assert set(answer.json()) == set(plain_error.json())
    assert "Prefer" in answer.text


@pytest.mark.parametrize(
    "prefer",
    [
        ["RESPOND-ASYNC"],
        ["return=minimal, respond-async"],
        ['foo="a, b; c", respond-async ; x=1'],
        ["handling=lenient", "respond-async"],  # two headers are one list
        ["respond-async, wait=0"],
    ],
)
def test_prefer_is_parsed_by_the_rfc(redis_gateway: GatewayServer, http: httpx.Client, prefer: list[str]) -> None:
    path, body, _ = DIALECTS["melious"]
    headers = [("Authorization", f"Bearer {KEYS['alice']}"), *(("Prefer", value) for value in prefer)]
    answer = http.post(redis_gateway.url + path, json=body, headers=headers)
    accepted(answer)


def test_no_respond_async_is_the_plain_call(redis_gateway: GatewayServer, http: httpx.Client) -> None:
    path, body, _ = DIALECTS["melious"]
    answer = http.post(redis_gateway.url + path, json=body, headers={**bearer(), "Prefer": "return=minimal, wait=5"})
    assert answer.status_code == 200 and "preference-applied" not in answer.headers
    assert answer.json()["data"][0]["url"]


def test_wait_answers_the_plain_body_when_the_job_ends_in_time(
    redis_gateway: GatewayServer, http: httpx.Client
) -> None:
    path, body, _ = DIALECTS["nebulablock"]
    answer = submit(http, redis_gateway, path, json=body, headers={"Prefer": "respond-async, wait=20"})
    assert answer.status_code == 200, answer.text
    assert "preference-applied" not in answer.headers and "location" not in answer.headers
    assert answer.headers["x-gateway-provider"] == "nebulablock-v1"
    assert answer.json()["data"]["images"][0]["url"]


def test_wait_answers_the_plain_error_when_the_job_fails_in_time(
    redis_gateway: GatewayServer, http: httpx.Client, fresh_emulators: dict[str, EmulatorServer]
) -> None:
    fresh_emulators["melious"].emulator.add_fault(Fault(status=400, message="bad prompt"))
    path, body, _ = DIALECTS["melious"]
    answer = submit(http, redis_gateway, path, json=body, headers={"Prefer": "respond-async, wait=20"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["message"]


def test_wait_gives_a_202_when_the_job_is_slower(
    redis_gateway: GatewayServer, http: httpx.Client, fresh_emulators: dict[str, EmulatorServer]
) -> None:
    fresh_emulators["melious"].emulator.add_fault(Fault(delay=4))
    path, body, _ = DIALECTS["melious"]
    job_id = accepted(submit(http, redis_gateway, path, json=body, headers={"Prefer": "respond-async, wait=1"}))
    job = poll(http, f"{redis_gateway.url}/v1/jobs/{job_id}", ended)
    assert job["status"] == "succeeded"


def test_a_job_is_visible_only_to_its_key(redis_gateway: GatewayServer, http: httpx.Client) -> None:
    path, body, _ = DIALECTS["melious"]
    job_id = accepted(submit(http, redis_gateway, path, json=body))
    mine = http.get(f"{redis_gateway.url}/v1/jobs/{job_id}", headers=bearer("alice"))
    assert mine.status_code == 200
    foreign = http.get(f"{redis_gateway.url}/v1/jobs/{job_id}", headers=bearer("bob"))
    unknown = http.get(f"{redis_gateway.url}/v1/jobs/{'x' * 32}", headers=bearer("bob"))
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json() == unknown.json()
    assert foreign.json()["error"]["message"]  # the OpenAI envelope
    for route in (f"/v1/jobs/{job_id}/events",):
        assert http.get(redis_gateway.url + route, headers=bearer("bob")).status_code == 404
    assert http.delete(f"{redis_gateway.url}/v1/jobs/{job_id}", headers=bearer("bob")).status_code == 404
    assert http.get(f"{redis_gateway.url}/v1/jobs/{job_id}").status_code == 401


def sse(http: httpx.Client, url: str) -> list[tuple[str, dict[str, Any]]]:
    """Every event of a server-sent event stream, read as it comes, until the server ends it."""
    events: list[tuple[str, dict[str, Any]]] = []
    kind, data = "message", ""
    with http.stream("GET", url, headers=bearer()) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
            elif line == "" and data:
                events.append((kind, msgspec.json.decode(data)))
                kind, data = "message", ""
    return events


def test_events_follow_the_job_to_its_result(
    redis_gateway: GatewayServer, http: httpx.Client, fresh_emulators: dict[str, EmulatorServer]
) -> None:
    fresh_emulators["melious"].emulator.add_fault(Fault(delay=1.5))
    path, body, _ = DIALECTS["melious"]
    job_id = accepted(submit(http, redis_gateway, path, json=body))
    events = sse(http, f"{redis_gateway.url}/v1/jobs/{job_id}/events")
    kinds = [kind for kind, _ in events]
    statuses = [data["status"] for kind, data in events if kind == "status"]
    assert "running" in statuses and statuses[-1] == "succeeded", events
    assert kinds[-1] == "result"
    final = events[-1][1]
    assert final["id"] == job_id and final["status"] == "succeeded"
    assert final["result"]["data"][0]["url"]


def test_cancel_a_running_job(
    redis_gateway: GatewayServer, http: httpx.Client, fresh_emulators: dict[str, EmulatorServer]
) -> None:
    fresh_emulators["melious"].emulator.add_fault(Fault(delay=6))
    path, body, _ = DIALECTS["melious"]
    job_id = accepted(submit(http, redis_gateway, path, json=body))
    url = f"{redis_gateway.url}/v1/jobs/{job_id}"
    poll(http, url, lambda job: job["status"] == "running")
    canceled = http.delete(url, headers=bearer())
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    time.sleep(6.5)  # past the upstream's answer: the job was stopped, not finished
    job = http.get(url, headers=bearer()).json()
    assert job["status"] == "canceled" and "result" not in job
    again = http.delete(url, headers=bearer())
    assert again.status_code == 409 and again.json()["error"]["message"]


def test_a_canceled_queued_job_never_runs(
    redis_gateway: GatewayServer, http: httpx.Client, fresh_emulators: dict[str, EmulatorServer]
) -> None:
    melious = fresh_emulators["melious"].emulator
    melious.add_fault(Fault(delay=4))
    path, body, _ = DIALECTS["melious"]
    first = accepted(submit(http, redis_gateway, path, json=body))  # one consumer: the second waits
    poll(http, f"{redis_gateway.url}/v1/jobs/{first}", lambda job: job["status"] == "running")
    second = accepted(submit(http, redis_gateway, path, json={**body, "prompt": "the second"}))
    assert http.delete(f"{redis_gateway.url}/v1/jobs/{second}", headers=bearer()).json()["status"] == "canceled"
    poll(http, f"{redis_gateway.url}/v1/jobs/{first}", ended)
    time.sleep(1)  # the consumer has taken the canceled one from the queue by now
    assert [call.body.get("prompt") for call in melious.calls] == [PROMPT]
    assert http.get(f"{redis_gateway.url}/v1/jobs/{second}", headers=bearer()).json()["status"] == "canceled"


def test_job_metrics_and_log_lines(redis_gateway: GatewayServer, http: httpx.Client) -> None:
    path, body, _ = DIALECTS["melious"]
    job_id = accepted(submit(http, redis_gateway, path, json=body))
    poll(http, f"{redis_gateway.url}/v1/jobs/{job_id}", ended)
    exposition = http.get(redis_gateway.url + "/metrics").text
    assert 'image_gateway_jobs_total{status="succeeded"}' in exposition
    assert "image_gateway_job_queue_age_seconds_count" in exposition
    assert "# TYPE image_gateway_job_claims_total counter" in exposition


def test_a_job_store_that_cannot_be_reached_is_overloaded(
    emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Path
) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    server = start_gateway(emulators, MODELS, tmp_path, auth=auth_section(), redis={"url": nobody})
    try:
        path, body, _ = DIALECTS["pomelo"]
        answer = submit(http, server, path, json=body)
        assert answer.status_code == 503, answer.text
        assert "job store" in answer.json()["error"]["message"]
        assert http.get(f"{server.url}/v1/jobs/{'x' * 32}", headers=bearer()).status_code == 503
        assert http.post(server.url + path, json=body, headers=bearer()).status_code == 200  # plain calls go on
    finally:
        server.stop()


EMULATOR_OF = {"melious": "melious", "nebul": "nebul", "pomelo": "pomelo", "nebulablock": "nebulablock"}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_cancel_a_running_job_in_each_dialect(
    redis_gateway: GatewayServer, http: httpx.Client, fresh_emulators: dict[str, EmulatorServer], dialect: str
) -> None:
    fresh_emulators[EMULATOR_OF[dialect]].emulator.add_fault(Fault(delay=10))  # never waited for
    path, body, _ = DIALECTS[dialect]
    job_id = accepted(submit(http, redis_gateway, path, json=body))
    url = f"{redis_gateway.url}/v1/jobs/{job_id}"
    poll(http, url, lambda job: job["status"] == "running")
    assert http.delete(url, headers=bearer()).json()["status"] == "canceled"
    events = sse(http, url + "/events")  # a canceled job's events end at once
    assert events[-1][0] == "result" and events[-1][1]["status"] == "canceled"
