"""Fixtures: the four provider emulators, and gateways in front of them, all over real loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY
from tests.emulators import EmulatorServer
from tests.integration.gateway_server import GatewayServer, gateway_config

MAX_BODY_BYTES = 2 * 1024 * 1024

# Every kind of provider entry the gateway has: (emulator kind, extra provider settings, its model name).
PROVIDERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "melious": ("melious", {}, "flux-schnell"),
    "nebul": ("nebul", {}, "black-forest-labs/FLUX.1-Kontext-dev"),
    "pomelo-midjourney": ("pomelo", {"endpoint": "midjourney"}, "5"),
    "pomelo-flux": ("pomelo", {"endpoint": "flux"}, "flux.1"),
    "nebulablock-serverless": ("nebulablock", {"api": "serverless"}, "stabilityai/stable-diffusion-xl-base-1.0"),
    "nebulablock-v1": ("nebulablock", {"api": "v1"}, "black-forest-labs/FLUX.1-schnell"),
}


@pytest.fixture(autouse=True)
def _fresh(fresh_emulators: dict[str, EmulatorServer]) -> None:
    """Every test starts with no calls and no faults at the emulators."""


def provider_entries(emulators: dict[str, EmulatorServer]) -> dict[str, dict[str, Any]]:
    return {
        name: {"kind": kind, "base_url": emulators[kind].base_url, "api_key": API_KEY, **extra}
        for name, (kind, extra, _) in PROVIDERS.items()
    }


def start_gateway(
    emulators: dict[str, EmulatorServer], models: list[dict[str, Any]], store: Path, **server: Any
) -> GatewayServer:
    config = gateway_config(provider_entries(emulators), models, store, server={"max_body_bytes": MAX_BODY_BYTES})
    return GatewayServer(config).start()


@pytest.fixture(scope="session")
def gateway(emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """One gateway where each model name leads to one provider (model ``via-<provider>``),
    plus the names the fixed-model dialects use."""
    models = [
        {"name": f"via-{name}", "targets": [{"provider": name, "model": model}]}
        for name, (_, _, model) in PROVIDERS.items()
    ]
    models += [
        {"name": "flux-schnell", "targets": [{"provider": "melious", "model": "flux-schnell"}]},
        {"name": "flux.1", "targets": [{"provider": "pomelo-flux", "model": "flux.1"}]},
        {
            "name": "black-forest-labs/FLUX.1-Kontext-dev",
            "targets": [{"provider": "nebul", "model": PROVIDERS["nebul"][2]}],
        },
    ]
    server = start_gateway(emulators, models, tmp_path_factory.mktemp("store"))
    yield server
    server.stop()
