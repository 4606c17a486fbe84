"""The local backend's tests: built-in models come from the shared session ``model_dir`` (tests/fixtures.py)."""

from __future__ import annotations

import tests.local_backend.engines  # noqa: F401  # fails at once, and says why, without the [local] extra
