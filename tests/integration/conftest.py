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


# Tests keep retries quick; cooldowns are off unless a test turns them on (the session gateway is shared).
FAST_RETRY = {"attempts": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "retry_after_cap_s": 0.5}
NO_COOLDOWN = {"failures": 1_000_000, "seconds": 1}


def provider_entries(emulators: dict[str, EmulatorServer], **overrides: Any) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "kind": kind,
            "base_url": emulators[kind].base_url,
            "api_key": API_KEY,
            "retry": FAST_RETRY,
            "cooldown": NO_COOLDOWN,
            **extra,
            **overrides,
        }
        for name, (kind, extra, _) in PROVIDERS.items()
    }


def start_gateway(
    emulators: dict[str, EmulatorServer],
    models: list[dict[str, Any]],
    store: Path,
    *,
    provider_overrides: dict[str, Any] | None = None,
    extra_providers: dict[str, dict[str, Any]] | None = None,
    **sections: Any,
) -> GatewayServer:
    """A gateway in front of the emulators; ``sections`` are top-level config sections (server, redis, auth).

    ``provider_overrides`` apply to every provider entry, ``extra_providers`` too.
    """
    server = {"max_body_bytes": MAX_BODY_BYTES, **sections.pop("server", {})}
    providers = provider_entries(emulators, **(provider_overrides or {}))
    for name, entry in (extra_providers or {}).items():
        providers[name] = {"retry": FAST_RETRY, "cooldown": NO_COOLDOWN, **entry, **(provider_overrides or {})}
    config = gateway_config(providers, models, store, server=server, **sections)
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
