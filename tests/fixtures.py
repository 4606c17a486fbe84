"""The suite's shared fixtures, in one place (a pytest plugin: tests/conftest.py names it in ``pytest_plugins``).

- ``model_dir``: where the built-in tiny models are built, once per session (per xdist worker), away from
  the repository's var/. Every test runs with ``IMAGE_GATEWAY_MODEL_DIR`` pointing there, so a gateway, a
  worker or a subprocess that loads ``builtin:tiny-*`` builds it once and then reuses it.
- ``emulators`` / ``fresh_emulators``: the four provider emulators, real HTTP servers on loopback ports.
- ``started_adapters``: every ``LocalAdapter`` a module's gateways start, so a test can read its engine.
- ``http``: a plain HTTP client; ``seaweedfs``: one real S3-compatible server.

The requests each dialect's client sends are in tests/dialects.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_KEY
from tests.emulators import EMULATORS, EmulatorServer, start_emulator
from tests.seaweedfs import SeaweedFS, SeaweedFSUnavailable

MODEL_DIR_ENV = "IMAGE_GATEWAY_MODEL_DIR"  # as local_backend/tiny.py reads it (not imported: torch is heavy)


@pytest.fixture(scope="session", autouse=True)
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Built-in models are built once per session, away from the repository's var/."""
    path = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(MODEL_DIR_ENV, str(path))
        yield path


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


@pytest.fixture(scope="module")
def started_adapters() -> Iterator[list[Any]]:
    """Every ``LocalAdapter`` the gateways of this module start (ask for it before the gateway: a module
    that reads engines says ``pytestmark = pytest.mark.usefixtures("started_adapters")``)."""
    from adapters.local import LocalAdapter  # imported here: the local backend pulls in torch

    started: list[LocalAdapter] = []
    real_start = LocalAdapter.start

    async def recording_start(self: LocalAdapter) -> None:
        started.append(self)
        await real_start(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalAdapter, "start", recording_start)
        yield started


def engine_of(adapters: list[Any]) -> Any:
    """The in-process engine of the gateway started last."""
    engine = adapters[-1].engine
    assert engine is not None, "the local provider of that gateway runs no in-process engine"
    return engine


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    """A plain HTTP client for the tests' own requests."""
    with httpx.Client(timeout=30.0) as client:
        yield client


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real S3-compatible server (SeaweedFS) for the session; the suite fails, never skips, without it."""
    try:
        server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    except SeaweedFSUnavailable as exc:
        pytest.fail(f"the S3 tests need SeaweedFS: {exc}", pytrace=False)
    yield server
    server.stop()
