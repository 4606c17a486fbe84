"""Energy and carbon through a real gateway over real HTTP: Melious's ``environment_impact`` for every backend.

The local tiny model (in process, and on a remote worker) carries its energy with carbon and
water derived from the configured site; a Melious upstream's figures pass through; a provider
with a configured energy per image is estimated; a provider with nothing known has none.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.emulators import EmulatorServer
from tests.integration.conftest import start_gateway
from tests.integration.gateway_server import GatewayServer, gateway_config
from tests.local_backend.engines import local_settings
from tests.local_backend.worker_server import WorkerServer

SITE = {
    "carbon_intensity_g_per_kwh": 325.0,
    "pue": 1.2,
    "water_l_per_kwh": 1.8,
    "renewable_percent": 64.0,
    "location": "NL-AMS",
    "provider_id": "example-dc",
}
WORKER_SITE = {"carbon_intensity_g_per_kwh": 30.0, "pue": 1.1, "water_l_per_kwh": 0.5, "location": "SE-STO"}
# No RAPL here, and none wanted: the estimate is the path these tests take on any machine.
NEBUL_MODEL = "black-forest-labs/FLUX.1-Kontext-dev"
ESTIMATE = {"meter": "power", "power_watts": 250.0}


def started(server: GatewayServer) -> GatewayServer:
    server.startup_timeout_s = 300.0  # the tiny model is built on first use: slow on a busy machine
    return server


def melious(http: httpx.Client, gateway: GatewayServer, model: str, n: int = 1) -> dict[str, Any]:
    body = {"model": model, "prompt": "a wind farm", "size": "512x512", "n": n, "response_format": "b64_json"}
    response = http.post(gateway.url + "/melious/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def counter(http: httpx.Client, gateway: GatewayServer, family: str, **labels: str) -> float:
    text = http.get(gateway.url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^image_gateway_{family}_total\{{(.*)\}} (\S+)$", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            total += float(match.group(2))
    return total


def assert_derived(impact: dict[str, Any], site: dict[str, Any], provider_id: str) -> None:
    kwh = impact["energy_kwh"]
    assert kwh > 0
    assert impact["carbon_g_co2"] == pytest.approx(kwh * site.get("pue", 1.0) * site["carbon_intensity_g_per_kwh"])
    assert impact["water_liters"] == pytest.approx(kwh * site.get("water_l_per_kwh", 0.0))
    assert impact["renewable_percent"] == site.get("renewable_percent", 0.0)
    assert impact["location"] == site.get("location", "unknown")
    assert impact["provider_id"] == provider_id


def test_the_local_tiny_model_answers_with_its_environment_impact(tmp_path: Path, http: httpx.Client) -> None:
    providers = {"gpu": {"kind": "local", "device": "cpu", "models": {"tiny": {"path": "builtin:tiny-sd"}}}}
    providers["gpu"]["energy"] = ESTIMATE
    models = [{"name": "tiny", "targets": [{"provider": "gpu", "model": "tiny"}]}]
    config = gateway_config(providers, models, tmp_path, sustainability=SITE)
    with started(GatewayServer(config)) as gateway:
        # The counters are the process's: other tests' gateways count into them too, so the difference.
        energy_before = counter(http, gateway, "energy_kwh", model="tiny", provider="gpu", method="estimated")
        carbon_before = counter(http, gateway, "carbon_grams", model="tiny", provider="gpu")
        one = melious(http, gateway, "tiny")["environment_impact"]
        assert_derived(one, SITE, "example-dc")
        two = melious(http, gateway, "tiny", n=2)["environment_impact"]
        assert_derived(two, SITE, "example-dc")
        energy = counter(http, gateway, "energy_kwh", model="tiny", provider="gpu", method="estimated") - energy_before
        carbon = counter(http, gateway, "carbon_grams", model="tiny", provider="gpu") - carbon_before
        # The root /v1 route (the OpenAI family) carries it too.
        root = http.post(
            gateway.url + "/v1/images/generations",
            json={"model": "tiny", "prompt": "a dam", "size": "64x64", "response_format": "b64_json"},
        )
        assert root.status_code == 200, root.text
        assert_derived(root.json()["environment_impact"], SITE, "example-dc")
    assert energy == pytest.approx(one["energy_kwh"] + two["energy_kwh"])
    assert carbon == pytest.approx(one["carbon_g_co2"] + two["carbon_g_co2"])


def test_a_remote_worker_measures_and_the_gateway_derives_with_its_providers_site(
    tmp_path: Path, http: httpx.Client
) -> None:
    worker = WorkerServer(local_settings({"tiny": "builtin:tiny-sd"}, batch_window_ms=0, energy=ESTIMATE)).start()
    try:
        providers = {"remote": {"kind": "local", "workers": [worker.url], "site": WORKER_SITE}}
        models = [{"name": "tiny", "targets": [{"provider": "remote", "model": "tiny"}]}]
        with started(GatewayServer(gateway_config(providers, models, tmp_path, sustainability=SITE))) as gateway:
            impact = melious(http, gateway, "tiny")["environment_impact"]
    finally:
        worker.stop()
    assert_derived(impact, WORKER_SITE, "remote")  # the worker's own site, named by its provider


def test_upstream_estimate_and_unknown(
    emulators: dict[str, EmulatorServer], tmp_path: Path, http: httpx.Client
) -> None:
    """Melious's own figures pass through; Nebul with an energy per image is estimated; without one, nothing."""
    models = [
        {"name": "via-melious", "targets": [{"provider": "melious", "model": "flux-schnell"}]},
        {"name": "estimated", "targets": [{"provider": "nebul", "model": NEBUL_MODEL, "energy_wh_per_image": 2.5}]},
        {"name": "unknown", "targets": [{"provider": "pomelo-flux", "model": "flux.1"}]},
    ]
    gateway = start_gateway(emulators, models, tmp_path, sustainability=SITE)
    try:
        # The counters are the process's: other tests' gateways count into them too, so the differences.
        reported_before = counter(
            http, gateway, "energy_kwh", model="via-melious", provider="melious", method="reported"
        )
        estimated_before = counter(http, gateway, "energy_kwh", model="estimated", method="estimated")
        unknown_before = counter(http, gateway, "energy_kwh", model="unknown")
        impact = melious(http, gateway, "via-melious", n=2)["environment_impact"]
        # The emulator's figures for 2 images of 512x512 (tests/emulators/melious.py), not re-derived here.
        scale = 2 * 512 * 512 / (1024 * 1024)
        assert impact == {
            "carbon_g_co2": round(2.5 * scale, 4),
            "water_liters": round(0.01 * scale, 5),
            "energy_kwh": round(0.005 * scale, 6),
            "renewable_percent": 85,
            "provider_id": "nebius",
            "location": "NL",
        }
        reported = counter(http, gateway, "energy_kwh", model="via-melious", provider="melious", method="reported")
        assert reported - reported_before == pytest.approx(impact["energy_kwh"])

        # Six images are two calls to Melious (4 + 2): the answer carries both calls' figures, summed.
        split = http.post(
            gateway.url + "/v1/images/generations",
            json={"model": "via-melious", "prompt": "a dam", "size": "512x512", "n": 6, "response_format": "b64_json"},
        )
        assert split.status_code == 200, split.text
        assert len(emulators["melious"].emulator.calls) == 3  # the first request's call, then these two
        part = 512 * 512 / (1024 * 1024)
        assert split.json()["environment_impact"]["energy_kwh"] == pytest.approx(
            round(0.005 * 4 * part, 6) + round(0.005 * 2 * part, 6)
        )

        estimated = melious(http, gateway, "estimated", n=3)["environment_impact"]
        assert estimated["energy_kwh"] == pytest.approx(3 * 2.5 / 1000)
        assert_derived(estimated, SITE, "example-dc")
        estimated_now = counter(http, gateway, "energy_kwh", model="estimated", method="estimated")
        assert estimated_now - estimated_before == pytest.approx(0.0075)

        unknown = melious(http, gateway, "unknown")
        assert "environment_impact" not in unknown
        assert counter(http, gateway, "energy_kwh", model="unknown") == unknown_before
    finally:
        gateway.stop()


def test_a_cached_answer_counts_its_generation_once(
    emulators: dict[str, EmulatorServer], tmp_path: Path, http: httpx.Client
) -> None:
    """An answer from the cache carries nothing new to count: the generation was counted when it was made."""
    target = {"provider": "pomelo-flux", "model": "flux.1", "energy_wh_per_image": 4.0}
    models = [{"name": "flux.1", "targets": [target], "cache": {"ttl_s": 600}}]
    gateway = start_gateway(emulators, models, tmp_path)
    try:
        before = counter(http, gateway, "energy_kwh", model="flux.1", provider="pomelo-flux", method="estimated")
        body = {"prompt": "a lighthouse", "seed": 7, "num_outputs": 2}
        first = http.post(gateway.url + "/pomelo/api/v1/flux.1", json=body)
        second = http.post(gateway.url + "/pomelo/api/v1/flux.1", json=body)
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")
        after = counter(http, gateway, "energy_kwh", model="flux.1", provider="pomelo-flux", method="estimated")
    finally:
        gateway.stop()
    images = len(first.json()["images"])
    assert images >= 1
    assert after - before == pytest.approx(images * 4.0 / 1000)  # one generation, not two
