"""What must be closed, over real HTTP: a GPU worker takes the gateway's ``worker_token``, and ``/metrics``
takes an admin key (``server.metrics_access``).

A real gateway in front of a real worker (the tiny model on the CPU): the right token draws; a wrong or
missing one is the worker's 401, which moves the request on to the model's next target, or answers the
client ``upstream_error`` when there is none; neither token ever reaches a log line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from gateway.admission.auth import hash_key
from gateway.config import ConfigError
from gateway.observability.logs import config_secrets
from schemas import worker as protocol
from tests.integration.gateway_server import GatewayServer, gateway_config
from tests.local_backend.engines import local_settings
from tests.local_backend.worker_server import WorkerServer

TOKEN = "the-workers-token-0123456789"
WRONG = "a-stale-token-9876543210zz"
ADMIN_KEY, CLIENT_KEY = "admin-key-for-prometheus", "a-clients-own-key"
BODY = {"model": "tiny", "prompt": "a lighthouse", "size": "64x64", "response_format": "b64_json"}
GENERATIONS = "/nebul/v1/images/generations"


@pytest.fixture(scope="module")
def worker(model_dir: Path) -> Iterator[WorkerServer]:
    """A worker that wants ``TOKEN``."""
    with WorkerServer(local_settings({"tiny": "builtin:tiny-sd"}, batch_window_ms=0, worker_token=TOKEN)) as server:
        yield server


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


def remote(url: str, **options: Any) -> dict[str, Any]:
    return {"kind": "local", "workers": [url], **options}


def test_the_gateway_reaches_a_guarded_worker_with_its_token_only(
    worker: WorkerServer, tmp_path: Path, http: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    providers = {
        "right": remote(worker.url, worker_token=TOKEN),
        "stale": remote(worker.url, worker_token=WRONG),
        "stale-first": remote(worker.url, worker_token=WRONG),  # its own provider: a refusal cools "stale" down
        "tokenless": remote(worker.url),
    }
    models = [
        {"name": "tiny", "targets": [{"provider": "right", "model": "tiny"}]},
        # The stale provider first: the worker's 401 moves the request on to the next target.
        {
            "name": "fallback",
            "targets": [{"provider": "stale-first", "model": "tiny"}, {"provider": "right", "model": "tiny"}],
        },
        {"name": "stale-only", "targets": [{"provider": "stale", "model": "tiny"}]},
        {"name": "tokenless-only", "targets": [{"provider": "tokenless", "model": "tiny"}]},
    ]
    config = gateway_config(providers, models, tmp_path, server={"log_level": "debug"})
    assert {TOKEN, WRONG} <= set(config_secrets(config)), "the log scrubber knows both tokens"
    before = worker.engine.stats().images_generated
    with GatewayServer(config) as gateway:
        drawn = http.post(gateway.url + GENERATIONS, json=BODY)
        assert drawn.status_code == 200, drawn.text
        assert drawn.headers["x-gateway-provider"] == "right"

        moved = http.post(gateway.url + GENERATIONS, json={**BODY, "model": "fallback"})
        assert moved.status_code == 200, moved.text
        assert moved.headers["x-gateway-provider"] == "right"

        for model in ("stale-only", "tokenless-only"):
            refused = http.post(gateway.url + GENERATIONS, json={**BODY, "model": model})
            assert refused.status_code == 502, refused.text
            assert refused.json()["error"]["code"] == "upstream_error"
            assert TOKEN not in refused.text and WRONG not in refused.text

        ready = http.get(gateway.url + "/ready")
        assert ready.status_code == 200  # a provider whose worker refuses its token is that provider's state
        providers = ready.json()["providers"]
        assert providers["right"] == {"ready": True, "workers": 1, "workers_up": 1}
        assert providers["stale"] == {"ready": False, "workers": 1, "workers_up": 0}  # a wrong token: the worker's 401
        assert worker.url not in ready.text  # /ready is public: no worker address
        structlog.get_logger("tests").warning("a_line_naming_the_tokens", stale=WRONG, token=TOKEN)
    assert worker.engine.stats().images_generated == before + 2  # nothing drawn for a refused call
    logged = capfd.readouterr()
    assert "a_line_naming_the_tokens" in logged.out + logged.err
    for token in (TOKEN, WRONG):
        assert token not in logged.out and token not in logged.err, "a worker token reached a log line"


def test_a_guarded_worker_answers_strangers_401_and_probes_their_status(worker: WorkerServer) -> None:
    generate = httpx.post(worker.url + protocol.GENERATE_PATH, json={"model": "tiny", "prompt": "p"})
    assert generate.status_code == 401 and generate.json()["code"] == "unauthorized"
    assert httpx.get(worker.url + protocol.STATS_PATH).status_code == 401
    assert httpx.get(worker.url + protocol.HEALTH_PATH).json() == {"status": "ok"}


def sample(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus exposition (0 when it is not there)."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": f"Bearer {WRONG}"}, {"Authorization": TOKEN}], ids=["none", "wrong", "no-scheme"]
)
def test_a_guarded_workers_metrics_want_its_token(worker: WorkerServer, headers: dict[str, str]) -> None:
    refused = httpx.get(worker.url + "/metrics", headers=headers)
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
    assert "image_gateway_" not in refused.text


def test_a_guarded_workers_metrics_count_what_it_drew_and_refused(worker: WorkerServer) -> None:
    """Queue, batches, requests by outcome, images, health and models: what the dashboard and alerts read."""
    token = {"Authorization": f"Bearer {TOKEN}"}
    before = httpx.get(worker.url + "/metrics", headers=token).text
    body = {"model": "tiny", "prompt": "a lighthouse", "n": 2, "width": 64, "height": 64}
    drawn = httpx.post(worker.url + protocol.GENERATE_PATH, json=body, headers=token, timeout=60)
    assert drawn.status_code == 200, drawn.text
    assert httpx.post(worker.url + protocol.GENERATE_PATH, json=body).status_code == 401
    unknown = httpx.post(worker.url + protocol.GENERATE_PATH, json={**body, "model": "nope"}, headers=token)
    assert unknown.status_code == 404
    scraped = httpx.get(worker.url + "/metrics", headers=token)
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    after = scraped.text

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("image_gateway_worker_requests_total", outcome="ok") == 1
    assert grew("image_gateway_worker_requests_total", outcome="unauthorized") == 1
    assert grew("image_gateway_worker_requests_total", outcome="model_not_found") == 1
    assert grew("image_gateway_worker_images_generated_total", model="tiny") == 2
    assert grew("image_gateway_local_batch_size_images_sum", model="tiny") == 2
    assert grew("image_gateway_local_batch_duration_seconds_count", model="tiny") >= 1
    assert "# TYPE image_gateway_worker_energy_kwh_total counter" in after  # grows where energy is measured or set
    assert sample(after, "image_gateway_local_queue_depth", model="tiny") == 0
    assert sample(after, "image_gateway_worker_healthy") == 1
    assert sample(after, "image_gateway_worker_model_ready", model="tiny") == 1
    assert "image_gateway_worker_requests_refused_total" in after and TOKEN not in after


@pytest.fixture(scope="module")
def admin_gateway(worker: WorkerServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """A gateway with an inbound key and an admin key; ``metrics_access`` left to its default."""
    auth = {
        "keys": [{"name": "client", "hash": hash_key(CLIENT_KEY)}],
        "admin_keys": [{"name": "prometheus", "hash": hash_key(ADMIN_KEY)}],
    }
    config = gateway_config(
        {"gpu": remote(worker.url, worker_token=TOKEN)},
        [{"name": "tiny", "targets": [{"provider": "gpu", "model": "tiny"}]}],
        tmp_path_factory.mktemp("store"),
        auth=auth,
    )
    with GatewayServer(config) as gateway:
        yield gateway


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": f"Bearer {CLIENT_KEY}"}, {"Authorization": "Bearer not-a-key"}, {"X-API-Key": "nope"}],
    ids=["none", "client-key", "wrong", "x-api-key"],
)
def test_metrics_want_an_admin_key_once_there_are_admin_keys(
    admin_gateway: GatewayServer, headers: dict[str, str]
) -> None:
    refused = httpx.get(admin_gateway.url + "/metrics", headers=headers)
    assert refused.status_code == 401, refused.text
    assert refused.headers["www-authenticate"] == "Bearer"
    assert "image_gateway_" not in refused.text and "client" not in refused.text


def test_metrics_answer_the_admin_key(admin_gateway: GatewayServer) -> None:
    scraped = httpx.get(admin_gateway.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    assert "image_gateway_in_flight_requests" in scraped.text
    # The admin key is an operator's, not a client's: the dialect routes still refuse it.
    assert (
        httpx.post(
            admin_gateway.url + GENERATIONS, json=BODY, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ).status_code
        == 401
    )


@pytest.mark.parametrize(
    ("server", "admin_keys", "open_"),
    [({}, False, True), ({"metrics_access": "open"}, True, True), ({"metrics_access": "admin_key"}, True, False)],
    ids=["default-without-admin-keys", "open-with-admin-keys", "admin-key"],
)
def test_metrics_access_as_configured(
    worker: WorkerServer, tmp_path: Path, server: dict[str, Any], admin_keys: bool, open_: bool
) -> None:
    auth = {"admin_keys": [{"name": "ops", "hash": hash_key(ADMIN_KEY)}]} if admin_keys else {}
    config = gateway_config(
        {"gpu": remote(worker.url, worker_token=TOKEN)},
        [{"name": "tiny", "targets": [{"provider": "gpu", "model": "tiny"}]}],
        tmp_path,
        server=server,
        auth=auth,
    )
    with GatewayServer(config) as gateway:
        anonymous = httpx.get(gateway.url + "/metrics")
    assert anonymous.status_code == (200 if open_ else 401)


def test_metrics_access_admin_key_needs_an_admin_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="metrics_access"):
        gateway_config({}, [], tmp_path, server={"metrics_access": "admin_key"})
