"""The suite's root: OpenAI's document watched over every answer; the shared fixtures are tests/fixtures.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import openai_spec

API_KEY = "test-key"  # what the emulators want (tests/fixtures.py starts them)

pytest_plugins = ["tests.fixtures"]

# The slowest modules, slowest first (measured with `--durations`, docs/testing.md): they run before every other
# module, so that on `make test`'s workers (which keep this order: --no-loadscope-reorder) none of them starts
# last and stretches the run's tail while the other workers sit idle. The rest keep their collection order.
SLOW_FIRST = [
    "tests/local_backend/test_speed.py",
    "tests/integration/test_jobs_shutdown.py",
    "tests/integration/test_first_run.py",
    "tests/bench/test_gpu.py",
    "tests/integration/test_client_faults.py",
    "tests/soak/test_soak.py",
    "tests/integration/test_object_store.py",
    "tests/integration/test_inbound_bodies.py",
    "tests/integration/test_idempotency.py",
    "tests/integration/test_secrets_in_logs.py",
    "tests/integration/test_server_workers.py",
    "tests/deploy/test_manifests.py",
    "tests/integration/test_faults.py",
    "tests/local_backend/test_engine.py",
    "tests/integration/test_durable_state.py",
    "tests/integration/test_third_party_clients.py",
    "tests/console/test_browser.py",
    "tests/console/test_charts_browser.py",
    "tests/integration/test_jobs_replicas.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules of ``SLOW_FIRST`` first, in its order; each module's tests in their own order."""
    rank = {path: index for index, path in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


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
