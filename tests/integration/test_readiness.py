"""Readiness that does not cascade: a pool of GPU workers that is not there is that provider's state.

A real gateway with a hosted provider (its emulator) and a ``kind: local`` provider whose only worker
is a port nothing listens on: ``/ready`` answers 200 (the kubelet keeps the replica), shows the local
provider unready with a count of its workers and no address, ``image_gateway_provider_ready`` says 0,
and the hosted provider serves. A local model that did not load shows ``not loaded``, never its error
(which names a path on the server).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.emulators import EmulatorServer
from tests.integration.conftest import FAST_RETRY, NO_COOLDOWN, provider_entries
from tests.integration.gateway_server import GatewayServer, gateway_config
from tests.servers import free_port

PROMPT = {"prompt": "a lighthouse", "size": "512x512", "response_format": "b64_json"}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def test_absent_workers_leave_the_replica_ready_and_the_hosted_providers_serving(
    emulators: dict[str, EmulatorServer], tmp_path: Path, http: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    providers = {
        "melious": provider_entries(emulators)["melious"],
        "local-gpu": {"kind": "local", "workers": [nowhere], "retry": FAST_RETRY, "cooldown": NO_COOLDOWN},
    }
    models = [
        {"name": "flux-schnell", "targets": [{"provider": "melious", "model": "flux-schnell"}]},
        {"name": "sdxl", "targets": [{"provider": "local-gpu", "model": "sdxl"}]},
    ]
    with GatewayServer(gateway_config(providers, models, tmp_path)) as gateway:
        ready = http.get(gateway.url + "/ready")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready"
        assert body["providers"] == {"local-gpu": {"ready": False, "workers": 1, "workers_up": 0}}
        assert nowhere not in ready.text and "127.0.0.1" not in ready.text
        assert 'image_gateway_provider_ready{provider="local-gpu"} 0.0' in http.get(gateway.url + "/metrics").text

        served = http.post(gateway.url + "/melious/v1/images/generations", json={"model": "flux-schnell", **PROMPT})
        assert served.status_code == 200, served.text
    logged = capfd.readouterr()
    assert logged.out.count('"provider_unready"') + logged.err.count('"provider_unready"') == 1  # once, not per check


def test_a_local_model_that_did_not_load_is_not_loaded_in_ready_without_its_path(
    tmp_path: Path, http: httpx.Client
) -> None:
    missing = tmp_path / "no-such-weights-dir"
    providers = {"local": {"kind": "local", "models": {"gone": {"path": str(missing)}}}}
    models = [{"name": "gone", "targets": [{"provider": "local", "model": "gone"}]}]
    with GatewayServer(gateway_config(providers, models, tmp_path / "store")) as gateway:
        ready = http.get(gateway.url + "/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["providers"] == {"local": {"ready": False, "models": {"gone": "not loaded"}}}
        assert str(missing) not in ready.text and str(tmp_path) not in ready.text
        assert 'image_gateway_provider_ready{provider="local"} 0.0' in http.get(gateway.url + "/metrics").text
