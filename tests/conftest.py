"""Fixtures shared by the suites that talk to the provider emulators over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests import openai_spec
from tests.emulators import EMULATORS, EmulatorServer, start_emulator
from tests.seaweedfs import SeaweedFS, SeaweedFSUnavailable

API_KEY = "test-key"


@pytest.fixture(scope="session", autouse=True)
def _openai_document() -> Iterator[None]:
    """Every answer of a gateway's root /v1/images/* the suite reads is held to OpenAI's document
    (tests/openai_spec.py) for the whole session."""
    stop = openai_spec.watch()
    yield
    stop()


@pytest.fixture(autouse=True)
def _answers_hold_to_openais_document() -> Iterator[None]:
    """A test fails when an answer it (or a fixture before it) read from a root /v1 route broke the document."""
    yield
    broken, openai_spec.violations[:] = list(openai_spec.violations), []
    if broken:
        pytest.fail("answers that break OpenAI's images document:\n" + "\n".join(broken[:20]), pytrace=False)


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


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real S3-compatible server (SeaweedFS) for the session; the suite fails, never skips, without it."""
    try:
        server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    except SeaweedFSUnavailable as exc:
        pytest.fail(f"the S3 tests need SeaweedFS: {exc}", pytrace=False)
    yield server
    server.stop()
