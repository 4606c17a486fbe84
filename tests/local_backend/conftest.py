"""Fixtures for the local backend's tests: built-in models built once per session, away from var/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.local_backend.engines  # noqa: F401  # fails at once, and says why, without the [local] extra


@pytest.fixture(scope="session", autouse=True)
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Built-in models are built once per session, away from the repository's var/."""
    path = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGE_GATEWAY_MODEL_DIR", str(path))
        yield path
