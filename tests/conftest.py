"""The suite's root: OpenAI's document watched over every answer; the shared fixtures are tests/fixtures.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import openai_spec

API_KEY = "test-key"  # what the emulators want (tests/fixtures.py starts them)

pytest_plugins = ["tests.fixtures"]


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
