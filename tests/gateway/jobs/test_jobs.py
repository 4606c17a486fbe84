"""Async jobs in one app: the Prefer grammar, progress from the backend's hook, cancelling a running generation,
and the jobs config; in both stores (the real Redis, a key prefix of its own, and the process)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from litestar.testing import AsyncTestClient, TestClient

from gateway.admission.ratelimit import MemoryLimiter
from gateway.app import create_app
from gateway.config import ConfigError
from gateway.jobs.prefer import Preferences, parse_prefer
from gateway.jobs.queue import JobRecord
from gateway.request.mounts import DIALECT_ROUTES
from gateway.routing.cooldown import Cooldowns
from gateway.routing.router import Router
from schemas.canonical import GatewayError, ImageRequest
from tests.gateway.fakes import SteppingAdapter, config, wait_until
from tests.redis_support import require_shared_redis

STEPS = 5
SUBMIT = {"model": "m", "prompt": "a cat", "response_format": "b64_json"}
ASYNC = {"Prefer": "respond-async"}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], Preferences()),
        (["respond-async"], Preferences(respond_async=True)),
        (["Respond-Async , WAIT=10"], Preferences(respond_async=True, wait=10)),
        (["wait=3"], Preferences(wait=3)),
        (['return=minimal; foo="a,b;c", respond-async'], Preferences(respond_async=True)),
        (["respond-async;x", "wait = 7"], Preferences(respond_async=True, wait=7)),
        (["wait=2, wait=9, respond-async"], Preferences(respond_async=True, wait=2)),  # the first instance counts
        (['wait="4"'], Preferences(wait=4)),  # a quoted word is a word
        ([" , respond-async ,, "], Preferences(respond_async=True)),
        (["handling=strict"], Preferences()),
    ],
)
def test_prefer_grammar(values: list[str], expected: Preferences) -> None:
    assert parse_prefer(values) == expected


@pytest.mark.parametrize(
    "value",
    [
        "wait=soon",
        "wait=1.5",
        "wait=-1",
        "wait",
        "wait=",
        'x="open',
        "=1",
        "respond-async wait=1",
        "respond-async;=1",
        "résumé",
        'x="a\\',
    ],
)
def test_malformed_prefer_is_an_invalid_request_naming_the_header(value: str) -> None:
    with pytest.raises(GatewayError) as raised:
        parse_prefer(["respond-async", value])
    assert raised.value.status == 400 and raised.value.param == "Prefer"
    assert "Prefer" in raised.value.message


def test_jobs_config_errors_name_the_field() -> None:
    for field, value in (("consumers", 0), ("claim_after_s", 0), ("ttl_s", -1), ("max_wait_s", "long")):
        with pytest.raises(ConfigError, match=rf"at `\$\.jobs\.{field}`"):
            config({}, [], jobs={field: value})
    with pytest.raises(ConfigError, match=r"unknown field `visibility`"):
        config({}, [], jobs={"visibility": 3})


@pytest.fixture(params=["memory", "redis"])
async def app_client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Any, SteppingAdapter]]:
    prefix = f"igw-unit-jobs-{uuid.uuid4().hex[:8]}:"
    sections: dict[str, Any] = {"image_store": {"path": str(tmp_path)}}
    if request.param == "redis":
        sections["redis"] = {"url": require_shared_redis(), "key_prefix": prefix}
    settings = config({"p": {}}, [{"name": "m", "targets": [{"provider": "p", "model": "x"}]}], **sections)
    app = create_app(settings)
    adapter = SteppingAdapter("p", STEPS)
    async with AsyncTestClient(app=app) as client:
        gateway = app.state.gateway
        gateway.router = Router(settings, {"p": adapter}, MemoryLimiter(), Cooldowns())
        yield client, adapter
    shared = redis.Redis.from_url(require_shared_redis())
    for key in shared.scan_iter(f"{prefix}*"):
        shared.delete(key)


async def poll(client: Any, url: str, until: Any) -> dict[str, Any]:
    for _ in range(400):
        answer = await client.get(url)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if until(body):
            return body
        await asyncio.sleep(0.025)
    raise AssertionError(f"the job never got there: {body}")


async def test_progress_from_the_backend_reaches_the_job_and_its_events(
    app_client: tuple[Any, SteppingAdapter],
) -> None:
    client, adapter = app_client
    submitted = await client.post("/v1/images/generations", json=SUBMIT, headers=ASYNC)
    assert submitted.status_code == 202, submitted.text
    url = submitted.headers["location"]
    await wait_until(adapter.started)
    adapter.open(2)
    job = await poll(client, url, lambda body: body.get("progress", {}).get("step") == 2)
    assert job["status"] == "running" and job["progress"] == {"step": 2, "steps": STEPS}
    adapter.open(STEPS)
    job = await poll(client, url, lambda body: body["status"] == "succeeded")
    assert job["progress"] == {"step": STEPS, "steps": STEPS}
    assert job["result"]["data"][0]["b64_json"] == "aW1n"
    events = (await client.get(url + "/events")).text
    assert "event: progress\n" in events and f'data: {{"step":{STEPS},"steps":{STEPS}}}' in events
    assert events.rstrip().split("\n\n")[-1].split("\n")[1] == "event: result"


async def test_cancelling_a_running_job_cancels_its_generation(app_client: tuple[Any, SteppingAdapter]) -> None:
    client, adapter = app_client
    submitted = await client.post("/v1/images/generations", json=SUBMIT, headers=ASYNC)
    url = submitted.headers["location"]
    await wait_until(adapter.started)
    canceled = await client.delete(url)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    await wait_until(adapter.cancelled)  # the backend's call itself was cancelled
    adapter.open(STEPS)
    await asyncio.sleep(0.3)
    job = (await client.get(url)).json()
    assert job["status"] == "canceled" and "result" not in job


async def test_wait_gives_the_plain_answer_once_the_job_ends(app_client: tuple[Any, SteppingAdapter]) -> None:
    client, adapter = app_client
    adapter.open(STEPS)
    plain = await client.post("/v1/images/generations", json=SUBMIT)
    waited = await client.post("/v1/images/generations", json=SUBMIT, headers={"Prefer": "respond-async, wait=10"})
    assert waited.status_code == 200
    assert waited.json()["data"] == plain.json()["data"]
    assert waited.headers["x-gateway-provider"] == plain.headers["x-gateway-provider"] == "p"
    assert "preference-applied" not in waited.headers


def _no_backend() -> Any:
    return config({"p": {}}, [{"name": "m", "targets": [{"provider": "p", "model": "x"}]}])


def test_the_job_routes_are_in_the_openapi_document_with_their_errors() -> None:
    with TestClient(create_app(_no_backend())) as client:
        document = client.get("/docs/openapi.json").json()
    paths = document["paths"]
    job, events = paths["/v1/jobs/{job_id}"], paths["/v1/jobs/{job_id}/events"]
    assert set(job) >= {"get", "delete"} and "get" in events
    for operation in (job["get"], job["delete"], events["get"]):
        assert {"401", "404"} <= set(operation["responses"]), operation["responses"]
        assert operation["tags"] == ["jobs"]
    assert "409" in job["delete"]["responses"]
    assert "text/event-stream" in events["get"]["responses"]["200"]["content"]


def test_every_dialect_route_documents_prefer_and_its_202() -> None:
    with TestClient(create_app(_no_backend())) as client:
        document = client.get("/docs/openapi.json").json()
    operations = [
        document["paths"][path][method.lower()] for path, route in DIALECT_ROUTES.items() for method in route.by_method
    ]
    assert len(operations) == sum(len(route.by_method) for route in DIALECT_ROUTES.values())
    for operation in operations:
        assert "202" in operation["responses"], operation["operationId"]
        headers = {parameter["name"] for parameter in operation["parameters"] if parameter["in"] == "header"}
        assert {"Prefer", "X-Webhook-URL"} <= headers


async def test_a_job_interrupted_max_runs_times_fails_instead_of_running_again(
    app_client: tuple[Any, SteppingAdapter],
) -> None:
    client, adapter = app_client
    jobs = client.app.state.gateway.jobs
    now = int(time.time())
    record = JobRecord(
        id="interrupted-job",
        key=None,
        route="/v1/images/generations",
        status="running",
        created_at=now,
        updated_at=now,
        runs=jobs.settings.max_runs,
    )
    payload = msgspec.msgpack.encode(ImageRequest(model="m", prompt="a cat"))
    app_loop = jobs._consumers[0].get_loop()  # the test client runs the app on a loop of its own
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(jobs.queue.put(record, payload), app_loop))
    job = await poll(client, "/v1/jobs/interrupted-job", lambda body: body["status"] != "running")
    assert job["status"] == "failed" and adapter.calls == 0
    assert "interrupted" in job["error"]["error"]["message"]


async def test_past_max_queued_a_submit_is_overloaded(app_client: tuple[Any, SteppingAdapter]) -> None:
    client, adapter = app_client
    jobs = client.app.state.gateway.jobs
    jobs.settings = msgspec.structs.replace(jobs.settings, max_queued=1)
    first = await client.post("/v1/images/generations", json=SUBMIT, headers=ASYNC)
    assert first.status_code == 202
    await wait_until(adapter.started)  # running: it still counts
    second = await client.post("/v1/images/generations", json=SUBMIT, headers=ASYNC)
    assert second.status_code == 503 and second.json()["error"]["message"]
    adapter.open(STEPS)
    await poll(client, first.headers["location"], lambda body: body["status"] == "succeeded")
    third = await client.post("/v1/images/generations", json=SUBMIT, headers=ASYNC)
    assert third.status_code == 202
