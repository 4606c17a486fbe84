"""The suite's own order (tests/conftest.py): the slow modules it starts first are modules that exist."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import SLOW_FIRST

ROOT = Path(__file__).resolve().parent.parent


def test_every_module_started_first_exists_once() -> None:
    assert len(set(SLOW_FIRST)) == len(SLOW_FIRST)
    missing = [path for path in SLOW_FIRST if not (ROOT / path).is_file()]
    assert not missing, f"renamed or removed: update SLOW_FIRST in tests/conftest.py: {missing}"
