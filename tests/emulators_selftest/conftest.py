"""Every self-test starts with fresh emulators (the session's, from tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.emulators import EmulatorServer


@pytest.fixture
def servers(fresh_emulators: dict[str, EmulatorServer]) -> dict[str, EmulatorServer]:
    return fresh_emulators


@pytest.fixture(autouse=True)
def _fresh(fresh_emulators: dict[str, EmulatorServer]) -> None:
    """Every test starts with no calls and no faults."""
