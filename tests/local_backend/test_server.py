"""The standalone worker over real HTTP, and the ``local`` adapter in-process and against remote workers."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from structlog.testing import capture_logs

from adapters.base import CallOptions
from adapters.local import LocalAdapter
from adapters.upstream import UpstreamClient, build_upstream_client
from local_backend.server import local_settings, serve_worker, worker_refusal
from schemas import worker as protocol
from schemas.canonical import ErrorCode, FailureReason, GatewayError, ImageRequest
from schemas.dialect import image_dimensions
from tests.local_backend.engines import held_device
from tests.local_backend.engines import local_settings as tiny_settings
from tests.local_backend.worker_server import WorkerServer, closed_port_url

NO_OPTIONS = CallOptions()


def ask(**fields: object) -> ImageRequest:
    return ImageRequest(model="tiny", prompt="a lighthouse", **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def workers() -> Iterator[list[WorkerServer]]:
    """Two workers, each with its own engine and the tiny model."""
    started = [WorkerServer(tiny_settings(batch_window_ms=0)).start() for _ in range(2)]
    yield started
    for worker in started:
        worker.stop()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    shared = build_upstream_client("aiohttp")
    yield shared
    await shared.aclose()


def remote(urls: list[str], client: UpstreamClient, **options: object) -> LocalAdapter:
    settings = msgspec.convert({"kind": "local", "workers": urls, **options}, type=type(tiny_settings()))
    return LocalAdapter("gpu", settings, client)


def test_worker_answers_the_canonical_request_over_http(workers: list[WorkerServer]) -> None:
    body = msgspec.json.encode(ask(seed=5, n=2, width=64, height=128))
    response = httpx.post(workers[0].url + protocol.GENERATE_PATH, content=body, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["seed"] == 5 and [image["seed"] for image in answer["images"]] == [5, 6]
    png = base64.b64decode(answer["images"][0]["data"])
    assert image_dimensions(png) == (64, 128)


def test_worker_errors_carry_the_canonical_code(workers: list[WorkerServer]) -> None:
    bad_size = httpx.post(workers[0].url + "/v1/generate", content=msgspec.json.encode(ask(width=70, height=64)))
    assert bad_size.status_code == 400
    assert bad_size.json()["code"] == "invalid_size" and "multiples of 8" in bad_size.json()["message"]
    garbage = httpx.post(workers[0].url + "/v1/generate", content=b'{"prompt": 3}')
    assert garbage.status_code == 400 and garbage.json()["code"] == "invalid_request"
    assert "$.prompt" in garbage.json()["message"] or "model" in garbage.json()["message"]
    unknown = httpx.post(
        workers[0].url + "/v1/generate", content=msgspec.json.encode(ImageRequest(model="x", prompt="p"))
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == "model_not_found"


def test_worker_health_and_stats(workers: list[WorkerServer]) -> None:
    health = httpx.get(workers[0].url + "/health")
    assert health.status_code == 200 and health.json()["models"] == {"tiny": "ready"}
    assert health.json()["status"] == "ok"
    stats = httpx.get(workers[0].url + "/stats").json()
    assert stats["device"] == "cpu" and "batch_sizes" in stats and "queue_depth" in stats


async def test_a_client_that_hangs_up_has_its_queued_request_dropped(workers: list[WorkerServer]) -> None:
    worker = workers[1]
    before = worker.engine.stats()
    with held_device(worker.engine) as hold:
        async with httpx.AsyncClient(timeout=30) as patient, httpx.AsyncClient(timeout=0.3) as impatient:
            running = asyncio.create_task(
                patient.post(worker.url + "/v1/generate", content=protocol.encode_request(ask()))
            )
            await hold.wait_started()
            with pytest.raises(httpx.ReadTimeout):  # gives up and closes its connection
                await impatient.post(worker.url + "/v1/generate", content=protocol.encode_request(ask(width=128)))
            for _ in range(100):
                if worker.engine.stats().requests_dropped > before.requests_dropped:
                    break
                await asyncio.sleep(0.01)
            hold.release()
            assert (await running).status_code == 200
    after = worker.engine.stats()
    assert after.requests_dropped == before.requests_dropped + 1
    assert after.images_generated == before.images_generated + 1  # only the patient client's image was drawn


async def test_adapter_spreads_requests_over_workers(workers: list[WorkerServer], client: UpstreamClient) -> None:
    adapter = remote([worker.url for worker in workers], client)
    before = [worker.engine.stats().images_generated for worker in workers]
    results = [await adapter.generate(ask(seed=index), NO_OPTIONS) for index in range(4)]
    after = [worker.engine.stats().images_generated for worker in workers]
    assert [b - a for a, b in zip(before, after, strict=True)] == [2, 2]
    assert all(result.provider == "gpu" and result.images[0].data for result in results)
    assert results[0].images[0].seed == 0


async def test_adapter_moves_past_a_worker_that_is_down(workers: list[WorkerServer], client: UpstreamClient) -> None:
    adapter = remote([closed_port_url(), workers[0].url], client)
    for _ in range(3):
        assert (await adapter.generate(ask(), NO_OPTIONS)).images
    everyone_down = remote([closed_port_url()], client)
    with pytest.raises(GatewayError) as caught:
        await everyone_down.generate(ask(), NO_OPTIONS)
    assert caught.value.code is ErrorCode.UPSTREAM_ERROR and "could not be reached" in caught.value.message
    assert caught.value.retryable


async def test_adapter_turns_worker_errors_back_into_gateway_errors(
    workers: list[WorkerServer], client: UpstreamClient
) -> None:
    adapter = remote([workers[0].url], client)
    with pytest.raises(GatewayError) as caught:
        await adapter.generate(ask(width=70, height=64), NO_OPTIONS)
    assert caught.value.code is ErrorCode.INVALID_SIZE and caught.value.param == "size"
    assert caught.value.provider == "gpu"


async def test_adapter_moves_past_an_overloaded_worker(workers: list[WorkerServer], client: UpstreamClient) -> None:
    busy = WorkerServer(tiny_settings(queue_size=1)).start()
    try:
        adapter = remote([busy.url, workers[0].url], client)
        with held_device(busy.engine) as hold:
            direct = httpx.AsyncClient(timeout=30)
            running = asyncio.create_task(
                direct.post(busy.url + "/v1/generate", content=protocol.encode_request(ask()))
            )
            await hold.wait_started()
            queued = asyncio.create_task(
                direct.post(busy.url + "/v1/generate", content=protocol.encode_request(ask(width=128)))
            )
            await asyncio.sleep(0.1)
            assert busy.engine.stats().queue_depth == 1
            result = await adapter.generate(ask(), NO_OPTIONS)  # busy refuses at once; the next worker draws it
            assert result.images and busy.engine.stats().requests_refused == 1
            hold.release()
            await asyncio.gather(running, queued)
            await direct.aclose()
    finally:
        busy.stop()


async def test_adapter_timeout_applies_to_remote_calls(workers: list[WorkerServer], client: UpstreamClient) -> None:
    adapter = remote([workers[0].url], client)
    with held_device(workers[0].engine) as hold:
        running = asyncio.create_task(adapter.generate(ask(), NO_OPTIONS))
        await hold.wait_started()
        with pytest.raises(GatewayError) as caught:
            await adapter.generate(ask(), CallOptions(timeout=0.2))
        hold.release()
        await running
    assert caught.value.code is ErrorCode.UPSTREAM_TIMEOUT


async def test_adapter_in_process_starts_serves_and_closes(client: UpstreamClient) -> None:
    adapter = LocalAdapter("here", tiny_settings(), client)
    await adapter.start()
    try:
        assert (await adapter.ready()) == {"ready": True, "models": {"tiny": "ready"}}
        result = await adapter.generate(ask(seed=1), NO_OPTIONS)
        assert result.provider == "here" and result.seed == 1 and result.timings.total is not None
        assert adapter.engine is not None
        with held_device(adapter.engine) as hold:
            running = asyncio.create_task(adapter.generate(ask(), NO_OPTIONS))
            await hold.wait_started()
            with pytest.raises(GatewayError) as caught:
                await adapter.generate(ask(width=128), CallOptions(timeout=0.05))
            hold.release()
            await running
        assert caught.value.code is ErrorCode.UPSTREAM_TIMEOUT and caught.value.provider == "here"
        assert adapter.engine.stats().requests_dropped == 1
    finally:
        await adapter.aclose()
    assert adapter.engine is None


async def test_adapter_ready_reports_workers(workers: list[WorkerServer], client: UpstreamClient) -> None:
    down = closed_port_url()
    readiness = await remote([workers[0].url, down], client).ready()
    assert readiness == {"ready": True, "workers": {workers[0].url: True, down: False}}


def test_serve_worker_needs_a_local_provider(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.config import parse_config

    config = parse_config("providers: {}\nmodels: []\n")
    assert local_settings(config) is None
    assert serve_worker(config, "127.0.0.1", 0) == 1
    assert "kind: local" in capsys.readouterr().err


async def test_a_worker_missing_a_models_weights_is_not_healthy(tmp_path: Path, client: UpstreamClient) -> None:
    """Its other model serves; the missing one answers 503 ``model_unavailable`` naming no path; /health is 503.

    The gateway still counts it as up (it serves its other models): its readiness does not follow one missing model.
    """
    nowhere = tmp_path / "no-such-model"
    settings = tiny_settings({"tiny": "builtin:tiny-sd", "gone": str(nowhere)}, batch_window_ms=0)
    with WorkerServer(settings) as worker:
        health = httpx.get(worker.url + "/health")
        missing = ImageRequest(model="gone", prompt="p")
        gone = httpx.post(worker.url + "/v1/generate", content=msgspec.json.encode(missing))
        served = httpx.post(worker.url + "/v1/generate", content=msgspec.json.encode(ask()))
        readiness = await remote([worker.url], client).ready()
    assert readiness == {"ready": True, "workers": {worker.url: True}}
    assert health.status_code == 503 and health.json()["status"] == "degraded"
    assert health.json()["models"]["tiny"] == "ready" and str(nowhere) in health.json()["models"]["gone"]
    assert gone.status_code == 503, gone.text
    assert gone.json()["code"] == "overloaded" and gone.json()["reason"] == "model_unavailable"
    assert str(tmp_path) not in gone.text
    assert served.status_code == 200, served.text
    error = protocol.decode_error(gone.status_code, gone.content)
    assert error.reason is FailureReason.MODEL_UNAVAILABLE and not error.counts_toward_cooldown


# --- the worker's credential (worker_token) ---

TOKEN = "worker-token-0123456789abcdef"


@pytest.fixture(scope="module")
def guarded() -> Iterator[WorkerServer]:
    """A worker that wants ``TOKEN``."""
    with WorkerServer(tiny_settings(batch_window_ms=0, worker_token=TOKEN)) as worker:
        yield worker


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("not-the-worker-token-at-all"), bearer(TOKEN[:-1]), {"Authorization": TOKEN}, {"X-API-Key": TOKEN}],
    ids=["none", "wrong", "prefix", "no-scheme", "other-header"],
)
def test_a_guarded_worker_refuses_generate_and_stats_without_its_token(
    guarded: WorkerServer, headers: dict[str, str]
) -> None:
    before = guarded.engine.stats().images_generated
    generate = httpx.post(guarded.url + protocol.GENERATE_PATH, content=protocol.encode_request(ask()), headers=headers)
    stats = httpx.get(guarded.url + protocol.STATS_PATH, headers=headers)
    for answer in (generate, stats):
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"] == "Bearer"
        error = protocol.decode_error(answer.status_code, answer.content)  # the worker protocol's error shape
        assert error.code is ErrorCode.UNAUTHORIZED and "worker_token" in error.message
        assert TOKEN not in answer.text
    assert guarded.engine.stats().images_generated == before


def test_a_guarded_worker_serves_the_gateways_token(guarded: WorkerServer) -> None:
    answer = httpx.post(
        guarded.url + protocol.GENERATE_PATH, content=protocol.encode_request(ask(seed=3)), headers=bearer(TOKEN)
    )
    assert answer.status_code == 200, answer.text
    assert protocol.decode_result(answer.content).images[0].seed == 3
    stats = httpx.get(guarded.url + protocol.STATS_PATH, headers={"authorization": f"bearer {TOKEN}"})
    assert stats.status_code == 200 and stats.json()["device"] == "cpu"


def test_a_guarded_workers_health_tells_a_probe_its_status_alone(guarded: WorkerServer) -> None:
    anonymous = httpx.get(guarded.url + protocol.HEALTH_PATH)  # a kubelet's probe: no credential at all
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}
    wrong = httpx.get(guarded.url + protocol.HEALTH_PATH, headers=bearer("not-the-worker-token-at-all"))
    assert wrong.status_code == 401 and wrong.json()["code"] == "unauthorized"
    known = httpx.get(guarded.url + protocol.HEALTH_PATH, headers=bearer(TOKEN))
    assert known.status_code == 200 and known.json() == {"status": "ok", "device": "cpu", "models": {"tiny": "ready"}}


async def test_the_adapter_sends_the_token_and_moves_past_a_worker_that_refuses_it(
    guarded: WorkerServer, workers: list[WorkerServer], client: UpstreamClient
) -> None:
    with WorkerServer(tiny_settings(batch_window_ms=0, worker_token="another-token-0123456789")) as other:
        adapter = remote([other.url, guarded.url], client, worker_token=TOKEN)
        before = guarded.engine.stats().images_generated
        with capture_logs() as logged:
            results = [await adapter.generate(ask(seed=index), NO_OPTIONS) for index in range(2)]
        assert all(result.images for result in results)
        refusals = [line for line in logged if line["event"] == "worker_refused_token"]
        assert refusals and all(line["worker"] == other.url and line["provider"] == "gpu" for line in refusals)
        assert TOKEN not in repr(logged)
        assert guarded.engine.stats().images_generated == before + 2 and other.engine.stats().images_generated == 0
        readiness = await adapter.ready()
        assert readiness == {"ready": True, "workers": {other.url: False, guarded.url: True}}

        refused = remote([other.url], client, worker_token=TOKEN)
        with pytest.raises(GatewayError) as caught:
            await refused.generate(ask(), NO_OPTIONS)
        assert (
            caught.value.code is ErrorCode.UPSTREAM_ERROR and caught.value.reason is FailureReason.UPSTREAM_CREDENTIALS
        )
        assert TOKEN not in caught.value.message and "another-token" not in caught.value.message
        assert caught.value.provider == "gpu"
    # A worker with no token of its own serves a gateway that sends one (a rollout that adds it).
    assert (await remote([workers[0].url], client, worker_token=TOKEN).generate(ask(), NO_OPTIONS)).images


def test_worker_token_must_be_long_and_printable() -> None:
    for bad in ("short", "x" * 15, "has a space in the token", "line-break-in-token\n", "ünïcode-token-0123456789"):
        with pytest.raises(msgspec.ValidationError, match="worker_token"):
            tiny_settings(worker_token=bad)
    assert tiny_settings(worker_token="x" * 16).worker_token == "x" * 16


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.7", "worker.internal"])
def test_a_worker_without_a_token_refuses_to_listen_beyond_loopback(
    host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.config import parse_config

    config = parse_config("providers:\n  local:\n    kind: local\n    models: {tiny: {path: builtin:tiny-sd}}\n")
    assert serve_worker(config, host, 0) == 1
    err = capsys.readouterr().err
    assert "worker_token" in err and "allow_unauthenticated" in err and host in err


@pytest.mark.parametrize(
    ("host", "options", "refused"),
    [
        ("127.0.0.1", {}, False),
        ("localhost", {}, False),
        ("::1", {}, False),
        ("0.0.0.0", {}, True),
        ("0.0.0.0", {"allow_unauthenticated": True}, False),
        ("0.0.0.0", {"worker_token": TOKEN}, False),
    ],
)
def test_which_workers_may_listen(host: str, options: dict[str, object], refused: bool) -> None:
    assert (worker_refusal(tiny_settings(**options), host) is not None) is refused
