"""Fixtures of the console's tests: a gateway with an admin key, the tiny local model and one emulated
provider, and Debian's Chromium driven by Playwright (no browser download)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.admission.auth import hash_key
from tests.conftest import API_KEY
from tests.emulators import EmulatorServer
from tests.integration.gateway_server import GatewayServer, gateway_config

CHROMIUM = os.environ.get("IMAGE_GATEWAY_CHROMIUM", "/usr/bin/chromium")
ADMIN_KEY = "console-admin-key-for-tests"
CLIENT_KEY = "console-client-key-for-tests"
# One failure cools the emulated provider down, for a minute: long enough for a page to show it.
COOLDOWN = {"failures": 1, "seconds": 60}
NO_RETRY = {"attempts": 1}
# alice's limit drains one request every 1728 s: within a test, what she used stays used.
ALICE_LIMIT = {"requests": 50, "period_s": 86400}
ALICE_BUDGET = {"amount": 5.0, "period": "month", "currency": "EUR"}
TINY_PRICE = {"currency": "EUR", "per_image": 0.25}  # melious is left unpriced: its cost stays blank


class ConsoleGateway(GatewayServer):
    startup_timeout_s = 180.0  # the local backend builds and loads the tiny model before the gateway listens


def console_config(emulators: dict[str, EmulatorServer], store: Path, **sections: Any) -> Any:
    """The local backend (in process, the tiny model) and the Melious emulator; sections override."""
    providers = {
        "local": {
            "kind": "local",
            "device": "cpu",
            "models": {"tiny": {"path": "builtin:tiny-sd", "max_pixels": 512 * 512}},
        },
        "melious": {
            "kind": "melious",
            "base_url": emulators["melious"].base_url,
            "api_key": API_KEY,
            "retry": NO_RETRY,
            "cooldown": COOLDOWN,
        },
    }
    models = [
        {"name": "tiny", "targets": [{"provider": "local", "model": "tiny", "price": TINY_PRICE}]},
        {"name": "via-melious", "targets": [{"provider": "melious", "model": "flux-schnell"}]},
    ]
    auth = {
        "keys": [
            {"name": "alice", "hash": hash_key(CLIENT_KEY), "limits": ALICE_LIMIT, "budget": ALICE_BUDGET},
        ],
        "admin_keys": [{"name": "ops", "hash": hash_key(ADMIN_KEY)}],
    }
    return gateway_config(providers, models, store, **{"auth": auth, **sections})


@pytest.fixture(scope="module")
def console_gateway(
    emulators: dict[str, EmulatorServer], model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    server = ConsoleGateway(console_config(emulators, tmp_path_factory.mktemp("store"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Chromium under Playwright; the tests fail (never skip) without it."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the console's browser tests need Chromium at {CHROMIUM}: `apt-get install chromium` "
            "(make install does it when run as root), or set IMAGE_GATEWAY_CHROMIUM",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the console's browser tests need Playwright: pip install -e '.[dev]'", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A fresh browser context (its own session storage) at 1280 px wide."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()
