"""One generation for identical requests, through a real gateway against the Pomelo emulator: concurrent
identical seeded requests make one upstream call (Pomelo's Flux.1 and the root /v1 family carry a seed,
and share with each other), unseeded ones and other keys' do not share, a failure reaches every client,
and the cache answers with no call."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from gateway.admission.auth import hash_key
from tests.emulators import EmulatorServer, Fault
from tests.integration.conftest import start_gateway
from tests.integration.gateway_server import GatewayServer

KEYS = {"alice": "alice-dedup-key", "bob": "bob-dedup-key"}
PATHS = ("/pomelo/api/v1/flux.1", "/api/v1/flux.1")  # the dialect under its prefix and at the root
# Holds the first upstream call long enough for every other request to arrive while it runs.
HOLD = Fault(delay=2.0, times=1)


@pytest.fixture(scope="module")
def gateway(emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    models = [
        {"name": "flux.1", "targets": [{"provider": "pomelo-flux", "model": "flux.1"}], "cache": {"ttl_s": 600}},
    ]
    auth = {"keys": [{"name": name, "hash": hash_key(key)} for name, key in KEYS.items()]}
    server = start_gateway(emulators, models, tmp_path_factory.mktemp("store"), auth=auth)
    yield server
    server.stop()


def flux_calls(emulators: dict[str, EmulatorServer]) -> int:
    return sum(call.method == "POST" and call.path.endswith("/flux.1") for call in emulators["pomelo"].emulator.calls)


def post_all(gateway: GatewayServer, requests: list[tuple[str, str, dict[str, Any]]]) -> list[httpx.Response]:
    """Every (path, key name, body) at once, each on its own connection."""

    def post(path: str, key: str, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {KEYS[key]}"}
        return httpx.post(gateway.url + path, json=body, headers=headers, timeout=30)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda request: post(*request), requests))


def image_of(answer: httpx.Response) -> bytes:
    url = answer.json()["images"][0]["url"]
    fetched = httpx.get(url, timeout=10)
    assert fetched.status_code == 200
    return fetched.content


def test_five_identical_seeded_requests_make_one_upstream_call(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    emulators["pomelo"].emulator.add_fault(HOLD)
    body = {"prompt": "a lighthouse at dusk", "seed": 4242, "aspect_ratio": "1:1"}
    answers = post_all(gateway, [(PATHS[i % 2], "alice", body) for i in range(5)])
    assert [answer.status_code for answer in answers] == [200] * 5, [answer.text for answer in answers]
    assert flux_calls(emulators) == 1
    assert sorted(answer.headers["x-gateway-cache"] for answer in answers) == ["miss"] + ["shared"] * 4
    assert sorted(answer.headers["x-gateway-attempts"] for answer in answers) == ["0"] * 4 + ["1"]
    for answer in answers:
        assert answer.json()["seed"] == 4242 and answer.json()["prompt"] == body["prompt"]
    urls = {answer.json()["images"][0]["url"] for answer in answers}
    assert len(urls) == 5  # each client its own stored image
    images = {image_of(answer) for answer in answers}
    assert len(images) == 1 and next(iter(images)).startswith(b"\x89PNG")

    # the same request again, later: answered from the cache, no upstream call
    [again] = post_all(gateway, [(PATHS[0], "alice", body)])
    assert again.status_code == 200 and again.headers["x-gateway-cache"] == "hit"
    assert flux_calls(emulators) == 1
    assert image_of(again) in images
    # another key's identical request is its own
    [other] = post_all(gateway, [(PATHS[0], "bob", body)])
    assert other.headers["x-gateway-cache"] == "miss" and flux_calls(emulators) == 2


def test_seeded_requests_over_the_root_v1_share_one_generation(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    """OpenAI's routes carry ``seed`` (a documented extension): identical seeded requests share, and with
    Pomelo's Flux.1 too when they ask for the same drawing (its 1:1 is 1024x1024, its default 30 steps)."""
    emulators["pomelo"].emulator.add_fault(HOLD)
    prompt = "a lighthouse over /v1"
    v1 = {"model": "flux.1", "prompt": prompt, "seed": 5150, "size": "1024x1024", "steps": 30}
    flux = {"prompt": prompt, "seed": 5150, "aspect_ratio": "1:1"}
    requests = [("/v1/images/generations", "alice", v1)] * 3 + [(PATHS[1], "alice", flux)]
    answers = post_all(gateway, requests)
    assert [answer.status_code for answer in answers] == [200] * 4, [answer.text for answer in answers]
    assert flux_calls(emulators) == 1
    assert sorted(answer.headers["x-gateway-cache"] for answer in answers) == ["miss"] + ["shared"] * 3
    images = {httpx.get(answer.json()["data"][0]["url"], timeout=10).content for answer in answers[:3]}
    assert images == {image_of(answers[3])}


def test_unseeded_requests_are_not_shared(gateway: GatewayServer, emulators: dict[str, EmulatorServer]) -> None:
    emulators["pomelo"].emulator.add_fault(HOLD)
    body = {"prompt": "a lighthouse, unseeded", "aspect_ratio": "1:1"}
    answers = post_all(gateway, [(PATHS[i % 2], "alice", body) for i in range(3)])
    assert [answer.status_code for answer in answers] == [200] * 3
    assert flux_calls(emulators) == 3
    assert all("x-gateway-cache" not in answer.headers for answer in answers)


def test_different_keys_do_not_share(gateway: GatewayServer, emulators: dict[str, EmulatorServer]) -> None:
    emulators["pomelo"].emulator.add_fault(HOLD)
    body = {"prompt": "a lighthouse for two", "seed": 7, "aspect_ratio": "1:1"}
    answers = post_all(gateway, [(PATHS[0], "alice", body), (PATHS[0], "bob", body)])
    assert [answer.status_code for answer in answers] == [200, 200]
    assert [answer.headers["x-gateway-cache"] for answer in answers] == ["miss", "miss"]
    assert flux_calls(emulators) == 2


def test_a_failed_generation_fails_every_client_in_its_dialect(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer]
) -> None:
    emulators["pomelo"].emulator.add_fault(Fault(status=400, message="prompt refused", delay=2.0, times=1))
    body = {"prompt": "a lighthouse that fails", "seed": 99, "aspect_ratio": "1:1"}
    answers = post_all(gateway, [(PATHS[i % 2], "alice", body) for i in range(4)])
    assert flux_calls(emulators) == 1
    assert len({answer.status_code for answer in answers}) == 1 and answers[0].status_code == 400
    for answer in answers:
        error = answer.json()["error"]  # Pomelo's envelope, the same for every client
        assert error == answers[0].json()["error"]
    # a failure is not cached: the next identical request is generated
    [again] = post_all(gateway, [(PATHS[0], "alice", body)])
    assert again.status_code == 200 and again.headers["x-gateway-cache"] == "miss"
    assert image_of(again).startswith(b"\x89PNG")
