"""Idempotent retries (Idempotency-Key), through real gateways in front of the emulators: on every dialect
route a repeat gets the first answer with one upstream call, another body under the key is a 422 in the
client's dialect, a repeat while the first runs waits for it, a failure is not kept, another inbound key is
independent, job submissions give the same job, the window ends, and two replicas on one Redis share keys."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.admission.auth import hash_key
from tests.dialects import INBOUND
from tests.emulators import EmulatorServer, Fault, solid_png
from tests.integration.conftest import start_gateway
from tests.integration.gateway_server import GatewayServer
from tests.redis_support import OwnRedis, require_shared_redis

KEYS = {"alice": "alice-idempotency-key", "bob": "bob-idempotency-key"}
AUTH = {"keys": [{"name": name, "hash": hash_key(key)} for name, key in KEYS.items()]}
MODELS = [
    {"name": "via-melious", "targets": [{"provider": "melious", "model": "flux-schnell"}]},
    {"name": "via-nebul", "targets": [{"provider": "nebul", "model": "black-forest-labs/FLUX.1-Kontext-dev"}]},
]
MODEL = "via-melious"
HOLD = Fault(delay=1.5, times=1)  # the first upstream call runs long enough for the repeat to arrive


@pytest.fixture(scope="module")
def gateway(emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    server = start_gateway(emulators, MODELS, tmp_path_factory.mktemp("store"), auth=AUTH)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def short_window(
    emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    server = start_gateway(
        emulators, MODELS, tmp_path_factory.mktemp("store"), auth=AUTH, server={"idempotency": {"ttl_s": 1}}
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(
    emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayServer, GatewayServer]]:
    """Two gateways on one Redis (a key prefix of their own) and one image store, as replicas share a volume."""
    prefix = f"igw-idem-{uuid.uuid4().hex[:8]}:"
    shared = {"url": require_shared_redis(), "key_prefix": prefix}
    store = tmp_path_factory.mktemp("store")
    first = start_gateway(emulators, MODELS, store, auth=AUTH, redis=shared)
    second = start_gateway(emulators, MODELS, store, auth=AUTH, redis=shared)
    yield first, second
    first.stop()
    second.stop()
    client = redis.Redis.from_url(require_shared_redis())
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def upstream_calls(emulators: dict[str, EmulatorServer]) -> int:
    return sum(call.method == "POST" for call in emulators["melious"].emulator.calls)


def new_key() -> str:
    return f"retry-{uuid.uuid4()}"


def post(
    base: str, path: str, body: dict[str, Any], key: str | None, who: str = "alice", **headers: str
) -> httpx.Response:
    sent = {"Authorization": f"Bearer {KEYS[who]}", **headers}
    if key is not None:
        sent["Idempotency-Key"] = f'"{key}"'
    return httpx.post(base + path, json=body, headers=sent, timeout=30)


def at_once(*calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def same_answer(first: httpx.Response, again: httpx.Response) -> None:
    assert again.status_code == first.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["x-gateway-provider"] == first.headers["x-gateway-provider"]
    assert again.headers["x-gateway-attempts"] == "0"


DIALECTS = list(INBOUND)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_repeat_gets_the_first_answer_from_one_generation(
    dialect: str, gateway: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    path, payload, form, pointer = INBOUND[dialect]
    key = new_key()
    first = post(gateway.url, path, payload(MODEL), key)
    assert first.status_code == 200, first.text
    again = post(gateway.url, path, payload(MODEL), key)
    same_answer(first, again)
    assert upstream_calls(emulators) == 1
    if form == "url":  # the same stored image, still there
        image = httpx.get(pointer(again.json()), timeout=10)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_another_body_under_the_key_is_a_422_in_the_dialect(
    dialect: str, gateway: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    path, payload, _, _ = INBOUND[dialect]
    key = new_key()
    assert post(gateway.url, path, payload(MODEL), key).status_code == 200
    other = {**payload(MODEL), "prompt": "something else entirely"}
    conflict = post(gateway.url, path, other, key)
    assert conflict.status_code == 422, conflict.text
    assert "Idempotency-Key" in conflict.text
    # the dialect's own envelope: shaped as its 400 for a malformed key
    bad = post(gateway.url, path, payload(MODEL), None, **{"Idempotency-Key": '"unterminated'})
    assert bad.status_code == 400, bad.text
    assert set(conflict.json()) == set(bad.json())
    assert upstream_calls(emulators) == 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_repeat_while_the_first_runs_waits_for_its_answer(
    dialect: str, gateway: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    path, payload, _, _ = INBOUND[dialect]
    emulators["melious"].emulator.add_fault(HOLD)
    key = new_key()
    answers = at_once(*(lambda: post(gateway.url, path, payload(MODEL), key) for _ in range(3)))
    assert [answer.status_code for answer in answers] == [200] * 3, [answer.text for answer in answers]
    assert upstream_calls(emulators) == 1
    firsts = [answer for answer in answers if "idempotent-replayed" not in answer.headers]
    assert len(firsts) == 1
    for answer in answers:
        if answer is not firsts[0]:
            same_answer(firsts[0], answer)


@pytest.mark.parametrize("path", ["/nebul/v1/images/edits", "/v1/images/edits", "/v1/images/variations"])
def test_a_multipart_repeat_is_the_same_request_by_its_images(
    path: str, gateway: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    """A retried multipart body has a new boundary; what it asks for (its fields, its images' bytes) is the same."""
    red, blue = solid_png(64, 64, (200, 0, 0)), solid_png(64, 64, (0, 0, 200))
    fields = {"model": "via-nebul", "response_format": "b64_json"}
    if not path.endswith("variations"):
        fields["prompt"] = "add a hat"
    key = new_key()

    def send(image: bytes) -> httpx.Response:
        headers = {"Authorization": f"Bearer {KEYS['alice']}", "Idempotency-Key": f'"{key}"'}
        files = {"image": ("a.png", image, "image/png")}
        return httpx.post(gateway.url + path, files=files, data=fields, headers=headers, timeout=30)

    first = send(red)
    assert first.status_code == 200, first.text
    same_answer(first, send(red))
    conflict = send(blue)
    assert conflict.status_code == 422, conflict.text
    assert sum(call.method == "POST" for call in emulators["nebul"].emulator.calls) == 1


@pytest.mark.parametrize("dialect", ["melious", "nebul"])  # a URL answer and a base64 one
def test_a_client_that_timed_out_gets_the_answer_on_its_retry(
    dialect: str, gateway: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    """The issue's case: a proxy or client timeout, then the retry. The first generation goes on without its
    client, and the retry gets its answer; the GPU drew once."""
    path, payload, _, _ = INBOUND[dialect]
    emulators["melious"].emulator.add_fault(HOLD)
    key = new_key()
    headers = {"Authorization": f"Bearer {KEYS['alice']}", "Idempotency-Key": f'"{key}"'}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while the upstream still draws
        httpx.post(gateway.url + path, json=payload(MODEL), headers=headers, timeout=httpx.Timeout(30, read=0.3))
    retried = post(gateway.url, path, payload(MODEL), key)
    assert retried.status_code == 200, retried.text
    assert retried.headers["idempotent-replayed"] == "true"
    assert upstream_calls(emulators) == 1


def test_the_header_is_a_structured_field_string_or_a_bare_key(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    path, payload, _, _ = INBOUND["openai-root"]
    key = new_key()
    first = post(gateway.url, path, payload(MODEL), key)  # sent as "key"
    bare = post(gateway.url, path, payload(MODEL), None, **{"Idempotency-Key": key})
    same_answer(first, bare)
    assert upstream_calls(emulators) == 1
    for bad in ('"no end', '"a" ;x=1', "two words", '""', '"' + "k" * 256 + '"', '"tab\\x"'):
        refused = post(gateway.url, path, payload(MODEL), None, **{"Idempotency-Key": bad})
        assert refused.status_code == 400, (bad, refused.text)
        assert refused.json()["error"]["type"] == "invalid_request_error"
    assert upstream_calls(emulators) == 1


def test_another_inbound_keys_same_idempotency_key_is_its_own(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    path, payload, _, _ = INBOUND["melious"]
    key = new_key()
    alice = post(gateway.url, path, payload(MODEL), key, "alice")
    bob = post(gateway.url, path, payload(MODEL), key, "bob")
    assert alice.status_code == bob.status_code == 200
    assert "idempotent-replayed" not in bob.headers
    assert bob.json() != alice.json()
    assert upstream_calls(emulators) == 2


def test_a_failure_is_not_kept_and_its_retry_generates(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    path, payload, _, _ = INBOUND["melious"]
    emulators["melious"].emulator.add_fault(Fault(status=500, times=3))  # every attempt of the first request
    key = new_key()
    failed = post(gateway.url, path, payload(MODEL), key)
    assert failed.status_code >= 500, failed.text
    retried = post(gateway.url, path, payload(MODEL), key)
    assert retried.status_code == 200, retried.text
    assert "idempotent-replayed" not in retried.headers
    again = post(gateway.url, path, payload(MODEL), key)
    same_answer(retried, again)
    assert upstream_calls(emulators) == 4


def test_a_repeated_stream_replays_the_result_as_its_events(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    path = "/v1/images/generations"
    body = {"model": MODEL, "prompt": "a streamed lighthouse", "size": "1024x1024", "stream": True}
    key = new_key()
    first = post(gateway.url, path, body, key)
    again = post(gateway.url, path, body, key)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert first.headers["content-type"].startswith("text/event-stream")

    def completed(answer: httpx.Response) -> dict[str, Any]:
        datas = [line[len("data: ") :] for line in answer.text.splitlines() if line.startswith("data: ")]
        events = [json.loads(data) for data in datas if data.startswith("{")]
        done = [event for event in events if event.get("type") == "image_generation.completed"]
        assert len(done) == 1, answer.text[:500]
        return done[0]

    assert completed(again)["b64_json"] == completed(first)["b64_json"]
    assert upstream_calls(emulators) == 1


def test_a_failed_stream_frees_its_key(gateway: GatewayServer, emulators: dict[str, EmulatorServer]) -> None:
    path = "/v1/images/generations"
    body = {"model": MODEL, "prompt": "a stream that fails first", "size": "1024x1024", "stream": True}
    emulators["melious"].emulator.add_fault(Fault(status=500, times=3))  # every attempt of the first
    key = new_key()
    failed = post(gateway.url, path, body, key)
    assert failed.status_code == 200 and "error" in failed.text  # after the headers, a failure is an event
    retried = post(gateway.url, path, body, key)
    assert "idempotent-replayed" not in retried.headers and "image_generation.completed" in retried.text
    assert upstream_calls(emulators) == 4


def test_a_repeated_job_submission_gets_the_same_job(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    path, payload, _, _ = INBOUND["openai-root"]
    key = new_key()
    submitted = post(gateway.url, path, payload(MODEL), key, Prefer="respond-async")
    assert submitted.status_code == 202, submitted.text
    again = post(gateway.url, path, payload(MODEL), key, Prefer="respond-async")
    assert again.status_code == 202, again.text
    assert again.json()["id"] == submitted.json()["id"]
    assert again.headers["location"] == submitted.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    # the plain request under the key is another request (its answer differs: an image, not a job)
    plain = post(gateway.url, path, payload(MODEL), key)
    assert plain.status_code == 422, plain.text
    bob = post(gateway.url, path, payload(MODEL), key, "bob", Prefer="respond-async")
    assert bob.status_code == 202 and bob.json()["id"] != submitted.json()["id"]
    deadline = time.monotonic() + 30
    while upstream_calls(emulators) < 2:  # the two jobs run; nothing else does
        assert time.monotonic() < deadline, "the jobs never ran"
        time.sleep(0.05)
    job = httpx.get(
        gateway.url + submitted.headers["location"], headers={"Authorization": f"Bearer {KEYS['alice']}"}, timeout=10
    )
    assert job.status_code == 200 and job.json()["id"] == submitted.json()["id"]
    assert upstream_calls(emulators) == 2


def test_concurrent_job_submissions_under_one_key_are_one_job(gateway: GatewayServer) -> None:
    path, payload, _, _ = INBOUND["melious"]
    key = new_key()
    answers = at_once(*(lambda: post(gateway.url, path, payload(MODEL), key, Prefer="respond-async") for _ in range(3)))
    assert [answer.status_code for answer in answers] == [202] * 3, [answer.text for answer in answers]
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert sum("idempotent-replayed" in answer.headers for answer in answers) == 2


def test_after_the_window_a_repeat_generates_again(
    short_window: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    path, payload, _, _ = INBOUND["melious"]
    key = new_key()
    first = post(short_window.url, path, payload(MODEL), key)
    same_answer(first, post(short_window.url, path, payload(MODEL), key))
    assert upstream_calls(emulators) == 1
    time.sleep(1.2)  # the configured 1 s window passes
    later = post(short_window.url, path, payload(MODEL), key)
    assert later.status_code == 200 and "idempotent-replayed" not in later.headers
    assert upstream_calls(emulators) == 2


def test_a_repeat_on_another_replica_gets_the_first_answer(
    replicas: tuple[GatewayServer, GatewayServer], emulators: dict[str, EmulatorServer]
) -> None:
    first_replica, second_replica = replicas
    images = []
    for dialect in ("melious", "nebul"):  # a URL answer and a base64 one
        path, payload, _, pointer = INBOUND[dialect]
        key = new_key()
        first = post(first_replica.url, path, payload(MODEL), key)
        same_answer(first, post(second_replica.url, path, payload(MODEL), key))
        images.append(pointer(first.json()))
    assert upstream_calls(emulators) == 2
    # what Redis holds is small: no image in it, whatever form the answer took
    client = redis.Redis.from_url(require_shared_redis())
    prefix = first_replica.config.redis.key_prefix + "idem:"
    entries = [client.get(key) for key in client.scan_iter(f"{prefix}*")]
    assert len(entries) >= 2 and all(entry is not None and len(entry) < 2048 for entry in entries)
    base64_image = images[1][:64].encode()
    assert len(base64_image) == 64 and not any(base64_image in (entry or b"") for entry in entries)
    # a repeat on the other replica while the first still runs waits for it
    emulators["melious"].emulator.add_fault(HOLD)
    path, payload, _, _ = INBOUND["openai-root"]
    key = new_key()
    answers = at_once(
        lambda: post(first_replica.url, path, payload(MODEL), key),
        lambda: post(second_replica.url, path, payload(MODEL), key),
    )
    assert [answer.status_code for answer in answers] == [200, 200], [answer.text for answer in answers]
    assert sorted("idempotent-replayed" in answer.headers for answer in answers) == [False, True]
    assert answers[0].json() == answers[1].json()
    assert upstream_calls(emulators) == 3
    # another body under the key, on the other replica: the 422
    other = {**payload(MODEL), "prompt": "not the same"}
    assert post(second_replica.url, path, other, key).status_code == 422


def test_a_job_repeated_on_another_replica_is_the_same_job(replicas: tuple[GatewayServer, GatewayServer]) -> None:
    first_replica, second_replica = replicas
    path, payload, _, _ = INBOUND["openai-root"]
    key = new_key()
    submitted = post(first_replica.url, path, payload(MODEL), key, Prefer="respond-async")
    assert submitted.status_code == 202, submitted.text
    again = post(second_replica.url, path, payload(MODEL), key, Prefer="respond-async")
    assert again.status_code == 202 and again.json()["id"] == submitted.json()["id"]


def test_without_its_redis_a_keyed_request_is_served_without_the_guarantee(
    emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> None:
    own = OwnRedis(tmp_path_factory.mktemp("redis")).start()
    server = start_gateway(
        emulators, MODELS, tmp_path_factory.mktemp("store"), auth=AUTH, redis={"url": own.url, "key_prefix": "t:"}
    )
    try:
        path, payload, _, _ = INBOUND["melious"]
        key = new_key()
        first = post(server.url, path, payload(MODEL), key)
        same_answer(first, post(server.url, path, payload(MODEL), key))
        own.stop()  # Redis goes away: availability first
        answer = post(server.url, path, payload(MODEL), new_key())
        assert answer.status_code == 200, answer.text
        assert "idempotent-replayed" not in answer.headers
        assert upstream_calls(emulators) == 2
        text = httpx.get(server.url + "/metrics", timeout=10).text
        assert 'image_gateway_idempotent_requests_total{outcome="unavailable"}' in text
    finally:
        server.stop()
        own.stop()


def test_the_metrics_count_replays_and_conflicts(gateway: GatewayServer) -> None:
    path, payload, _, _ = INBOUND["melious"]
    key = new_key()
    post(gateway.url, path, payload(MODEL), key)
    post(gateway.url, path, payload(MODEL), key)
    post(gateway.url, path, {**payload(MODEL), "prompt": "changed"}, key)
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    counted = {
        line.split('outcome="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("image_gateway_idempotent_requests_total{")
    }
    assert counted["kept"] >= 1 and counted["replayed"] >= 1 and counted["conflict"] >= 1


def test_images_are_kept_for_the_window_past_the_stores_own_ttl(
    emulators: dict[str, EmulatorServer], tmp_path: Path
) -> None:
    """The store keeps other images 1 s; an answer kept for an Idempotency-Key keeps its images for the window."""
    store = {"path": str(tmp_path / "store"), "ttl_seconds": 1}
    server = start_gateway(emulators, MODELS, tmp_path / "store", auth=AUTH, image_store=store)
    try:
        path, payload, _, _ = INBOUND["melious"]
        key = new_key()
        first = post(server.url, path, payload(MODEL), key)
        assert first.status_code == 200, first.text
        time.sleep(2.1)  # past the store's own TTL (whole seconds), well within the 24 h window
        again = post(server.url, path, payload(MODEL), key)
        same_answer(first, again)
        assert upstream_calls(emulators) == 1
        url = again.json()["data"][0]["url"]
        assert httpx.get(url).status_code == 200  # the replayed URL still serves its image
    finally:
        server.stop()
