"""Fixtures shared by the suites that talk to the provider emulators over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.emulators import EMULATORS, EmulatorServer, start_emulator

API_KEY = "test-key"


@pytest.fixture(scope="session")
def emulators() -> Iterator[dict[str, EmulatorServer]]:
    """All four provider emulators, started once for the session."""
    running = {kind: start_emulator(kind, api_key=API_KEY) for kind in EMULATORS}
    yield running
    for server in running.values():
        server.stop()


@pytest.fixture
def fresh_emulators(emulators: dict[str, EmulatorServer]) -> dict[str, EmulatorServer]:
    """The emulators with no recorded calls and no queued faults."""
    for server in emulators.values():
        server.emulator.reset()
    return emulators


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    """A plain HTTP client for the tests' own requests."""
    with httpx.Client(timeout=30.0) as client:
        yield client
